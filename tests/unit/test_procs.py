"""terminate_then_kill on real child processes."""

from __future__ import annotations

import signal
import subprocess
import sys

from intellect.procs import terminate_then_kill

SLEEP = "import time; print('ready', flush=True); time.sleep(60)"
IGNORE_TERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + SLEEP


def _child(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_process_that_exits_on_sigterm_is_not_killed() -> None:
    with _child(SLEEP) as proc:
        terminate_then_kill(proc)
    assert proc.returncode == -signal.SIGTERM


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    with _child(IGNORE_TERM) as proc:
        terminate_then_kill(proc, grace=0.2)
    assert proc.returncode == -signal.SIGKILL


def test_an_exited_process_is_left_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    terminate_then_kill(proc)
    assert proc.returncode == 3
