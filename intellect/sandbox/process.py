"""Starting a run's outer process and collecting it: stdin fed, stdout and stderr read up to a cap, the wall
limit enforced, the exit status and CPU time of the whole process tree taken from ``wait4``.

Runners call ``collect`` with a ``kill`` that ends every process of the run (for bubblewrap: killing the
monitor, whose death takes the sandbox's PID namespace with it).
"""

from __future__ import annotations

import math
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from intellect.sandbox.api import Limits, SandboxError, Stop

CHUNK = 1 << 16
SIGXCPU, SIGXFSZ, SIGKILL = signal.SIGXCPU.value, signal.SIGXFSZ.value, signal.SIGKILL.value
DRAIN_S = 2.0  # after the run is over (or killed), how long to wait for its pipes to close


@dataclass
class Raw:
    stdout: bytes
    stderr: bytes
    status: int  # as from os.waitpid
    cpu_s: float
    wall_s: float
    timed_out: bool
    overflow: bool


def spawn(
    argv: Sequence[str], env: Mapping[str, str], pass_fds: Sequence[int] = (), cwd: str | None = None
) -> subprocess.Popen[bytes]:
    """The outer process, in a session of its own (a signal the program sends to its process group or session
    never reaches ours), with nothing inherited but ``pass_fds``."""
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            pass_fds=tuple(pass_fds),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise SandboxError(f"sandbox: cannot start {argv[0]}: {exc}") from exc


def collect(
    proc: subprocess.Popen[bytes],
    stdin: bytes,
    wall_s: float,
    cap: int,
    kill: Callable[[], None],
    started: float | None = None,
) -> Raw:
    """Feed ``stdin``, read both streams (at most ``cap`` bytes each), kill the run at ``wall_s`` or when a
    stream overflows, then reap the outer process. ``kill`` also runs once the outer process has exited, for
    whatever it left behind. Returns once every pipe is closed, or ``DRAIN_S`` after the run ended (for a
    runner that cannot kill everything it started)."""
    start = time.monotonic() if started is None else started
    deadline = start + wall_s
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    streams = (proc.stdout.fileno(), proc.stderr.fileno())
    out = {fd: bytearray() for fd in streams}
    pidfd = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    timed_out = overflow = False
    ended_at: float | None = None
    try:
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        sel.register(pidfd, selectors.EVENT_READ)
        pending = _feed(proc, sel, memoryview(stdin))
        while any(fd in sel.get_map() for fd in (*streams, pidfd)):
            now = time.monotonic()
            if ended_at is None and now >= deadline:
                timed_out = True
                kill()
                ended_at = now
            if ended_at is not None and now >= ended_at + DRAIN_S:
                break
            limit = deadline if ended_at is None else ended_at + DRAIN_S
            for key, _ in sel.select(max(0.0, limit - now)):
                if key.fd == pidfd:
                    sel.unregister(pidfd)
                    kill()  # the outer process is gone: end whatever it left behind
                    ended_at = ended_at or time.monotonic()
                elif key.data == "stdin":
                    pending = _write(proc, sel, pending)
                elif _read(key.fd, out[key.fd], cap, sel) and not overflow:
                    overflow = True
                    kill()
                    ended_at = ended_at or time.monotonic()
        status, cpu_s = _reap(proc, kill)
    finally:
        sel.close()
        os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    wall = time.monotonic() - start
    return Raw(
        bytes(out[streams[0]][:cap]), bytes(out[streams[1]][:cap]), status, cpu_s, wall, timed_out, overflow
    )


def _feed(proc: subprocess.Popen[bytes], sel: selectors.BaseSelector, pending: memoryview) -> memoryview:
    assert proc.stdin is not None
    if not pending:
        proc.stdin.close()
        return pending
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    sel.register(fd, selectors.EVENT_WRITE, "stdin")
    return pending


def _write(proc: subprocess.Popen[bytes], sel: selectors.BaseSelector, pending: memoryview) -> memoryview:
    """Write what the pipe takes; a program that closed its stdin gets no more."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    try:
        pending = pending[os.write(fd, pending[:CHUNK]) :]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        pending = pending[len(pending) :]
    if not pending:
        sel.unregister(fd)
        proc.stdin.close()
    return pending


def _read(fd: int, buf: bytearray, cap: int, sel: selectors.BaseSelector) -> bool:
    """Read what is there; True when the stream passed ``cap``. EOF unregisters it."""
    try:
        data = os.read(fd, CHUNK)
    except BlockingIOError:
        return False
    if not data:
        sel.unregister(fd)
        return False
    if len(buf) <= cap:
        buf += data[: cap + 1 - len(buf)]
    return len(buf) > cap


def _reap(proc: subprocess.Popen[bytes], kill: Callable[[], None]) -> tuple[int, float]:
    """Wait for the outer process (killing the run if it is somehow still there) and read the CPU time of it
    and of every descendant it reaped."""
    try:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == 0:
            kill()
            pid, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError as exc:  # somebody else reaped it: a bug in the caller, not the program
        raise SandboxError(f"sandbox: lost the run's process {proc.pid}") from exc
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, usage.ru_utime + usage.ru_stime


def running(proc: subprocess.Popen[bytes]) -> bool:
    """Has the outer process not exited yet? (It is left unreaped: ``collect`` reaps it.)"""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def kill_process(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """SIGKILL the outer process (and, with ``group``, its process group); gone already is fine."""
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def rlimit_flags(limits: Limits, memory: bool = True) -> list[str]:
    """``prlimit`` options for ``limits``. The CPU limit is whole seconds, soft = hard: the kernel sends SIGXCPU
    and SIGKILL together (a namespace's init ignores SIGXCPU)."""
    cpu = max(1, math.ceil(limits.cpu_s))
    flags = [
        f"--cpu={cpu}:{cpu}",
        f"--nproc={limits.processes}:{limits.processes}",
        f"--fsize={limits.file_mb << 20}:{limits.file_mb << 20}",
        f"--nofile={limits.open_files}:{limits.open_files}",
        "--core=0:0",
    ]
    if memory:
        flags.insert(0, f"--as={limits.memory_mb << 20}:{limits.memory_mb << 20}")
    return flags


def signal_stop(signal: int, cpu_s: float, limits: Limits) -> Stop:
    """Which limit a signal that ended the program stands for, if any. The kernel's SIGKILL at the CPU limit
    comes with a measured CPU time a little under it (its accounting and ``wait4``'s differ), so a SIGKILL
    after 80% of the limit counts as the limit."""
    if signal == SIGXCPU or (signal == SIGKILL and cpu_s >= 0.8 * math.ceil(limits.cpu_s)):
        return "cpu"
    if signal == SIGXFSZ:
        return "file_size"
    return "signal"
