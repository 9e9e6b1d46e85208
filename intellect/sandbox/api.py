"""The sandbox API: one request (program, files, stdin, limits) in, one result (output, status, times) out.

Every runner (``BwrapRunner``, ``UnisolatedRunner``, and any a site adds: gVisor, a remote sandbox service)
implements ``Runner.run``. Nothing here trusts the program: its output is bytes, capped, and a run that cannot
be started raises instead of looking like a program that failed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from intellect.errors import EnvError

# Why a run stopped:
#   exit      the program exited by itself (any exit code)
#   signal    a signal ended it (not one of the limits below)
#   timeout   the wall-clock limit: the runner killed every process of the run
#   cpu       the CPU-time limit (SIGXCPU, or SIGKILL past the hard limit)
#   memory    the memory limit (a cgroup OOM kill; under rlimits a program sees a failed allocation instead)
#   file_size the file-size limit (SIGXFSZ)
#   output    stdout or stderr passed ``Limits.output_bytes``: the runner cut it and killed the run
Stop = Literal["exit", "signal", "timeout", "cpu", "memory", "file_size", "output"]
LimitsBy = Literal["cgroup", "rlimit"]

PYTHON = "python3"  # argv[0] that means "the runner's Python interpreter"


class SandboxError(EnvError):
    """The sandbox could not run a request (it failed to start, or its host broke): not the program's fault,
    so a scorer must count it as an error rather than score the program 0."""


class SandboxUnavailable(SandboxError):
    """This host cannot isolate (no bubblewrap, user namespaces disabled, an interpreter the sandbox user
    cannot read). The message is one line and says how to fix it."""


@dataclass(frozen=True)
class Limits:
    """What one run may use. Every limit applies to the whole run: all its processes together where the runner
    enforces them through a cgroup, else each process (rlimits) with ``processes`` bounding how many."""

    wall_s: float = 10.0  # wall clock from start to the last process killed
    cpu_s: float = 10.0  # CPU seconds (per process under rlimits)
    memory_mb: int = 1024  # address space per process (rlimit), or memory of the run (cgroup)
    processes: int = 64  # processes and threads alive at once
    file_mb: int = 16  # largest file the run may write
    open_files: int = 64  # file descriptors per process
    tmp_mb: int = 64  # size of the private writable /tmp (in memory)
    output_bytes: int = 1 << 20  # captured per stream; more stops the run ("output")

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "processes", "file_mb", "open_files", "tmp_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0 (got {getattr(self, name)!r})")


@dataclass(frozen=True)
class Request:
    """Run ``argv`` (``argv[0] == "python3"`` is the runner's interpreter) in a fresh working directory that
    holds ``files`` (relative paths), with ``stdin`` and ``env`` (nothing else is inherited)."""

    argv: Sequence[str]
    files: Mapping[str, bytes | str] = field(default_factory=dict)
    stdin: bytes = b""
    limits: Limits = field(default_factory=Limits)
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("Request.argv is empty")
        for name in self.files:
            check_relative(name)


@dataclass(frozen=True)
class Result:
    """What happened. ``exit_code`` is None when a signal ended the program (then ``signal`` says which)."""

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    signal: int | None
    wall_s: float
    cpu_s: float
    stopped: Stop
    limits_by: LimitsBy
    isolated: bool
    runner: str

    @property
    def ok(self) -> bool:
        return self.stopped == "exit" and self.exit_code == 0


class Started(Protocol):
    """A run whose processes are up (files in place, program started) but whose stdin is not sent yet, and
    whose wall clock has not started: what a pool prepares while the model is still generating."""

    def finish(self, stdin: bytes) -> Result:
        """Send ``stdin``, run to the end (the wall limit counts from now), and clean up."""
        ...

    def cancel(self) -> None:
        """Kill it unused."""
        ...

    def alive(self) -> bool:
        """Is it still waiting for its stdin (a warm sandbox that died while idle must not be used)?"""
        ...


class Runner(Protocol):
    """Runs requests; safe to call from many threads at once. A site's own sandbox (gVisor's ``runsc``, a
    remote sandbox service) implements these three methods and plugs in where ``BwrapRunner`` does."""

    name: str
    isolated: bool

    def check(self) -> None:
        """Raise SandboxUnavailable (one line) when this runner cannot work on this host."""
        ...

    def start(self, request: Request) -> Started:
        """Start ``request`` (its ``stdin`` is ignored: ``finish`` sends it); SandboxError when it cannot."""
        ...

    def run(self, request: Request) -> Result:
        """Run ``request`` to the end (every process of it gone); SandboxError when it cannot be run."""
        ...


def check_relative(name: str) -> str:
    """``name`` as a normalised relative path inside the working directory; ValueError otherwise."""
    norm = posixpath.normpath(name)
    if not name or name.startswith("/") or norm == "." or norm.startswith("..") or "\0" in name:
        raise ValueError(f"file name {name!r}: use a relative path inside the working directory")
    return norm


def as_bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data
