"""Ctrl-C on a local launch stops every role process: none outlives ``intellect launch``.

Before the batch script ran in a session of its own, submitit's SIGINT, then SIGKILL, killed bash before its trap
ran, and the inference server, trainer and orchestrator kept running as orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import RECIPES, ROOT

pytestmark = pytest.mark.slow


def _role_pids(run_dir: Path) -> list[int]:
    """Processes whose command line names this run's resolved recipe (the three roles)."""
    found = []
    needle = str(run_dir / "recipe.resolved.yaml").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_ctrl_c_on_a_local_launch_stops_every_role(tmp_path: Path) -> None:
    data = yaml.safe_load((RECIPES / "debug-cpu.yaml").read_text())
    data["roles"]["trainer"].update(port=29561, metrics_port=9461)
    data["roles"]["inference"]["port"] = 8061
    data["roles"]["orchestrator"]["metrics_port"] = 9460
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    env = {**os.environ, "NO_COLOR": "1", "INTELLECT_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "intellect.cli.main", "launch", str(recipe), "--executor", "local"]
    err = (tmp_path / "stderr").open("w")
    cli = subprocess.Popen([*argv, "--run-dir", str(run_dir)], env=env, cwd=ROOT, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while len(_role_pids(run_dir)) < 3 or not (run_dir / "logs" / "trainer-0.log").exists():
            assert time.monotonic() < deadline, "the roles never started"
            assert cli.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.2)
        roles = _role_pids(run_dir)
        time.sleep(2)  # the roles are importing torch and warming up: the moment an impatient user presses ^C
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=60) == 130
        deadline = time.monotonic() + 15
        while _role_pids(run_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _role_pids(run_dir) == [], f"roles {roles} outlived the launch"
    finally:
        err.close()
        if cli.poll() is None:
            cli.kill()
        for pid in _role_pids(run_dir):  # only this test's own roles, named by their run directory
            os.kill(pid, signal.SIGKILL)
