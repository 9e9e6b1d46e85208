"""The real RL roles launched on a real Slurm (loopback: 3 slurmd), split by the plan, and requeued when the trainer
node is drained: the job restarts on healthy nodes and resumes from its last checkpoint with no lost step."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import RECIPES, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = 30


def _job_fields(cluster, job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, env=cluster.env()
    ).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _placement(run_dir: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in (run_dir / "status" / "placement").read_text().splitlines())


def _nodes_in_log(path: Path, role: str) -> list[str]:
    return re.findall(rf"{role} rank 0 on node (\S+)", path.read_text())


def test_rl_on_slurm_requeues_after_drain_and_resumes(slurm_cluster, tmp_path: Path) -> None:
    data = yaml.safe_load((RECIPES / "debug-cpu.yaml").read_text())
    data["algorithm"].update(steps=STEPS, pretrain={"steps": 40, "learning_rate": 3e-3, "batch_size": 64})
    data["evals"].update(every=0, samples=64)
    data["checkpoints"] = {"every": 3, "keep": 2}
    recipe = tmp_path / "cluster.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    env = {"SLURM_CONF": str(slurm_cluster.conf), "INTELLECT_STATE_DIR": str(tmp_path / "state")}
    proc = run_cli("launch", str(recipe), "--executor", "slurm", "--run-dir", str(run_dir), env=env)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()

    deadline = time.monotonic() + 300
    while not (run_dir / "weights" / "step_10" / "STABLE").exists():
        assert time.monotonic() < deadline, (run_dir / "logs" / "trainer-0.log").read_text()[-2000:]
        assert _job_fields(slurm_cluster, job).get("JobState") in ("PENDING", "RUNNING")
        time.sleep(0.5)
    first = _placement(run_dir)
    # each role runs on the node the plan gives it (read back from Slurm's allocation and the role logs)
    alloc = subprocess.run(
        ["scontrol", "show", "hostnames", _job_fields(slurm_cluster, job)["NodeList"]],
        capture_output=True,
        text=True,
        env=slurm_cluster.env(),
    ).stdout.split()
    assert [first["trainer"], first["inference"]] == alloc
    assert _nodes_in_log(run_dir / "logs" / "trainer-0.log", "trainer") == [first["trainer"]]
    assert _nodes_in_log(run_dir / "logs" / "inference-0.log", "inference") == [first["inference"]]
    assert _nodes_in_log(run_dir / "logs" / "orchestrator-0.log", "orchestrator") == [first["trainer"]]

    bad = first["trainer"]
    proc = run_cli("drain", bad, "--reason", "test: trainer node failing", "--requeue", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["requeued"] == [job]

    deadline = time.monotonic() + 420
    while _job_fields(slurm_cluster, job).get("JobState") != "COMPLETED":
        fields = _job_fields(slurm_cluster, job)
        assert fields.get("JobState") not in ("FAILED", "CANCELLED", "TIMEOUT"), fields
        assert time.monotonic() < deadline, (run_dir / "logs" / "trainer-0.log").read_text()[-3000:]
        time.sleep(1)
    assert _job_fields(slurm_cluster, job)["Restarts"] == "1"
    second = _placement(run_dir)
    assert bad not in (second["trainer"], second["inference"])  # the drained node got no role
    trainer_nodes = _nodes_in_log(run_dir / "logs" / "trainer-0.log", "trainer")
    assert trainer_nodes == [bad, second["trainer"]]
    assert "resumed from" in (run_dir / "logs" / "trainer-0.log").read_text()
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r["step"] for r in records if r.get("role") == "trainer" and "phase" not in r]
    assert sorted(set(trained)) == list(range(1, STEPS + 1))  # no lost step
    assert (run_dir / "weights" / f"step_{STEPS}" / "STABLE").exists()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == STEPS
