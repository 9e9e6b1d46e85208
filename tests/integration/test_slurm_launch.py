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


def _recipe(tmp_path: Path, trainer: int, inference: int) -> Path:
    """debug-cluster's recipe with another split of the loopback cluster's 3 nodes."""
    import yaml

    data = yaml.safe_load(Path("recipes/debug-cluster.yaml").read_text())
    data["cluster"]["nodes"] = trainer + inference
    data["roles"]["trainer"]["nodes"], data["roles"]["inference"]["nodes"] = trainer, inference
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _launch_recipe(cluster, recipe: Path, run_dir: Path, **env: str):
    return run_cli(
        "launch", str(recipe), "--executor", "slurm", "--run-dir", str(run_dir),
        env={"SLURM_CONF": str(cluster.conf), "INTELLECT_PYTHON": str(FAKE_PYTHON), **env},
    )  # fmt: skip


def test_a_dead_inference_server_ends_only_its_own_step(slurm_cluster, tmp_path: Path) -> None:
    """Two inference servers, one job step each: the second dies early (exit 1). Its step ends; the first
    server, the trainer and the orchestrator go on and the job completes, with the loss recorded."""
    run_dir = tmp_path / "run"
    proc = _launch_recipe(
        slurm_cluster, _recipe(tmp_path, 1, 2), run_dir, FAKE_INFERENCE_DIE_RANK="1", FAKE_ROLE_SECONDS="3"
    )
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    assert _wait_job(slurm_cluster, job) == "COMPLETED", (run_dir / "status").iterdir()
    events = (run_dir / "status" / "events").read_text()
    assert "inference-1 on node-3 exited with 1; 1 of 2 inference servers left" in events, events
    assert (run_dir / "status" / "run.exit").read_text().strip() == "0"
    assert "fake inference rank=1 node=node-3" in (run_dir / "logs" / "inference-1.log").read_text()
    assert "fake inference rank=0 node=node-2" in (run_dir / "logs" / "inference-0.log").read_text()


def test_losing_a_trainer_node_requeues_the_job(slurm_cluster, tmp_path: Path) -> None:
    """Trainer over 2 nodes (--no-kill allocation): node-2, trainer rank 1's, goes DOWN mid-run. Its step fails,
    the batch script sees Slurm mark the node down and requeues the job (to resume from its checkpoint)."""
    env = slurm_cluster.env()
    run_dir = tmp_path / "run"
    proc = _launch_recipe(slurm_cluster, _recipe(tmp_path, 2, 1), run_dir, FAKE_ROLE_SECONDS="60")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "logs" / "trainer-1.log").exists() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "node=node-2" in (run_dir / "logs" / "trainer-1.log").read_text()
        # node-2 loses power: its slurmd, slurmstepd and trainer rank die at once; Slurm finds it silent
        assert slurm_cluster.power_off("node-2") >= 3
        fields: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, env=env
            )
            fields = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
            if fields.get("Restarts") == "1":
                break
            time.sleep(0.5)
        logs = "".join(
            p.name + ": " + p.read_text()[-1500:] for p in sorted((run_dir / "logs").glob("s*.log"))
        )
        logs += "".join(p.name + ": " + p.read_text() for p in sorted((run_dir / "status").iterdir()))
        assert fields.get("Restarts") == "1", (fields.get("JobState"), logs)
        events = (run_dir / "status" / "events").read_text()
        assert "trainer node(s) lost: node-2:" in events and f"requeueing job {job}" in events, events
        assert "requeued (restart 1)" in (run_dir / "status" / "job.cause").read_text()
    finally:
        subprocess.run(["scancel", job], env=env)
        slurm_cluster.power_on("node-2")
        subprocess.run(
            ["scontrol", "update", "NodeName=node-2", "State=RESUME"], env=env, capture_output=True
        )
