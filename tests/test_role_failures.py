"""Errors that only a job can meet are one line too: a dataset that cannot be downloaded, a reward library that
cannot be imported. The role logs one line (no traceback), exits 4, records the cause in
``status/<role>-<rank>.cause``, and ``intellect launch``, ``intellect jobs`` and ``intellect logs`` show it.

Both runs go through the real launch path on the local executor (all three roles start for real).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import RECIPES, run_cli

pytestmark = pytest.mark.slow


def _recipe(tmp_path: Path, environment: dict[str, object]) -> Path:
    data = yaml.safe_load((RECIPES / "debug-cpu.yaml").read_text())
    data["environments"] = [environment]
    data["evals"]["environments"] = []
    data["algorithm"]["steps"] = 2
    data["algorithm"]["pretrain"]["steps"] = 0
    data["model"]["max_seq_len"] = 128
    data["roles"]["trainer"].update(port=29551, metrics_port=9451)
    data["roles"]["inference"]["port"] = 8051
    data["roles"]["orchestrator"]["metrics_port"] = 9450
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _launch_fails(tmp_path: Path, recipe: Path, env: dict[str, str]) -> tuple[str, dict[str, object]]:
    """Launch; assert the failure is reported as one cause everywhere; return the cause and the jobs row."""
    env = {"INTELLECT_STATE_DIR": str(tmp_path / "state"), **env}
    run_dir = tmp_path / "run"
    proc = run_cli(
        "launch", str(recipe), "--executor", "local", "--run-dir", str(run_dir), env=env, timeout=300
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    cause = (run_dir / "status" / "orchestrator-0.cause").read_text().strip()
    assert "\n" not in cause
    assert (run_dir / "status" / "orchestrator.exit").read_text().split() == ["4"]
    log = (run_dir / "logs" / "orchestrator-0.log").read_text()
    assert "Traceback" not in log
    assert [ln for ln in log.splitlines() if "error" in ln.lower()] == [f"orchestrator: error: {cause}"]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the run failed: orchestrator exited with [4]: orchestrator-0: ")
    assert cause in last
    jobs = run_cli("jobs", "--all", "--json", env=env)
    (row,) = json.loads(jobs.stdout)["jobs"]
    assert row["state"] == "FAILED(4)" and row["causes"] == {"orchestrator-0": cause}
    table = run_cli("jobs", "--all", env=env)
    assert f"job {row['job_id']}: orchestrator-0 failed: {cause}\n" in table.stdout
    logs = run_cli("logs", str(row["job_id"]), env=env)
    assert logs.returncode == 0 and f"orchestrator-0 failed: {cause}" in logs.stderr
    return cause, row


def test_a_dataset_that_cannot_download_is_one_line_exit_4(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path, {"name": "logic", "args": {"dataset": "PrimeIntellect/INTELLECT-3-RL", "subset": "logic"}}
    )
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cause, _ = _launch_fails(tmp_path, recipe, offline)
    assert cause.startswith("dataset PrimeIntellect/INTELLECT-3-RL subset logic split train: cannot load it:")


def test_a_reward_library_that_cannot_import_is_one_line_exit_4(tmp_path: Path) -> None:
    """Broken on the compute nodes only (the roles see INTELLECT_RUN_DIR, the login shell does not): the launch
    check passes, the orchestrator fails in one line. Broken everywhere: refused before submission."""
    shadow = tmp_path / "shadow" / "math_verify"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "import os\nif os.environ.get('INTELLECT_RUN_DIR') or os.environ.get('BROKEN_HERE'):\n"
        "    raise ImportError('simulated broken install')\n"
    )
    recipe = _recipe(tmp_path, {"name": "math", "args": {}})
    cause, _ = _launch_fails(tmp_path, recipe, {"PYTHONPATH": str(shadow.parent)})
    assert cause == (
        "environment 'math': its reward library math_verify cannot be imported: ImportError: simulated broken "
        "install (try: pip install --force-reinstall 'intellect[rl]')"
    )
    env = {"PYTHONPATH": str(shadow.parent), "BROKEN_HERE": "1", "INTELLECT_STATE_DIR": str(tmp_path / "s2")}
    proc = run_cli("launch", str(recipe), "--executor", "local", "--run-dir", str(tmp_path / "r2"), env=env)
    assert proc.returncode == 1 and not (tmp_path / "r2").exists()
    assert proc.stderr.splitlines() == [
        f"error: {recipe}:29: environments[0]: environment 'math': its reward library math_verify cannot be "
        "imported: ImportError: simulated broken install"
    ]
