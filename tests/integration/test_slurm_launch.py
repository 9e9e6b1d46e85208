"""`intellect launch` through submitit's Slurm executor on a real Slurm (several slurmd on loopback).

fake-python stands in for the role processes' interpreter: these tests check submission, the split of the
allocation into roles (read back from Slurm and the logs) and the exit reporting, not the RL loop.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FAKE_PYTHON, run_cli

pytestmark = pytest.mark.integration


def _wait_job(cluster, job_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        # Debian's Slurm 22.05 has no --json for scontrol: read the one-line key=value form
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, env=cluster.env()
        ).stdout
        fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
        state = fields.get("JobState", "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {state!r} after {timeout} s")


def _launch(cluster, run_dir: Path, **env: str):
    return run_cli(
        "launch",
        "recipes/debug-cpu.yaml",
        "--executor",
        "slurm",
        "--run-dir",
        str(run_dir),
        env={"SLURM_CONF": str(cluster.conf), "INTELLECT_PYTHON": str(FAKE_PYTHON), **env},
    )


def test_launch_on_slurm_runs_each_role_on_its_planned_node(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _launch(slurm_cluster, run_dir)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit(), proc.stdout
    assert "slurm executor" in proc.stderr and f"squeue -j {job_id}" in proc.stderr
    assert _wait_job(slurm_cluster, job_id) == "COMPLETED"
    placement = dict(ln.split("=", 1) for ln in (run_dir / "status" / "placement").read_text().splitlines())
    trainer_node, inference_node = placement["trainer"], placement["inference"]
    assert trainer_node != inference_node  # node index 0 is the trainer, index 1 inference
    assert placement["orchestrator"] == trainer_node
    assert f"node={trainer_node}" in (run_dir / "logs" / "trainer-0.log").read_text()
    assert f"node={inference_node}" in (run_dir / "logs" / "inference-0.log").read_text()
    orch = (run_dir / "logs" / "orchestrator-0.log").read_text()
    assert f"node={trainer_node}" in orch and "urls=http://127.0.0.1:8011" in orch
    assert (run_dir / "status" / "run.exit").read_text().strip() == "0"
    record = json.loads((run_dir / "launch.json").read_text())
    assert record["executor"] == "slurm" and record["job_id"] == job_id


def test_failed_role_fails_the_slurm_job(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _launch(slurm_cluster, run_dir, FAKE_ORCHESTRATOR_EXIT="3")
    assert proc.returncode == 0, proc.stderr
    assert _wait_job(slurm_cluster, proc.stdout.strip()) == "FAILED"
    assert (run_dir / "status" / "orchestrator.exit").read_text().split() == ["3"]


def test_bad_recipe_submits_nothing(slurm_cluster, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((Path("recipes/debug-cpu.yaml")).read_text().replace("nodes: 2", "nodes: 9"))
    before = subprocess.run(
        ["squeue", "-h", "-a"], capture_output=True, text=True, env=slurm_cluster.env()
    ).stdout
    proc = run_cli("launch", str(bad), "--executor", "slurm", env={"SLURM_CONF": str(slurm_cluster.conf)})
    assert proc.returncode == 1 and "add up" in proc.stderr
    after = subprocess.run(
        ["squeue", "-h", "-a"], capture_output=True, text=True, env=slurm_cluster.env()
    ).stdout
    assert after == before
