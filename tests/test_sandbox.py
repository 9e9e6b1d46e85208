"""The sandbox for real: bubblewrap runs on this host, as root and as an ordinary user; what a run gets (files,
stdin, output, exit status, limits), what it is kept from (host files, network, host processes, new
namespaces), that every process of a run ends with it, that the pool bounds concurrency, and that a host that
cannot isolate is refused in one line. Skipped, with the reason, where this host cannot isolate at all."""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from intellect.errors import EnvError
from intellect.recipe import EnvSpec
from intellect.rl.envs import make_env
from intellect.sandbox import (
    BwrapRunner,
    Limits,
    Request,
    Result,
    SandboxPool,
    SandboxUnavailable,
    UnisolatedRunner,
    cgroup,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runner() -> BwrapRunner:
    r = BwrapRunner()
    try:
        r.check()
    except SandboxUnavailable as exc:
        pytest.skip(f"this host cannot isolate: {exc}")
    return r


def py(code: str, **kw: object) -> Request:
    return Request(["python3", "-I", "-S", "-c", textwrap.dedent(code)], **kw)  # type: ignore[arg-type]


def lines(result: Result) -> list[str]:
    return result.stdout.decode().splitlines()


# ------------------------------------------------------------------------------------------------ the API


def test_a_run_gets_its_files_stdin_and_env_and_reports_status_and_times(runner: BwrapRunner) -> None:
    result = runner.run(
        py(
            """
            import os, sys
            print(open("data/in.txt").read(), sys.stdin.read(), os.environ["GREETING"], sorted(os.environ))
            print("to stderr", file=sys.stderr)
            sys.exit(3)
            """,
            files={"data/in.txt": "file!"},
            stdin=b"stdin!",
            env={"GREETING": "hi"},
        )
    )
    assert lines(result) == ["file! stdin! hi ['GREETING', 'HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']"]
    assert result.stderr == b"to stderr\n"
    assert (result.exit_code, result.signal, result.stopped, result.ok) == (3, None, "exit", False)
    assert result.isolated and result.runner == "bwrap" and result.limits_by == "rlimit"
    assert result.wall_s > 0 and result.cpu_s > 0


def test_each_limit_stops_the_run_and_says_which(runner: BwrapRunner) -> None:
    quick = Limits(wall_s=1.0, cpu_s=1.0, file_mb=1, tmp_mb=4, output_bytes=1000)
    spin = runner.run(py("while True: pass", limits=Limits(wall_s=10, cpu_s=1)))
    assert spin.stopped == "cpu" and spin.signal == 9
    sleep = runner.run(py("import time; time.sleep(30)", limits=quick))
    assert sleep.stopped == "timeout" and sleep.exit_code is None
    chatty = runner.run(py("while True: print('x' * 1000)", limits=quick))
    assert chatty.stopped == "output" and len(chatty.stdout) == 1000
    big = runner.run(py("open('f', 'w').write('x' * (2 << 20))", limits=quick))
    assert b"File too large" in big.stderr
    full = runner.run(py("[open(f'f{i}', 'w').write('x' * (1 << 19)) for i in range(20)]", limits=quick))
    assert b"No space left on device" in full.stderr
    hungry = runner.run(py("x = bytearray(4 << 30)", limits=Limits(memory_mb=256)))
    assert b"MemoryError" in hungry.stderr
    files = runner.run(py("fs = [open('/dev/null') for _ in range(100)]", limits=Limits(open_files=16)))
    assert b"Too many open files" in files.stderr


def test_a_process_limit_holds_and_a_fork_bomb_ends_with_the_run(runner: BwrapRunner) -> None:
    counted = runner.run(
        py(
            """
            import os, time
            n = 0
            try:
                while n < 1000:
                    if os.fork() == 0:
                        time.sleep(30)
                        os._exit(0)
                    n += 1
            except OSError:
                pass
            print(n)
            """,
            limits=Limits(processes=20),
        )
    )
    assert counted.stopped == "exit" and int(counted.stdout) < 20
    marker = f"bomb-{os.getpid()}"
    bomb = runner.run(
        py(
            f"""
            import os, sys
            while True:
                try:
                    if os.fork() == 0:
                        os.execv(sys.executable, [sys.executable, "-c", "import os\\nwhile True: os.fork()", "{marker}"])
                except OSError:
                    pass
            """,
            limits=Limits(wall_s=2, processes=32),
        )
    )
    assert bomb.stopped in ("timeout", "cpu")
    assert not host_processes_with(marker)


def host_processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


def test_a_daemon_dies_with_the_run_even_holding_its_stdout(runner: BwrapRunner) -> None:
    marker = f"daemon-{os.getpid()}"
    result = runner.run(
        py(
            f"""
            import os, sys
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:  # the daemon keeps stdout and stderr open and sleeps
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
                os._exit(0)
            print("parent done")
            """,
            limits=Limits(wall_s=30),
        )
    )
    assert result.stopped == "exit" and lines(result) == ["parent done"]  # not held up by the daemon
    assert not host_processes_with(marker)


# ------------------------------------------------------------------------------------------------ isolation


def test_the_run_sees_its_own_namespaces_and_a_minimal_read_only_root(runner: BwrapRunner) -> None:
    result = runner.run(
        py(
            """
            import os, socket
            print(os.getuid(), os.getgid(), os.getpid(), socket.gethostname())
            print(sorted(os.listdir("/")), sorted(os.listdir("/proc"))[-3:])
            print(sorted(i for _, i in socket.if_nameindex()))
            for path in ("/x", "/usr/x", "/dev/x", "/proc/x"):
                try:
                    open(path, "w")
                    print("wrote", path)
                except OSError:
                    print("denied")
            """
        )
    )
    uid_line, root_line, net_line, *writes = lines(result)
    assert uid_line == "1000 1000 1 sandbox"
    assert root_line.startswith("['dev', 'lib', 'lib64', 'proc', 'tmp', 'usr']")
    assert net_line == "['lo']"
    assert writes == ["denied"] * 4  # read-only file systems and a read-only /dev


def test_host_paths_are_absent(runner: BwrapRunner, tmp_path: Path) -> None:
    secret = Path(tempfile.mkdtemp(prefix="intellect-secret-")) / "secret.txt"
    secret.write_text("host secret")
    try:
        paths = ["/etc/shadow", "/etc/passwd", "/root", "/home", str(ROOT / "pyproject.toml"), str(secret)]
        paths += [sys.executable, str(ROOT / ".venv"), "/var", "/run"]
        result = runner.run(py(f"import os\nfor p in {paths!r}: print(os.path.exists(p))"))
        assert lines(result) == ["False"] * len(paths)
    finally:
        shutil.rmtree(secret.parent)


def test_seccomp_refuses_tracing_namespaces_and_keyrings(runner: BwrapRunner) -> None:
    if not runner.seccomp:
        pytest.skip("no seccomp program for this architecture")
    result = runner.run(
        py(
            """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            for name, nr, args in (("ptrace", 101, (16, 1, 0, 0)), ("unshare", 272, (0x10000000,)),
                                   ("keyctl", 250, (0, 0)), ("bpf", 321, (0, 0, 0)),
                                   ("io_uring_setup", 425, (1, 0)), ("mount", 165, (0, 0, 0, 0, 0))):
                ret = libc.syscall(nr, *args)
                print(name, ret, os.strerror(ctypes.get_errno()))
            """
        )
    )
    assert lines(result) == [
        f"{name} -1 Operation not permitted"
        for name in ("ptrace", "unshare", "keyctl", "bpf", "io_uring_setup", "mount")
    ]


def test_the_output_cannot_fake_a_sandbox_failure(runner: BwrapRunner) -> None:
    result = runner.run(
        py("import sys\nprint('bwrap: Can\\'t create namespace', file=sys.stderr)\nsys.exit(1)")
    )
    assert result.stopped == "exit" and result.exit_code == 1  # a program's exit, not a SandboxError


# ------------------------------------------------------------------------------------------------ as a user


def test_it_works_as_an_ordinary_user(runner: BwrapRunner) -> None:
    if os.geteuid() != 0:
        user = pwd.getpwuid(os.geteuid()).pw_name
        pytest.skip(f"already an ordinary user ({user}): the other tests cover it")
    if not shutil.which("runuser") or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs runuser and /usr/bin/python3 to run as nobody")
    with tempfile.TemporaryDirectory(prefix="intellect-nobody-") as tmp:
        os.chmod(tmp, 0o755)
        pkg = Path(tmp, "intellect")
        shutil.copytree(
            ROOT / "intellect" / "sandbox", pkg / "sandbox", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(ROOT / "intellect" / "errors.py", pkg / "errors.py")
        (pkg / "__init__.py").write_text("")
        for path in (tmp, *pkg.rglob("*")):
            os.chmod(path, 0o755 if Path(path).is_dir() else 0o644)
        script = textwrap.dedent(
            """
            import json, os, sys
            from intellect.sandbox import BwrapRunner, Limits, Request
            r = BwrapRunner()
            r.check()
            out = {"uid": os.geteuid(), "drop": r._drop}
            prog = "import os\\nn = 0\\ntry:\\n  while n < 100:\\n    if os.fork() == 0:\\n      import time; time.sleep(9); os._exit(0)\\n    n += 1\\nexcept OSError: pass\\nprint(n, os.path.exists('/etc/shadow'))"
            res = r.run(Request(["python3", "-I", "-S", "-c", prog], limits=Limits(processes=10)))
            out["forks"], out["shadow"] = res.stdout.decode().split()
            out["stopped"] = res.stopped
            print(json.dumps(out))
            """
        )
        proc = subprocess.run(
            [
                "runuser",
                "-u",
                "nobody",
                "--",
                "/usr/bin/python3",
                "-I",
                "-c",
                f"import sys; sys.path.insert(0, {tmp!r})\n" + script,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp,
        )
    if "user namespace" in proc.stderr.lower() or "no permissions to create" in proc.stderr.lower():
        pytest.skip(f"user namespaces are not allowed for nobody here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["uid"] == 65534 and out["drop"] is None  # no privileges to drop: runs as itself
    assert int(out["forks"]) < 10 and out["shadow"] == "False" and out["stopped"] == "exit"


# ------------------------------------------------------------------------------------------------ failing closed


def test_no_bubblewrap_is_refused_in_one_line() -> None:
    with pytest.raises(
        SandboxUnavailable, match=r"^sandbox: bubblewrap \(/nonexistent/bwrap\) is not installed"
    ):
        BwrapRunner(bwrap="/nonexistent/bwrap").check()


def test_disabled_user_namespaces_are_refused_in_one_line(runner: BwrapRunner) -> None:
    """Inside a sandbox that may not create user namespaces (as a host with them disabled), the runner's probe
    fails, and says why in one line."""
    probe = (
        "import sys\nsys.path.insert(0, sys.argv[1])\nfrom intellect.sandbox import BwrapRunner, SandboxUnavailable\n"
        "try:\n    BwrapRunner('/usr/bin/python3').check()\nexcept SandboxUnavailable as exc:\n    print(exc)\n"
    )
    outer = [
        "bwrap",
        "--unshare-user",
        "--disable-userns",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--ro-bind",
        "/",
        "/",
    ]
    outer += [
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--bind",  # the host's /tmp, not a tmpfs over it: a checkout (CI's clone) or its venv may live there
        "/tmp",
        "/tmp",
        sys.executable,
        "-I",
        "-c",
        probe,
        str(ROOT),
    ]
    proc = subprocess.run(outer, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (message,) = proc.stdout.splitlines()
    assert message.startswith("sandbox: bubblewrap could not start the program: bwrap: ")


def test_the_code_env_fails_closed_unless_asked_to_run_unisolated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    with pytest.raises(EnvError) as exc:
        make_env(EnvSpec.model_validate({"name": "code", "args": {"size": 4}}))
    assert (
        str(exc.value)
        == "code: sandbox: bubblewrap (bwrap) is not installed (Debian: apt install bubblewrap)"
    )
    assert "args.sandbox: unisolated" in str(exc.value.hint)
    with caplog.at_level(logging.WARNING):
        env = make_env(EnvSpec.model_validate({"name": "code", "args": {"size": 4, "sandbox": "unisolated"}}))
    assert "UNISOLATED" in caplog.text
    assert isinstance(env.pool.runner, UnisolatedRunner)  # type: ignore[attr-defined]
    with pytest.raises(EnvError, match="python-tool: sandbox: bubblewrap"):
        make_env(EnvSpec.model_validate({"name": "python-tool", "args": {}}))


def test_a_delegated_cgroup_limits_the_whole_run() -> None:
    parent = os.environ.get(cgroup.ENV_VAR)
    if not parent:
        pytest.skip(
            f"no delegated cgroup v2 here ({cgroup.ENV_VAR} unset; a site sets it to a directory that enables "
            "+memory +pids for its children): this host limits runs by rlimits"
        )
    runner = BwrapRunner(cgroup=parent)
    runner.check()
    hungry = runner.run(py("x = bytearray(600 << 20)", limits=Limits(memory_mb=256)))
    assert hungry.limits_by == "cgroup" and hungry.stopped == "memory"
    forks = runner.run(
        py(
            "import os, time\nn = 0\ntry:\n  while n < 100:\n    if os.fork() == 0:\n      time.sleep(9)\n"
            "      os._exit(0)\n    n += 1\nexcept OSError:\n  pass\nprint(n)",
            limits=Limits(processes=16),
        )
    )
    assert int(forks.stdout) < 16
    assert not [d for d in os.listdir(parent) if d.startswith("run-")]  # each run's cgroup is removed


# ------------------------------------------------------------------------------------------------ the pool


def test_the_pool_bounds_concurrent_runs(runner: BwrapRunner) -> None:
    active, peak, lock = [0], [0], threading.Lock()

    class Counting:
        name, isolated = "counting", True

        def check(self) -> None:
            runner.check()

        def start(self, request: Request):  # type: ignore[no-untyped-def]
            return runner.start(request)

        def run(self, request: Request) -> Result:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                return runner.run(request)
            finally:
                with lock:
                    active[0] -= 1

    pool = SandboxPool(Counting(), size=2)
    threads = [
        threading.Thread(target=pool.run, args=(py("import time; time.sleep(0.3)"),)) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2


def test_warm_sandboxes_are_started_ahead_and_closed(runner: BwrapRunner) -> None:
    template = Request(["python3", "-I", "-S", "-c", "import sys; print(sys.stdin.read()[::-1])"])
    pool = SandboxPool(runner, size=2, warm=2, template=template)
    try:
        first = pool.run_template(b"abc")  # cold: starts the warming thread
        results = [pool.run_template(b"xyz") for _ in range(4)]
        assert first.stdout == b"cba\n" and all(r.stdout == b"zyx\n" for r in results)
        assert pool.cold_starts + pool.warm_hits == 5 and pool.warm_hits >= 1
        for _ in range(1000):  # wait for a warm one, then kill it while idle: it must not be used
            if pool._ready:
                break
            time.sleep(0.01)
        idle = pool._ready[0]
        idle.proc.kill()  # type: ignore[attr-defined]
        while idle.alive():
            time.sleep(0.01)
        assert pool.run_template(b"123").stdout == b"321\n"
    finally:
        pool.close()
    assert not pool._ready


def test_the_unisolated_runner_speaks_the_same_api() -> None:
    result = UnisolatedRunner().run(py("import sys; print(sys.stdin.read()); sys.exit(2)", stdin=b"hi"))
    assert (lines(result), result.exit_code, result.isolated, result.runner) == (
        ["hi"],
        2,
        False,
        "unisolated",
    )
    assert UnisolatedRunner().run(py("while True: pass", limits=Limits(wall_s=0.5))).stopped == "timeout"


# ------------------------------------------------------------------------------------------------ the loop


def test_a_slow_program_never_blocks_the_event_loop(runner: BwrapRunner) -> None:
    """The orchestrator scores in threads: while a program runs for seconds, the loop keeps serving others."""
    import asyncio
    import random

    from intellect.rl.envs.base import Score, Task, Turn
    from intellect.rl.envs.code_env import Code, normalise_tests
    from intellect.rl.orchestrator.client import InferenceClient
    from intellect.rl.orchestrator.fake import DigitTokenizer, FakeCluster, FakeServer
    from intellect.rl.orchestrator.rollout import Roller, Sampling

    slow = "```python\nimport time\ntime.sleep(1.5)\ndef f(x):\n    return x + 1\n```"

    class SlowCode(Code):
        name = "slow-code"

        def score(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> Score:
            return super().score(task, slow, transcript)

    env = SlowCode(size=4, sandbox_warm=0)
    task = Task(id="slow", prompt="123>", answer=normalise_tests(["assert f(1) == 2"]), info={"timeout": 5.0})

    async def go() -> tuple[str, list[float]]:
        server = FakeServer("http://inf:8000", DigitTokenizer.alphabet, eos=2, rng=random.Random(0), step=0)
        client = InferenceClient([server.url], transport=FakeCluster([server]).transport)
        await client.wait_healthy(5)
        roller = Roller(client, DigitTokenizer(), Sampling(max_new_tokens=4, max_seq_len=32, temperature=1.0))
        group = asyncio.create_task(roller.group(env, task, 4, min_step=0), name="group")
        other = asyncio.create_task(asyncio.sleep(0.1), name="other")
        done, _ = await asyncio.wait({group, other}, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done)).get_name()
        samples = await group
        await client.aclose()
        return first, [s.reward for s in samples]

    first, rewards = asyncio.run(go())
    env.pool.close()
    assert first == "other"  # a 0.1 s sleep on the loop ended while four 1.5 s programs were still scoring
    assert rewards == [1.0] * 4


def test_a_site_plugs_its_own_runner_in_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stronger sandbox (gVisor, a remote service) is an entry point in ``intellect.sandboxes``: a callable
    returning a Runner. Here the entry point names the unisolated runner, standing in for a site's."""
    from importlib import metadata

    from intellect.rl.envs import SpecProblem, check_spec
    from intellect.sandbox import pool as pool_module

    site = metadata.EntryPoint(
        "site-gvisor", "intellect.sandbox.unisolated:UnisolatedRunner", pool_module.GROUP
    )
    real = metadata.entry_points
    monkeypatch.setattr(
        pool_module.metadata,
        "entry_points",
        lambda **kw: [site] if kw.get("group") == pool_module.GROUP else real(**kw),
    )
    assert pool_module.runner_kinds() == ["isolated", "unisolated", "site-gvisor"]
    env = make_env(EnvSpec.model_validate({"name": "code", "args": {"size": 4, "sandbox": "site-gvisor"}}))
    assert isinstance(env.pool.runner, UnisolatedRunner)  # type: ignore[attr-defined]
    task = env.tasks()[0]
    assert env.score(task, str(env.reference(task))).correct
    env.pool.close()  # type: ignore[attr-defined]
    assert check_spec("code", {"sandbox": "site-gvisor"}, "train") == []
    with pytest.raises(
        SpecProblem, match="unknown sandbox 'gvisor'; use one of isolated, unisolated, site-gvisor"
    ):
        check_spec("code", {"sandbox": "gvisor"}, "train")
