"""The dev cluster as the tests use it: node1 is the controller and the login node, where the on-call engineer
types ``intellect ...``. Every command below runs there over SSH; files in the shared folder are read from the
host, at the same path."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intellect.devcluster.cluster import DevCluster

BRIDGE, PREFIX = "itl-test0", "10.214.0"
NODES = 4  # recipes/intellect3-dev.yaml's shape: 2 trainer + 2 inference nodes


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the dev cluster needs root"
    missing = [
        t
        for t in ("systemd-nspawn", "debootstrap", "zstd", "dpkg-scanpackages", "ssh")
        if not shutil.which(t)
    ]
    if missing:
        return f"missing host tools {missing}; scripts/debian-deps installs them"
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        return "ansible-runner is not installed (the ops extra)"
    return None


@dataclass
class DevClusterHandle:
    dev: DevCluster
    env: dict[str, str]  # what `intellect dev-cluster ...` on the host needs to find this cluster
    reused: bool = False  # a cluster the developer started (INTELLECT_TEST_DEVCLUSTER_DIR): never torn down
    names: tuple[str, ...] = tuple(f"node{i}" for i in range(1, NODES + 1))

    @property
    def shared(self) -> Path:
        return self.dev.shared_dir

    def fresh_dir(self, prefix: str) -> Path:
        """A new folder in the shared folder (visible at the same path on the host and on every node)."""
        return Path(tempfile.mkdtemp(prefix=prefix + "-", dir=self.shared))

    def login(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120):
        """Run ``argv`` on node1 as single argv items, in the shared folder as `dev-cluster ssh` does (there,
        recipes/ is the checkout's)."""
        assigns = [f"{k}={v}" for k, v in {"NO_COLOR": "1", **(env or {})}.items()]
        command = f"cd {shlex.quote(str(self.shared))} && exec env {shlex.join([*assigns, *argv])}"
        return self.dev.ssh(1, command, timeout=timeout)

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
        """``intellect ARGS`` on the login node: the venv's entry point, on the node's PATH."""
        return self.login(["intellect", *args], env=env, timeout=timeout)

    def slurm(self, *argv: str) -> str:
        """A Slurm command on node1; its stdout. Fails the test when it fails."""
        proc = self.login(list(argv), timeout=60)
        assert proc.returncode == 0, (argv, proc.stderr)
        return proc.stdout

    def job_fields(self, job_id: str) -> dict[str, str]:
        out = self.login(["scontrol", "-o", "show", "job", job_id]).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def reset(self) -> None:
        """Every node idle and undrained, no job left: what each test starts from."""
        self.login(["scontrol", "update", f"NodeName=node[1-{NODES}]", "State=RESUME"])
        self.login(["scancel", "-u", "root"])
        wait(lambda: not self.slurm("squeue", "-h", "-o", "%i").strip(), 60)


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")  # Slurm's end states


def tail(path: Path) -> str:
    """The end of a log for an assertion message (or why there is none)."""
    return path.read_text()[-3000:] if path.exists() else f"({path} missing)"


def launch_from_login(handle: DevClusterHandle, recipe: Path, run_dir: Path, env: dict[str, str]) -> str:
    """``intellect launch RECIPE --executor slurm`` on the login node; the job id."""
    proc = handle.cli("launch", str(recipe), "--executor", "slurm", "--run-dir", str(run_dir), env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def wait(probe: Callable[[], Any], timeout: float = 30.0, every: float = 1.0) -> Any:
    """Poll ``probe`` until it returns something true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def host_intellect(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI on the host (dev-cluster and provision run there, as root)."""
    import sys

    full = {**os.environ, "NO_COLOR": "1", **env}
    argv = [sys.executable, "-m", "intellect.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=full, timeout=timeout)
