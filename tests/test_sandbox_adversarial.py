"""Hostile completions against the code environment, as an RL policy would eventually write them. Each test
asserts containment (what the attack tried did not happen on the host) and a zero ``tests_passed``; most
attacks only solve the task if they succeed (``OK``), and a control shows that such a program, when ``OK``
is true, does score 1 — so a zero means the attack failed, not that the program was wrong anyway."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from intellect.rl.envs.base import Task
from intellect.rl.envs.code_env import Code, normalise_tests
from intellect.sandbox import SandboxUnavailable
from intellect.sandbox.harness import Verdict, check_program

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 2.0
# f(x) = 1000003 x + 7: expected values that appear nowhere else (not in a version string, not in an input)
TESTS = ["assert f(1) == 1000010", "assert f(5) == 5000022", "assert f(-2) == -1999999"]
SOLVE = "\ndef f(x):\n    return 1000003 * x + 7 if OK else None\n"


@pytest.fixture(scope="module")
def env() -> Iterator[Code]:
    try:
        code = Code(size=4, timeout_s=TIMEOUT, sandbox_warm=2)
    except SandboxUnavailable as exc:
        pytest.skip(f"this host cannot isolate: {exc}")
    yield code
    code.pool.close()


def task(timeout: float = TIMEOUT) -> Task:
    info = {"function": "f", "solution": None, "timeout": timeout}
    return Task(id="adversarial", prompt="Write f.", answer=normalise_tests(TESTS), info=info)


def gated(attack: str) -> str:
    """The attack, then a solution that is right only if the attack set ``OK``."""
    return textwrap.dedent(attack) + SOLVE


def program_text(program: str) -> str:
    text = textwrap.dedent(program)
    compile(text, "<attack>", "exec")  # an attack that does not even parse would score 0 for nothing
    return text


def score(env: Code, program: str, timeout: float = TIMEOUT) -> float:
    result = env.score(task(timeout), f"```python\n{program_text(program)}\n```")
    assert not result.errors and 0.0 <= result.reward <= 1.0
    return result.components["tests_passed"]


def verdict(env: Code, program: str, timeout: float = TIMEOUT) -> Verdict:
    return check_program(env.pool, program_text(program), task(timeout).answer, timeout, env.limits)


def test_a_correct_solution_scores_one_and_so_does_an_attack_that_succeeds(env: Code) -> None:
    assert score(env, "def f(x):\n    return 1000003 * x + 7") == 1.0
    assert score(env, "OK = True" + SOLVE) == 1.0  # the control for every OK-gated attack below
    assert score(env, "OK = False" + SOLVE) == 0.0


# ------------------------------------------------------------------------------------------------ forgery


@pytest.mark.parametrize(
    "program",
    [
        # the old harness's result marker, then exit before any test runs
        "import os\nos.write(1, b'\\n@@intellect-tests@@3\\n')\nos._exit(0)",
        # verdict-shaped lines on its own stdout and on the harness's (its init's) stdout
        """
        import os
        lines = b''.join(b'{"i":%d,"status":"pass","passed":true,"value":[true]}\\n' % i for i in range(3))
        for target in (1, "/proc/1/fd/1"):
            try:
                fd = target if target == 1 else os.open(target, os.O_WRONLY)
                os.write(fd, lines + b'{"passed": 3, "total": 3}\\n')
            except OSError:
                pass
        def f(x):
            return None
        """,
        # an object that equals everything, and an int that claims to
        "class A:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n    __hash__ = lambda s: 0\ndef f(x):\n    return A()",
        "class A(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\ndef f(x):\n    return A(0)",
        # patched builtins, and the harness's own encoder patched from inside its process
        """
        import builtins, sys
        builtins.isinstance = lambda *a: True
        builtins.type = lambda *a: int
        builtins.AssertionError = type("Never", (Exception,), {})
        harness = sys.modules["__main__"]
        harness.encode = lambda v, depth=0: True
        harness.dumps = lambda v: "[true]"
        def f(x):
            return None
        """,
        # leaving before or during the test
        "import sys\nsys.exit(0)",
        "import os\ndef f(x):\n    os._exit(0)",
        "def f(x):\n    raise SystemExit(0)",
    ],
    ids=[
        "marker",
        "verdict-lines",
        "always-equal",
        "int-liar",
        "patched-builtins",
        "exit",
        "os-exit",
        "system-exit",
    ],
)
def test_forged_output_and_objects_score_zero(env: Code, program: str) -> None:
    assert score(env, program) == 0.0


def test_the_expected_values_are_nowhere_in_the_sandbox(env: Code) -> None:
    search = """
    import os
    seen = []
    for d in ("/tmp", "/proc/1", "/proc/self"):
        for name in os.listdir(d):
            try:
                with open(os.path.join(d, name), "rb") as fh:
                    seen.append(fh.read(1 << 20))
            except OSError:
                pass
    for fd in range(64):
        try:
            seen.append(os.pread(fd, 1 << 20, 0))
        except OSError:
            pass
    blob = b"".join(seen)
    OK = any(v in blob for v in (b"1000010", b"5000022", b"1999999"))
    """
    assert score(env, gated(search)) == 0.0
    leaked = verdict(env, "import os\nprint(sorted(os.listdir('/tmp')))\ndef f(x):\n    return x")
    assert leaked.outcomes == ["fail"] * 3  # ran, observed, judged wrong: the answers stayed on the host


# ------------------------------------------------------------------------------------------------ host access


@pytest.fixture
def secret() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="intellect-secret-")) / "secret.txt"
    path.write_text("1000010 5000022 -1999999")
    yield path
    path.unlink()
    path.parent.rmdir()


def test_host_files_cannot_be_read(env: Code, secret: Path) -> None:
    paths = [
        "/etc/shadow",
        "/etc/passwd",
        "/root/.bashrc",
        "/root",
        str(ROOT / "pyproject.toml"),
        str(secret),
    ]
    paths += ["/proc/1/root/etc/shadow", f"/proc/1/root{secret}", "/proc/self/root/../../etc/shadow"]
    attack = f"""
    import os
    OK = False
    for p in {paths!r}:
        try:
            if os.path.isdir(p):
                os.listdir(p)
            else:
                open(p, "rb").read()
            OK = True
        except OSError:
            pass
    """
    assert score(env, gated(attack)) == 0.0
    probe = verdict(
        env, f"import os\nfor p in {paths!r}:\n    assert not os.path.exists(p), p\ndef f(x):\n    return x"
    )
    assert probe.outcomes == ["fail"] * 3  # every path absent (an assert would have made it "error")


def test_writes_outside_the_sandbox_do_not_reach_the_host(env: Code, tmp_path: Path) -> None:
    host_tmp = tmp_path / "pwned"
    attack = f"""
    import os
    OK = False
    for p in ({str(ROOT / "pwned")!r}, "/usr/pwned", "/etc/pwned", "/pwned", "/dev/pwned", "/proc/sys/kernel/hostname"):
        try:
            with open(p, "w") as fh:
                fh.write("x")
            OK = True
        except OSError:
            pass
    try:  # the host's /tmp is not the sandbox's: this lands in the private /tmp, never on the host
        os.makedirs({str(tmp_path)!r}, exist_ok=True)
        open({str(host_tmp)!r}, "w").write("x")
    except OSError:
        pass
    """
    assert score(env, gated(attack)) == 0.0
    assert not host_tmp.exists() and not (ROOT / "pwned").exists() and not Path("/usr/pwned").exists()


def test_the_network_is_unreachable(env: Code) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):  # the accept timed out
                accepted.append(listener.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        attack = f"""
        import socket
        OK = False
        for addr in (("127.0.0.1", {port}), ("10.0.0.1", 80), ("1.1.1.1", 53), ("::1", {port})):
            try:
                socket.create_connection(addr, timeout=0.5).close()
                OK = True
            except OSError:
                pass
        """
        assert score(env, gated(attack)) == 0.0
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert accepted == []


def test_killing_the_parent_or_host_processes_leaves_the_scorer_alive(env: Code) -> None:
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        attack = f"""
        import os, signal
        for pid, sig in ((os.getppid(), signal.SIGKILL), (1, signal.SIGSTOP), ({os.getpid()}, signal.SIGKILL),
                         ({sentinel.pid}, signal.SIGKILL), (os.getpgid(0) and -os.getpgid(0), signal.SIGKILL)):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        def f(x):
            return None
        """
        result = verdict(env, attack)
        assert result.passed == 0 and "missing" not in result.outcomes  # the harness outlived every attempt
        assert score(env, attack) == 0.0
        assert sentinel.poll() is None  # a host process of the scorer's own user, untouched
    finally:
        sentinel.send_signal(signal.SIGKILL)
        sentinel.wait()


# ------------------------------------------------------------------------------------------------ lifetime


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


def test_a_daemon_holding_the_harness_output_dies_with_the_run(env: Code) -> None:
    marker = f"adversarial-daemon-{os.getpid()}"
    daemon = f"""
    import os, sys
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            try:
                fd = os.open("/proc/1/fd/1", os.O_WRONLY)  # the harness's stdout, read by the scorer
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            except OSError:
                pass
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
        os._exit(0)
    def f(x):
        return None
    """
    result = verdict(env, daemon, timeout=30.0)
    assert result.observed is not None and result.observed.stopped == "exit"  # not held until the timeout
    assert result.outcomes == ["fail"] * 3
    assert score(env, daemon) == 0.0
    assert not host_processes_with(marker)


def test_a_fork_bomb_is_contained(env: Code) -> None:
    marker = f"adversarial-bomb-{os.getpid()}"
    bomb = f"""
    import os, sys
    while True:
        try:
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import os\\nwhile True:\\n  try: os.fork()\\n  except OSError: pass", "{marker}"])
        except OSError:
            pass
    """
    result = verdict(env, bomb, timeout=1.0)
    assert result.passed == 0 and result.observed is not None
    assert score(env, bomb, timeout=1.0) == 0.0
    assert not host_processes_with(marker)


def test_memory_and_cpu_exhaustion_score_zero(env: Code) -> None:
    grab = "try:\n    hoard = bytearray(8 << 30)\n    OK = True\nexcept MemoryError:\n    OK = False\n"
    assert score(env, gated(grab)) == 0.0
    grow = gated("hoard = []\nwhile True:\n    hoard.append(bytearray(64 << 20))\n")
    grown = verdict(env, grow)  # a MemoryError at the limit (or the time runs out first), the host untouched
    assert grown.passed == 0 and set(grown.outcomes) <= {"error", "timeout"}
    spin = verdict(env, gated("while True:\n    pass\n"), timeout=1.0)
    assert spin.outcomes == ["timeout"] * 3 and spin.passed == 0
    assert score(env, "def f(x):\n    while True:\n        pass", timeout=1.0) == 0.0


def test_proc_shows_nothing_of_the_host(env: Code, secret: Path) -> None:
    attack = f"""
    import os
    OK = False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for path in (f"/proc/{{pid}}/cmdline", f"/proc/{{pid}}/environ", f"/proc/{{pid}}/root{secret}",
                     f"/proc/{{pid}}/cwd/{secret.name}", f"/proc/{{pid}}/root/etc/shadow"):
            try:
                data = open(path, "rb").read()
            except OSError:
                continue
            if b"pytest" in data or b"1000010" in data or b"root:" in data:
                OK = True
    OK = OK or len([p for p in os.listdir("/proc") if p.isdigit()]) > 8
    """
    assert score(env, gated(attack)) == 0.0
    listing = verdict(
        env,
        "import os\npids = [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
        "assert max(pids) < 64 and len(pids) <= 4, pids\ndef f(x):\n    return x",
    )
    assert listing.outcomes == ["fail"] * 3  # only the harness and this case's child: the asserts held
