"""Parsers of recorded real outputs (tests/fixtures/slurm/, from Debian's Slurm 22.05 on loopback) and input checks."""

from __future__ import annotations

import pytest

from intellect.errors import SlurmError, UsageError
from intellect.slurm.nodes import expand_nodes, parse_sacct, parse_sinfo, parse_squeue
from intellect.slurm.ops import make_reason
from tests.conftest import ROOT

FIX = ROOT / "tests" / "fixtures" / "slurm"


def test_parse_sinfo_recorded() -> None:
    nodes = parse_sinfo((FIX / "sinfo-N.txt").read_text())
    assert list(nodes) == ["node-1", "node-2", "node-3"]
    assert nodes["node-1"].state == "mixed" and nodes["node-1"].reason is None
    ours, human = nodes["node-2"], nodes["node-3"]
    assert ours.drained and ours.drained_by_us
    assert (
        ours.reason == "[intellect] alice 2026-11-23T15:00:00Z: Xid 79 on GPU 3 | value=1"
    )  # '|' inside kept
    assert human.drained and not human.drained_by_us and human.reason_user == "root"
    assert (human.cpus, human.memory_mb) == (2, 2000)


def test_parse_squeue_recorded() -> None:
    jobs = {j.job_id: j for j in parse_squeue((FIX / "squeue.txt").read_text())}
    assert (
        jobs["1"].state == "RUNNING" and jobs["1"].nodelist == ["node-1"] and jobs["1"].name == "intellect3"
    )
    assert jobs["2"].state == "PENDING" and jobs["2"].nodelist == []
    assert jobs["2"].reason.startswith("ReqNodeNotAvail")


def test_parse_sacct_and_garbage() -> None:
    rows = parse_sacct("JobID|JobName|State\n7|intellect3|COMPLETED\n8|x|FAILED\n")
    assert [r["State"] for r in rows] == ["COMPLETED", "FAILED"]
    with pytest.raises(SlurmError, match="unexpected sinfo line"):
        parse_sinfo("node-1|idle\n")


def test_sinfo_keeps_state_flags() -> None:
    """sinfo(1) NODE STATE CODES: ``idle*`` is a node whose slurmd stopped answering; it takes no new work."""
    nodes = parse_sinfo(
        "node-1|idle*|Unknown|Unknown|(null)|2|2000|none\n"
        "node-2|mixed|Unknown|Unknown|(null)|2|2000|none\n"
        "node-3|drained*|root|2026-11-23T15:31:45|(null)|2|2000|RMA\n"
        "node-4|idle~|Unknown|Unknown|(null)|2|2000|none\n"
    )
    assert [(n.state, n.flags, n.responding) for n in nodes.values()] == [
        ("idle", "*", False), ("mixed", "", True), ("drained", "*", False), ("idle", "~", True)
    ]  # fmt: skip
    assert nodes["node-3"].drained


def test_sinfo_dedupes_nodes_in_several_partitions() -> None:
    line = "node-1|idle|Unknown|Unknown|gpu:h200:8|96|2000000|none\n"
    assert len(parse_sinfo(line * 3)) == 1


@pytest.mark.parametrize(
    "spec", ["node-1;reboot", "$(id)", "node-[1-", "node 1", "node-1\nnode-2", "", "`id`", "../etc"]
)
def test_malformed_or_dangerous_hostlists_are_refused(spec: str) -> None:
    with pytest.raises(UsageError):
        expand_nodes(spec)


def test_hostlist_expands() -> None:
    assert expand_nodes("node-[17,20-22]") == ["node-17", "node-20", "node-21", "node-22"]


def test_reason_is_prefixed_one_line() -> None:
    reason = make_reason("Xid 79 on GPU 3; $(id) `x`", user="alice")
    assert reason.startswith("[intellect] alice ") and reason.endswith(": Xid 79 on GPU 3; $(id) `x`")
    for bad in ("", "   ", "two\nlines", "tab\there", "x" * 201):
        with pytest.raises(UsageError):
            make_reason(bad)
