"""Limits for a whole run through cgroup v2, where the site delegates a cgroup to us.

A site that wants them creates a cgroup v2 directory the scoring user may write, with the ``memory`` and
``pids`` controllers enabled for its children (``echo +memory +pids > DIR/cgroup.subtree_control``; systemd:
``Delegate=yes``), and names it in ``INTELLECT_SANDBOX_CGROUP`` (or ``BwrapRunner(cgroup=...)``). Each run then
gets a child cgroup with ``memory.max`` (swap 0) and ``pids.max``; at the end ``cgroup.kill`` ends anything
left and the cgroup is removed. Without one, runs are limited by rlimits (the result says which applied).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass

from intellect.sandbox.api import Limits, SandboxUnavailable

ENV_VAR = "INTELLECT_SANDBOX_CGROUP"
NEEDED = ("memory", "pids")
# moves itself into the cgroup, then becomes the sandbox (no thread-unsafe preexec_fn in the scorer)
ENTER = 'echo 0 > "$0/cgroup.procs" && exec "$@"'


def check_parent(path: str) -> str:
    """``path`` if it is a writable cgroup v2 directory whose children get memory and pids controllers."""
    try:
        with open(os.path.join(path, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
    except OSError as exc:
        raise SandboxUnavailable(f"sandbox: {path} is not a cgroup v2 directory ({ENV_VAR}): {exc}") from exc
    missing = [c for c in NEEDED if c not in enabled]
    if missing:
        raise SandboxUnavailable(
            f"sandbox: cgroup {path} does not enable {' '.join(missing)} for its children: "
            f"echo '{' '.join('+' + c for c in missing)}' > {path}/cgroup.subtree_control"
        )
    if not os.access(path, os.W_OK):
        raise SandboxUnavailable(f"sandbox: cgroup {path} is not writable by uid {os.getuid()}")
    return path


@dataclass
class RunCgroup:
    path: str

    @classmethod
    def create(cls, parent: str, limits: Limits) -> RunCgroup:
        path = os.path.join(parent, f"run-{uuid.uuid4().hex[:12]}")
        os.mkdir(path)
        run = cls(path)
        run._write("memory.max", str(limits.memory_mb << 20))
        run._write("memory.swap.max", "0", optional=True)
        run._write("pids.max", str(limits.processes))
        return run

    def wrap(self, argv: list[str]) -> list[str]:
        return ["/bin/sh", "-c", ENTER, self.path, *argv]

    def kill(self) -> None:
        """Kill every process in the cgroup (``cgroup.kill``, or one by one on kernels before 5.14)."""
        try:
            self._write("cgroup.kill", "1")
            return
        except OSError:
            pass
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        return self._stat("memory.events", "oom_kill") > 0

    def cpu_s(self) -> float:
        return self._stat("cpu.stat", "usage_usec") / 1e6

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (they are dying: retry briefly)."""
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                self.kill()
                time.sleep(0.01)

    def _write(self, name: str, value: str, optional: bool = False) -> None:
        try:
            with open(os.path.join(self.path, name), "w") as f:
                f.write(value)
        except OSError:
            if not optional:
                raise

    def _pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def _stat(self, name: str, key: str) -> int:
        try:
            with open(os.path.join(self.path, name)) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == key:
                        return int(v)
        except (OSError, ValueError):
            pass
        return 0
