"""recipes/debug-cluster.yaml (1 trainer + 2 inference nodes) through submitit's Slurm executor on a real Slurm
(loopback: 3 slurmd). Each role runs on its planned node, both inference servers serve rollouts, and
`intellect jobs` shows the split."""

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


def test_debug_cluster_recipe_runs_split_over_three_nodes(slurm_cluster, tmp_path: Path) -> None:
    data = yaml.safe_load((RECIPES / "debug-cluster.yaml").read_text())
    data["algorithm"].update(steps=8, pretrain={"steps": 30, "learning_rate": 3e-3, "batch_size": 64})
    data["evals"].update(every=0, samples=32)
    recipe = tmp_path / "debug-cluster.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    env = {"SLURM_CONF": str(slurm_cluster.conf), "INTELLECT_STATE_DIR": str(tmp_path / "state")}
    proc = run_cli("launch", str(recipe), "--executor", "slurm", "--run-dir", str(run_dir), env=env)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    roles: dict = {}
    deadline = time.monotonic() + 300
    while True:
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, env=slurm_cluster.env()
        ).stdout
        state = dict(kv.split("=", 1) for kv in out.split() if "=" in kv).get("JobState")
        if state == "RUNNING" and not roles:
            rows = json.loads(run_cli("jobs", "--json", env=env).stdout)["jobs"]
            roles = rows[0]["roles"] if rows else {}
        if state in ("COMPLETED", "FAILED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(1)
    assert state == "COMPLETED", (run_dir / "logs" / "orchestrator-0.log").read_text()[-3000:]
    placement = dict(ln.split("=", 1) for ln in (run_dir / "status" / "placement").read_text().splitlines())
    trainer, inference = placement["trainer"].split(), placement["inference"].split()
    assert len(trainer) == 1 and len(inference) == 2 and len(set(trainer + inference)) == 3
    assert roles == {"trainer": trainer, "inference": inference, "orchestrator": trainer}
    for rank, node in enumerate(inference):
        log = (run_dir / "logs" / f"inference-{rank}.log").read_text()
        assert re.search(rf"inference rank {rank} on node {node}\b", log)
        assert log.count("POST /v1/completions") > 10  # both servers took rollouts
    assert re.search(
        rf"trainer rank 0 on node {trainer[0]}\b", (run_dir / "logs" / "trainer-0.log").read_text()
    )
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 8
