"""The unisolated runner: the program runs as this process's user, on this host's filesystem and network, in a
private temporary working directory, with rlimits (``prlimit``) and a process group that is killed at the end.

It isolates crashes and hangs, not malice: a program can read and write whatever this user can, connect
anywhere, signal this user's processes, and leave a daemon behind (one that leaves the process group). It is
what the code environment used before the sandbox, kept for hosts that cannot isolate and for comparison in
``bench/sandbox.py``. An environment only uses it when a recipe asks for it by name (``sandbox:
unisolated``), and says so loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from intellect.sandbox.api import PYTHON, Request, Result, SandboxUnavailable, Stop, as_bytes, check_relative
from intellect.sandbox.process import (
    SIGKILL,
    collect,
    kill_process,
    rlimit_flags,
    running,
    signal_stop,
    spawn,
)

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass
class _Started:
    request: Request
    proc: subprocess.Popen[bytes]
    tmp: tempfile.TemporaryDirectory[str]

    def finish(self, stdin: bytes) -> Result:
        proc = self.proc
        lim = self.request.limits
        try:
            raw = collect(proc, stdin, lim.wall_s, lim.output_bytes, lambda: kill_process(proc, group=True))
        finally:
            self.tmp.cleanup()
        code: int | None = proc.returncode
        signal: int | None = None
        stopped: Stop = "exit"
        if raw.timed_out or raw.overflow:
            stopped, code, signal = ("timeout" if raw.timed_out else "output"), None, SIGKILL
        elif code is not None and code < 0:
            signal, code = -code, None
            stopped = signal_stop(signal, raw.cpu_s, lim)
        return Result(
            raw.stdout,
            raw.stderr,
            code,
            signal,
            raw.wall_s,
            raw.cpu_s,
            stopped,
            "rlimit",
            False,
            "unisolated",
        )

    def cancel(self) -> None:
        proc = self.proc
        kill_process(proc, group=True)
        try:
            collect(proc, b"", 0.0, 0, lambda: kill_process(proc, group=True))
        finally:
            self.tmp.cleanup()

    def alive(self) -> bool:
        return running(self.proc)


class UnisolatedRunner:
    """Runs requests as plain subprocesses (see the module docstring: no isolation)."""

    name = "unisolated"
    isolated = False

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def check(self) -> None:
        if not shutil.which("prlimit", path="/usr/bin:/bin"):
            raise SandboxUnavailable("sandbox: prlimit not found (util-linux)")

    def start(self, request: Request) -> _Started:
        tmp = tempfile.TemporaryDirectory(prefix="intellect-unisolated-")
        try:
            for name, data in request.files.items():
                path = os.path.join(tmp.name, check_relative(name))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(as_bytes(data))
            program = [self.python if request.argv[0] == PYTHON else request.argv[0], *request.argv[1:]]
            argv = ["prlimit", *rlimit_flags(request.limits), "--", *program]
            proc = spawn(argv, {**ENV, "HOME": tmp.name, "TMPDIR": tmp.name, **request.env}, cwd=tmp.name)
        except BaseException:
            tmp.cleanup()
            raise
        return _Started(request, proc, tmp)

    def run(self, request: Request) -> Result:
        return self.start(request).finish(request.stdin)
