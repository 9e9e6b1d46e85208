"""The isolated runner: bubblewrap, no daemon, no privileges.

Each run gets new user, PID, network, IPC, UTS and cgroup namespaces; no network device but a loopback of its
own; a read-only root holding only the interpreter, its standard library and the libraries they load
(``rootfs``); a fresh ``/proc`` of its own PID namespace, a minimal read-only ``/dev``, and a private
size-limited ``/tmp`` (in memory) holding the request's files, which is also the working directory. The
program runs as uid 1000 with no capabilities, no new privileges, under a seccomp filter (``seccomp``), with
rlimits set by ``prlimit`` inside its namespaces (memory, CPU, processes, file size, open files), and in a
cgroup of its own where the site delegates one (``cgroup``).

Run as root, the sandbox first drops to an unprivileged host uid (``setpriv``, uid 65534 by default): a
process limit cannot bind host root, and a user namespace owned by nobody is worth less to an escape.

Every process of a run dies with it: the program's main process is its PID namespace's init
(``--as-pid-1``), so when it exits the kernel kills every other process of the namespace (a double-forked
daemon, a fork bomb's children), and nothing inside can signal it away (signals from inside to an init without
a handler are dropped, SIGKILL and SIGSTOP always). ``--die-with-parent`` kills it when bubblewrap's monitor
dies, so a timeout kills the monitor. The monitor reaps it, so ``wait4`` gives the CPU time of the whole tree
(except for a run killed at its wall limit: then only a cgroup still counts what it used).

The exit status comes from bubblewrap's status descriptor, which the program cannot reach: a program cannot
pass itself off as a sandbox that failed to start (a SandboxError, which scorers count as an error).

Under rlimits, memory is bounded per process (address space), so a run may use up to ``processes`` times
``memory_mb`` plus its ``/tmp``; only a delegated cgroup bounds a run's total.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from intellect.sandbox import cgroup as cg
from intellect.sandbox import seccomp
from intellect.sandbox.api import (
    PYTHON,
    Limits,
    Request,
    Result,
    SandboxError,
    SandboxUnavailable,
    Stop,
    as_bytes,
    check_relative,
)
from intellect.sandbox.process import (
    SIGKILL,
    Raw,
    collect,
    kill_process,
    rlimit_flags,
    running,
    signal_stop,
    spawn,
)
from intellect.sandbox.rootfs import Root, find_interpreter, root_for

WORKDIR = "/tmp"
INSIDE_UID = 1000
NOBODY = 65534
OUTER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
PROGRAM_ENV = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": WORKDIR, "LANG": "C.UTF-8"}
_EXIT_CODE = re.compile(rb'"exit-code"\s*:\s*(-?\d+)')


def command(
    root: Root,
    request: Request,
    *,
    bwrap: str,
    file_fds: Mapping[str, int],
    status_fd: int,
    seccomp_fd: int | None = None,
    drop_to: tuple[str, int] | None = None,
    rlimit_memory: bool = True,
) -> list[str]:
    """The command line of one run (a pure function of its inputs). ``drop_to`` is (setpriv, uid) when the
    scorer runs as root; ``file_fds`` maps each request file to the descriptor holding its bytes."""
    lim = request.limits
    argv: list[str] = []
    if drop_to:
        setpriv, uid = drop_to
        argv += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    argv += [bwrap, "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    argv += ["--unshare-cgroup-try", "--disable-userns", "--die-with-parent", "--new-session", "--as-pid-1"]
    argv += ["--cap-drop", "ALL", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--hostname", "sandbox"]
    argv += ["--clearenv"]
    for key, value in {**PROGRAM_ENV, **request.env}.items():
        argv += ["--setenv", key, value]
    for mount in root.mounts:
        argv += [f"--{mount.kind}", mount.src, mount.dest]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(lim.tmp_mb << 20), "--tmpfs", WORKDIR]
    made: set[str] = set()
    for name, fd in file_fds.items():
        parts = check_relative(name).split("/")
        for depth in range(1, len(parts)):
            sub = "/".join(parts[:depth])
            if sub not in made:
                made.add(sub)
                argv += ["--dir", f"{WORKDIR}/{sub}"]
        argv += ["--file", str(fd), f"{WORKDIR}/{'/'.join(parts)}"]
    argv += [
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        WORKDIR,
        "--json-status-fd",
        str(status_fd),
    ]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    program = [root.python if request.argv[0] == PYTHON else request.argv[0], *request.argv[1:]]
    return [*argv, "--", root.helpers["prlimit"], *rlimit_flags(lim, rlimit_memory), "--", *program]


def _memfd(data: bytes, name: str = "sandbox") -> int:
    fd = os.memfd_create(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass
class _Started:
    runner: BwrapRunner
    request: Request
    proc: subprocess.Popen[bytes]
    status_r: int
    group: cg.RunCgroup | None
    closed: bool = field(default=False)

    def finish(self, stdin: bytes) -> Result:
        try:
            raw = collect(
                self.proc, stdin, self.request.limits.wall_s, self.request.limits.output_bytes, self._kill
            )
            status = _drain(self.status_r)
            oom = bool(self.group and self.group.oom_killed())
            cpu = self.group.cpu_s() if self.group else raw.cpu_s
        finally:
            self._close()
        return self.runner.result(raw, status, oom, cpu, self.request.limits)

    def cancel(self) -> None:
        if self.closed:
            return
        self._kill()
        try:
            collect(self.proc, b"", 0.0, 0, self._kill)
        finally:
            self._close()

    def alive(self) -> bool:
        return not self.closed and running(self.proc)

    def _kill(self) -> None:
        kill_process(self.proc)
        if self.group:
            self.group.kill()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.status_r)
            if self.group:
                self.group.remove()


class BwrapRunner:
    """Runs requests in bubblewrap sandboxes (see the module docstring for what each run gets)."""

    name = "bwrap"
    isolated = True

    def __init__(
        self,
        python: str | None = None,
        *,
        bwrap: str = "bwrap",
        cgroup: str | None = None,
        use_seccomp: bool = True,
        root_uid: int = NOBODY,
    ) -> None:
        """``python``: the interpreter programs get (default: the system's python3); ``cgroup``: a delegated
        cgroup v2 directory (default: ``$INTELLECT_SANDBOX_CGROUP``); ``root_uid``: the host uid runs drop to
        when this process is root."""
        self._python_arg = python
        self._bwrap_arg = bwrap
        self._cgroup_arg = cgroup if cgroup is not None else os.environ.get(cg.ENV_VAR) or None
        self._filter = seccomp.program() if use_seccomp else None
        self._root_uid = root_uid
        self._lock = threading.Lock()
        self._checked: SandboxUnavailable | bool = False
        self._root: Root | None = None
        self._bwrap = ""
        self._drop: tuple[str, int] | None = None
        self._cgroup: str | None = None

    @property
    def seccomp(self) -> bool:
        return self._filter is not None

    @property
    def limits_by(self) -> str:
        return "cgroup" if self._cgroup else "rlimit"

    @property
    def python(self) -> str:
        self.check()
        assert self._root is not None
        return self._root.python

    def check(self) -> None:
        """Find bubblewrap and the interpreter, then run one program in a sandbox; SandboxUnavailable (one
        line, cached) when any step fails."""
        with self._lock:
            if self._checked is False:
                try:
                    self._setup()
                    self._checked = True
                except SandboxUnavailable as exc:
                    self._checked = exc
            if isinstance(self._checked, SandboxUnavailable):
                raise self._checked

    def _setup(self) -> None:
        found = shutil.which(self._bwrap_arg)
        if not found:
            raise SandboxUnavailable(
                f"sandbox: bubblewrap ({self._bwrap_arg}) is not installed (Debian: apt install bubblewrap)"
            )
        self._bwrap = found
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv", path=OUTER_ENV["PATH"])
            if not setpriv:
                raise SandboxUnavailable(
                    "sandbox: running as root needs setpriv to drop privileges (util-linux)"
                )
            self._drop = (setpriv, self._root_uid)
        self._root = root_for(find_interpreter(self._python_arg))
        self._cgroup = cg.check_parent(self._cgroup_arg) if self._cgroup_arg else None
        try:
            probe = self._start(Request([PYTHON, "-I", "-S", "-c", "import os; print(os.getuid())"]))
            result = probe.finish(b"")
        except SandboxError as exc:
            raise SandboxUnavailable(f"{exc}{self._hint()}") from exc
        if result.stdout.strip() != str(INSIDE_UID).encode():
            detail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
            raise SandboxUnavailable(
                f"sandbox: the probe program failed ({result.stopped}, exit {result.exit_code}): "
                f"{detail[-1] if detail else 'no output'}{self._hint()}"
            )

    def _hint(self) -> str:
        if self._drop:
            return f" (runs drop to uid {self._drop[1]}: the interpreter must be readable by it)"
        return ""

    def start(self, request: Request) -> _Started:
        self.check()
        return self._start(request)

    def run(self, request: Request) -> Result:
        return self.start(request).finish(request.stdin)

    def _start(self, request: Request) -> _Started:
        assert self._root is not None
        fds: list[int] = []
        group: cg.RunCgroup | None = None
        status_r, status_w = os.pipe()
        try:
            file_fds = {name: _memfd(as_bytes(data)) for name, data in request.files.items()}
            fds += file_fds.values()
            seccomp_fd = _memfd(self._filter, "seccomp") if self._filter else None
            if seccomp_fd is not None:
                fds.append(seccomp_fd)
            argv = command(
                self._root,
                request,
                bwrap=self._bwrap,
                file_fds=file_fds,
                status_fd=status_w,
                seccomp_fd=seccomp_fd,
                drop_to=self._drop,
                rlimit_memory=not self._cgroup,
            )
            if self._cgroup:
                group = cg.RunCgroup.create(self._cgroup, _with_monitor(request.limits))
                argv = group.wrap(argv)
            proc = spawn(argv, OUTER_ENV, pass_fds=[*fds, status_w])
        except BaseException:
            os.close(status_r)
            if group:
                group.remove()
            raise
        finally:
            os.close(status_w)
            for fd in fds:
                os.close(fd)
        return _Started(self, request, proc, status_r, group)

    def result(self, raw: Raw, status: bytes, oom: bool, cpu_s: float, limits: Limits) -> Result:
        """The run's result from what was collected; SandboxError when the sandbox never started the program."""
        match = _EXIT_CODE.search(status)
        code = int(match.group(1)) if match else None
        signal: int | None = None
        stopped: Stop
        if raw.timed_out or raw.overflow:
            stopped, code, signal = ("timeout" if raw.timed_out else "output"), None, SIGKILL
        elif code is None:
            lines = raw.stderr.decode(errors="replace").strip().splitlines()
            why = next((ln for ln in lines if ln.startswith("bwrap:")), lines[-1] if lines else "no message")
            raise SandboxError(f"sandbox: bubblewrap could not start the program: {why}")
        elif 128 < code <= 128 + 64:  # bubblewrap reports a signal as 128 + its number
            signal, code = code - 128, None
            stopped = signal_stop(signal, cpu_s, limits)
        else:
            stopped = "exit"
        if oom:
            stopped = "memory"
        return Result(
            stdout=raw.stdout,
            stderr=raw.stderr,
            exit_code=code,
            signal=signal,
            wall_s=raw.wall_s,
            cpu_s=cpu_s,
            stopped=stopped,
            limits_by="cgroup" if self._cgroup else "rlimit",
            isolated=True,
            runner=self.name,
        )


def _with_monitor(limits: Limits) -> Limits:
    """The cgroup also holds bubblewrap's monitor and init (and the shell that moves them there)."""
    return replace(limits, processes=limits.processes + 3)


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        if sum(map(len, chunks)) > 1 << 16:
            break
    return b"".join(chunks)
