"""On-call commands on the dev cluster's real Slurm, typed on its login node (node1): nodes, drain, resume, why,
jobs, logs, cancel, and what happens when slurmctld is down."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import FAKE_PYTHON
from tests.integration.devcluster import wait

pytestmark = pytest.mark.integration


@pytest.fixture
def ops(dev_cluster):
    """``intellect ARGS`` on the login node with a journal of this test's own; the cluster is reset after."""
    env = {"INTELLECT_STATE_DIR": str(dev_cluster.fresh_dir("state"))}

    def call(*args: str, **extra: str):
        return dev_cluster.cli(*args, env={**env, **extra})

    yield call
    dev_cluster.reset()


def test_nodes_json_lists_every_node(ops, dev_cluster) -> None:
    proc = ops("nodes", "--json")
    assert proc.returncode == 0, proc.stderr
    nodes = {n["name"]: n for n in json.loads(proc.stdout)["nodes"]}
    assert sorted(nodes) == list(dev_cluster.names)
    assert all(n["state"] == "idle" and n["reason"] is None for n in nodes.values())
    assert {n["gres"] for n in nodes.values()} == {"gpu:fake:2"}  # the stand-in GPUs, from the playbooks


def test_drain_sets_prefixed_reason_and_blocks_new_jobs(ops, dev_cluster) -> None:
    proc = ops("drain", "node2", "--reason", "Xid 79 on GPU 3; $(id)")
    assert proc.returncode == 0, proc.stderr
    node, reason = dev_cluster.slurm("sinfo", "-h", "-R", "-o", "%N|%E").strip().split("|", 1)
    assert node == "node2"
    assert reason.startswith("[intellect] root ") and reason.endswith(": Xid 79 on GPU 3; $(id)")  # no shell
    job = dev_cluster.slurm("sbatch", "--parsable", "-w", "node2", "--wrap", "true").strip()
    time.sleep(1.5)
    state = dev_cluster.slurm("squeue", "-h", "-j", job, "-o", "%T|%r")
    assert state.startswith("PENDING|ReqNodeNotAvail")  # no new job lands on the drained node
    assert ops("drain", "node3").returncode == 2  # a drain without a reason is refused


def test_resume_refuses_a_human_drain(ops, dev_cluster) -> None:
    dev_cluster.slurm("scontrol", "update", "NodeName=node3", "State=DRAIN", "Reason=bad DIMM (bob)")
    proc = ops("resume", "node3")
    assert proc.returncode == 1
    assert "refusing to resume node3: drained by someone else" in proc.stderr
    assert "bad DIMM" in dev_cluster.slurm("sinfo", "-h", "-R", "-o", "%N %E")
    proc = ops("resume", "node3", "--force", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["changed"] == ["node3"]


def test_why_shows_history(ops) -> None:
    assert ops("drain", "node1", "--reason", "thermal 92C").returncode == 0
    assert ops("resume", "node1").returncode == 0
    assert ops("drain", "node1", "--reason", "thermal again").returncode == 0
    proc = ops("why", "node1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["node"]["drained_by_intellect"] is True
    assert [e["action"] for e in data["history"]] == ["drain", "resume", "drain"]
    assert data["history"][0]["reason"].endswith(": thermal 92C")
    text = ops("why", "node1")
    assert "drained by intellect" in text.stderr and "thermal again" in text.stderr


def test_unknown_nodes_and_metacharacters(ops, dev_cluster) -> None:
    def states() -> str:  # drop the '*' (not responding) flag a loaded machine may show for a moment
        return dev_cluster.slurm("sinfo", "-h", "-N", "-o", "%N %T %E").replace("*", "")

    before = states()
    for spec, code in (
        ("node9", 1),
        ("node1;reboot", 2),
        ("$(id)", 2),
        ("node[1-", 2),
        ("node1\nnode2", 2),
    ):
        proc = ops("drain", spec, "--reason", "x")
        assert proc.returncode == code, (spec, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert ops("drain", "node1", "--reason", "two\nlines").returncode == 2
    assert states() == before  # nothing changed


def test_jobs_logs_cancel_for_a_launch(ops, dev_cluster) -> None:
    run_dir = dev_cluster.fresh_dir("run")
    proc = ops(
        "launch",
        "recipes/debug-cpu.yaml",
        "--executor",
        "slurm",
        "--run-dir",
        str(run_dir / "r"),
        INTELLECT_PYTHON=str(FAKE_PYTHON),
        FAKE_ROLE_SECONDS="60",
    )
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()

    def running() -> list:
        rows = json.loads(ops("jobs", "--json").stdout)["jobs"]
        return rows if rows and rows[0]["state"] == "RUNNING" and rows[0]["roles"] else []

    rows = wait(running, 60)
    assert rows and rows[0]["job_id"] == job and rows[0]["state"] == "RUNNING"
    roles = rows[0]["roles"]
    assert roles["trainer"] != roles["inference"] and roles["orchestrator"] == roles["trainer"]
    logs = ops("logs", job, "--role", "inference")
    assert logs.returncode == 0 and f"node={roles['inference'][0]}" in logs.stdout
    assert ops("cancel", job).returncode == 0
    assert wait(lambda: not dev_cluster.slurm("squeue", "-h", "-j", job, "-o", "%T").strip(), 30)
    assert json.loads(ops("jobs", "--json").stdout)["jobs"] == []
    assert json.loads(ops("jobs", "--all", "--json").stdout)["jobs"][0]["job_id"] == job


def test_controller_down_exits_3_quickly(ops, dev_cluster) -> None:
    """slurmctld really stopped on node1: every command says so in one line and exits 3, in bounded time."""
    dev_cluster.slurm("systemctl", "stop", "slurmctld")
    try:
        for args in (
            ("nodes", "--json"),
            ("drain", "node1", "--reason", "x"),
            ("resume", "node1"),
            ("why", "node1"),
        ):
            t0 = time.monotonic()
            proc = ops(*args)
            assert proc.returncode == 3, (args, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1 and "controller" in proc.stderr.lower()
            assert time.monotonic() - t0 < 40
    finally:
        dev_cluster.slurm("systemctl", "start", "slurmctld")
        assert wait(lambda: dev_cluster.login(["scontrol", "ping"]).returncode == 0, 60)


def test_human_output_keeps_every_reason_verbatim(ops, dev_cluster) -> None:
    """The [intellect] marker is how a person tells automation's drains from their own; rich must not eat it
    (nor a reason's own brackets) in the human output of drain, nodes and why."""
    reason = "GPU [bold]3[/bold] Xid 79"
    wide = {"COLUMNS": "300", "NO_COLOR": "1"}
    proc = ops("drain", "node2", "--reason", reason, **wide)
    assert proc.returncode == 0, proc.stderr
    assert "drained node2: [intellect] root " in proc.stderr and proc.stderr.rstrip().endswith(reason)
    table = ops("nodes", **wide)
    row = next(line for line in table.stdout.splitlines() if "node2" in line)
    assert "[intellect] root" in row and reason in row
    why = ops("why", "node2", **wide)
    assert "[intellect] root" in why.stderr and reason in why.stderr
    journal = [line for line in why.stderr.splitlines() if " drain " in line]
    assert journal and journal[-1].endswith(f": {reason}"), why.stderr  # the journal line, verbatim too
