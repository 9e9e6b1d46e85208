"""On-call commands against a real Slurm (loopback cluster): nodes, drain, resume, why, jobs, logs, cancel."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FAKE_PYTHON, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def ops(slurm_cluster, tmp_path: Path):
    env = {"SLURM_CONF": str(slurm_cluster.conf), "INTELLECT_STATE_DIR": str(tmp_path / "state")}

    def call(*args: str, **extra: str):
        return run_cli(*args, env={**env, **extra})

    yield call
    # leave every node idle and undrained for the next test
    names = ",".join(slurm_cluster.node_names)
    subprocess.run(
        ["scontrol", "update", f"NodeName={names}", "State=RESUME"],
        env=slurm_cluster.env(),
        capture_output=True,
    )
    subprocess.run(["scancel", "-u", "root"], env=slurm_cluster.env(), capture_output=True)


def _slurm(cluster, *argv: str) -> str:
    return subprocess.run(list(argv), env=cluster.env(), capture_output=True, text=True, check=True).stdout


def test_nodes_json_lists_every_node(ops, slurm_cluster) -> None:
    proc = ops("nodes", "--json")
    assert proc.returncode == 0, proc.stderr
    nodes = {n["name"]: n for n in json.loads(proc.stdout)["nodes"]}
    assert sorted(nodes) == slurm_cluster.node_names
    assert all(n["state"] == "idle" and n["reason"] is None for n in nodes.values())


def test_drain_sets_prefixed_reason_and_blocks_new_jobs(ops, slurm_cluster) -> None:
    proc = ops("drain", "node-2", "--reason", "Xid 79 on GPU 3; $(id)")
    assert proc.returncode == 0, proc.stderr
    reasons = _slurm(slurm_cluster, "sinfo", "-h", "-R", "-o", "%N|%E")
    node, reason = reasons.strip().split("|", 1)
    assert node == "node-2"
    assert reason.startswith("[intellect] ") and reason.endswith(
        ": Xid 79 on GPU 3; $(id)"
    )  # literal, no shell
    job = _slurm(slurm_cluster, "sbatch", "--parsable", "-w", "node-2", "--wrap", "true").strip()
    time.sleep(1.5)
    state = _slurm(slurm_cluster, "squeue", "-h", "-j", job, "-o", "%T|%r")
    assert state.startswith("PENDING|ReqNodeNotAvail")  # no new job lands on the drained node
    assert ops("drain", "node-3").returncode == 2  # a drain without a reason is refused


def test_resume_refuses_a_human_drain(ops, slurm_cluster) -> None:
    _slurm(slurm_cluster, "scontrol", "update", "NodeName=node-3", "State=DRAIN", "Reason=bad DIMM (bob)")
    proc = ops("resume", "node-3")
    assert proc.returncode == 1
    assert "refusing to resume node-3: drained by someone else" in proc.stderr
    assert "bad DIMM" in _slurm(slurm_cluster, "sinfo", "-h", "-R", "-o", "%N %E")
    proc = ops("resume", "node-3", "--force", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["changed"] == ["node-3"]


def test_why_shows_history(ops) -> None:
    assert ops("drain", "node-1", "--reason", "thermal 92C").returncode == 0
    assert ops("resume", "node-1").returncode == 0
    assert ops("drain", "node-1", "--reason", "thermal again").returncode == 0
    proc = ops("why", "node-1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["node"]["drained_by_intellect"] is True
    assert [e["action"] for e in data["history"]] == ["drain", "resume", "drain"]
    assert data["history"][0]["reason"].endswith(": thermal 92C")
    text = ops("why", "node-1")
    assert "drained by intellect" in text.stderr and "thermal again" in text.stderr


def test_unknown_nodes_and_metacharacters(ops, slurm_cluster) -> None:
    def states() -> str:  # drop the '*' (not responding) flag a loaded machine may show for a moment
        return _slurm(slurm_cluster, "sinfo", "-h", "-N", "-o", "%N %T %E").replace("*", "")

    before = states()
    for spec, code in (
        ("node-9", 1),
        ("node-1;reboot", 2),
        ("$(id)", 2),
        ("node-[1-", 2),
        ("node-1\nnode-2", 2),
    ):
        proc = ops("drain", spec, "--reason", "x")
        assert proc.returncode == code, (spec, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert ops("drain", "node-1", "--reason", "two\nlines").returncode == 2
    assert states() == before  # nothing changed


def test_jobs_logs_cancel_for_a_launch(ops, slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = ops(
        "launch",
        "recipes/debug-cpu.yaml",
        "--executor",
        "slurm",
        "--run-dir",
        str(run_dir),
        INTELLECT_PYTHON=str(FAKE_PYTHON),
        FAKE_ROLE_SECONDS="60",
    )
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    deadline = time.monotonic() + 30
    rows: list = []
    while time.monotonic() < deadline:
        rows = json.loads(ops("jobs", "--json").stdout)["jobs"]
        if rows and rows[0]["state"] == "RUNNING" and rows[0]["roles"]:
            break
        time.sleep(0.5)
    assert rows and rows[0]["job_id"] == job and rows[0]["state"] == "RUNNING"
    roles = rows[0]["roles"]
    assert roles["trainer"] != roles["inference"] and roles["orchestrator"] == roles["trainer"]
    logs = ops("logs", job, "--role", "inference")
    assert logs.returncode == 0 and f"node={roles['inference'][0]}" in logs.stdout
    assert ops("cancel", job).returncode == 0
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline and _slurm(slurm_cluster, "squeue", "-h", "-j", job, "-o", "%T").strip()
    ):
        time.sleep(0.5)
    assert json.loads(ops("jobs", "--json").stdout)["jobs"] == []
    assert json.loads(ops("jobs", "--all", "--json").stdout)["jobs"][0]["job_id"] == job


def test_controller_down_exits_3_quickly(slurm_cluster, tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    text = slurm_cluster.conf.read_text()
    port = next(ln for ln in text.splitlines() if ln.startswith("SlurmctldPort="))
    conf.write_text(text.replace(port, "SlurmctldPort=9"))  # nothing listens there
    env = {"SLURM_CONF": str(conf), "INTELLECT_STATE_DIR": str(tmp_path / "s")}
    for args in (
        ("nodes", "--json"),
        ("drain", "node-1", "--reason", "x"),
        ("resume", "node-1"),
        ("why", "node-1"),
    ):
        t0 = time.monotonic()
        proc = run_cli(*args, env=env, timeout=60)
        assert proc.returncode == 3, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "controller" in proc.stderr.lower()
        assert time.monotonic() - t0 < 40
