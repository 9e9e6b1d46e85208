"""The watchdog in simulated clusters: a fake Slurm behind the one Slurm seam (``intellect.slurm.run.run``), so the
real ``ops.drain`` / ``ops.resume``, the real sinfo parser and the real journal run; a fake verdict source (what
``rules.evaluate`` returns); an injected clock. No sleeps, no timed assertions.

Scenarios of issue 15: a person's re-drain it must not resume; an unrepaired Xid it must not resume; 30 drained by
people plus 34 bad on 64 nodes, where it stays within the cap; a dead exporter, drained after the grace period; a
restart that keeps the hold state; Prometheus and Slurm flapping, which change nothing.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hostlist
import httpx
import pytest

from intellect.errors import SlurmUnreachable
from intellect.health.prom import PrometheusClient
from intellect.health.rules import BAD, DEGRADED, UNKNOWN, Report, Verdict
from intellect.health.watchdog import (
    STATE_FILE,
    Hold,
    Watchdog,
    WatchdogConfig,
    WatchdogState,
    decide,
    load_state,
    make_server,
    save_state,
)
from intellect.health.watchdog_policy import cap, reason_text, token_of, unavailability
from intellect.slurm import run as slurm_run
from intellect.slurm.nodes import SINFO_FORMAT, Node

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
POLL = 15.0
REASON = re.compile(
    r"^\[intellect\] \S+ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: watchdog: (.*) \(wd-token ([0-9a-f]{12})\)$"
)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float = POLL) -> None:
        self.t += seconds


class FakeSlurm:
    """sinfo / squeue / scontrol update as Slurm 22.05 answers them (the ``SINFO_FORMAT`` fields), in memory."""

    def __init__(self, clock: Clock, names: list[str]) -> None:
        self.clock = clock
        self.nodes = {n: {"state": "idle", "reason": None, "user": None, "time": None} for n in names}
        self.user = "slurm"  # who runs scontrol for the watchdog
        self.down = False
        self.lose_answers = False  # apply an update, then time out (the answer is lost)
        self.updates: list[tuple[str, str]] = []

    def run(self, argv: list[str], timeout: float = 15.0, check: bool = True) -> slurm_run.Result:
        if self.down:
            raise SlurmUnreachable(f"{argv[0]}: Unable to contact slurm controller (connect failure)")
        out = ""
        if argv[0] == "sinfo":
            assert argv[-1] == SINFO_FORMAT
            out = "".join(
                f"{n}|{x['state']}|{x['user'] or 'Unknown'}|{x['time'] or 'Unknown'}|(null)|2|1000|{x['reason'] or 'none'}\n"
                for n, x in self.nodes.items()
            )
        elif argv[:2] == ["scontrol", "update"]:
            fields = dict(a.split("=", 1) for a in argv[2:])
            for name in hostlist.expand_hostlist(fields["NodeName"]):
                self._set(name, fields["State"], fields.get("Reason"), self.user)
            if self.lose_answers:
                raise SlurmUnreachable("scontrol did not answer within 15 s; is slurmctld up?")
        return slurm_run.Result(argv, 0, out, "")

    def _set(self, name: str, state: str, reason: str | None, user: str) -> None:
        node = self.nodes[name]
        self.updates.append((name, state))
        if state == "DRAIN":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.clock()))
            node.update(state="drained", reason=reason, user=user, time=stamp)
        elif state == "RESUME":
            node.update(state="idle", reason=None, user=None, time=None)
        elif state == "DOWN":
            node.update(
                state="down", reason=reason or "Not responding", user="root", time="2026-01-01T00:00:00"
            )

    def person_drains(self, name: str, reason: str, user: str = "alice") -> None:
        self._set(name, "DRAIN", reason, user)

    def state(self, name: str) -> str:
        return str(self.nodes[name]["state"])

    def reason(self, name: str) -> str | None:
        return self.nodes[name]["reason"]


class FakeVerdicts:
    """What ``rules.evaluate`` returns: a verdict per node (ok unless set), or every node unknown plus an error."""

    def __init__(self) -> None:
        self.set: dict[str, Verdict] = {}
        self.down = False
        self.calls = 0

    def __call__(self, nodes: list[str]) -> Report:
        self.calls += 1
        if self.down:
            verdicts = {n: verdict(n, UNKNOWN, "prometheus", "no data: unreachable") for n in nodes}
            return Report(verdicts, error="Prometheus at http://prom:9090 is unreachable: ConnectError")
        return Report({n: self.set.get(n) or Verdict(n) for n in nodes})

    def ok(self, *names: str) -> None:
        for n in names:
            self.set.pop(n, None)

    def xid(self, *names: str) -> None:
        for n in names:
            self.set[n] = verdict(n, BAD, "xid", "Xid 79 on GPU 3")

    def xid_aged_out(self, *names: str) -> None:  # what the rules say once the Xid leaves the window
        for n in names:
            self.set[n] = verdict(n, DEGRADED, "xid", "last Xid 79 on GPU 3 is older than 10m")

    def exporter_down(self, *names: str) -> None:
        for n in names:
            self.set[n] = verdict(n, UNKNOWN, "dcgm_up", "dcgm-exporter down (scrape failing)")


def verdict(node: str, status: str, rule: str, text: str) -> Verdict:
    v = Verdict(node)
    v.add(rule, status, text)
    return v


class Sim:
    def __init__(self, tmp: Path, names: list[str]) -> None:
        self.tmp, self.clock = tmp, Clock()
        self.slurm, self.prom = FakeSlurm(self.clock, names), FakeVerdicts()
        self.logs: list[str] = []

    def dog(self, state_dir: Path | None = None, **cfg: object) -> Watchdog:
        settings: dict[str, object] = {"hold_s": 300.0, "poll_s": POLL, "unknown_grace_s": 300.0, **cfg}
        path = (state_dir or self.tmp / "state") / STATE_FILE
        c = WatchdogConfig("http://prom.invalid:9090", state_path=path, **settings)  # type: ignore[arg-type]
        return Watchdog(c, verdicts=self.prom, clock=self.clock, log=self.logs.append)

    def cycles(self, dog: Watchdog, n: int) -> None:
        for _ in range(n):
            self.clock.tick()
            dog.cycle()

    def journal(self) -> list[tuple[str, list[str], str]]:
        lines = (self.tmp / "state" / "journal.jsonl").read_text().splitlines()
        return [(e["action"], e["nodes"], e["source"]) for e in map(json.loads, lines)]


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    s = Sim(tmp_path, [f"node-{i}" for i in range(1, 9)])
    monkeypatch.setenv("INTELLECT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(slurm_run, "run", s.slurm.run)
    yield s


def big(sim: Sim, n: int) -> list[str]:
    sim.slurm.nodes = FakeSlurm(sim.clock, [f"node-{i:02d}" for i in range(1, n + 1)]).nodes
    return sorted(sim.slurm.nodes)


def metric(dog: Watchdog, name: str, **labels: str) -> float | None:
    return dog.metrics.registry.get_sample_value(name, labels)


# ----------------------------------------------------------------------------------- ownership by token


def test_a_drain_carries_a_fresh_token_that_the_state_file_records(sim: Sim) -> None:
    sim.prom.xid("node-2", "node-5")
    dog = sim.dog()
    sim.cycles(dog, 1)
    r2, r5 = sim.slurm.reason("node-2"), sim.slurm.reason("node-5")
    m2, m5 = REASON.match(r2 or ""), REASON.match(r5 or "")
    assert m2 and m5, (r2, r5)
    assert m2.group(1) == "Xid 79 on GPU 3" and m2.group(2) != m5.group(2)  # one token per drain
    saved = WatchdogState.model_validate_json((sim.tmp / "state" / STATE_FILE).read_bytes())
    hold = saved.held["node-2"]
    assert (hold.token, hold.reason, hold.rules, hold.drained_at) == (m2.group(2), r2, ["xid"], T0 + POLL)
    assert hold.reason_user is None  # Slurm's reason user and time are read on the next cycle
    sim.cycles(dog, 1)
    assert dog.state.held["node-2"].reason_user == "slurm" and dog.state.held["node-2"].reason_time
    assert sim.journal() == [("drain", ["node-2"], "watchdog"), ("drain", ["node-5"], "watchdog")]
    assert metric(dog, "intellect_watchdog_drains_total", rule="xid") == 2
    assert metric(dog, "intellect_watchdog_drained_nodes") == 2


@pytest.mark.parametrize(
    "how",
    ["intellect drain from another host", "the same text copied by a person", "the same text, same user, later",
     "a plain reason by hand"],
)  # fmt: skip
def test_a_persons_redrain_is_never_resumed(sim: Sim, how: str) -> None:
    sim.prom.xid("node-2")
    dog = sim.dog()
    sim.cycles(dog, 2)
    ours = sim.slurm.reason("node-2")
    assert ours and "wd-token" in ours
    sim.clock.tick(60)
    if how == "intellect drain from another host":
        sim.slurm.person_drains(
            "node-2", "[intellect] alice 2026-01-01T00:01:30Z: GPU 3 goes back to the vendor"
        )
    elif how == "the same text copied by a person":
        sim.slurm.person_drains("node-2", ours, user="alice")
    elif how == "the same text, same user, later":
        sim.slurm.person_drains("node-2", ours, user="slurm")
    else:
        sim.slurm.person_drains("node-2", "bad cable, ticket 42 -- alice")
    person = sim.slurm.reason("node-2")
    sim.prom.ok("node-2")  # repaired, and healthy for far longer than the hold
    sim.cycles(dog, 100)
    assert sim.slurm.state("node-2") == "drained" and sim.slurm.reason("node-2") == person
    assert "node-2" not in dog.state.held and ("node-2", "RESUME") not in sim.slurm.updates
    assert sum("let go of node-2" in line for line in sim.logs) == 1
    assert metric(dog, "intellect_watchdog_released_total") == 1
    assert metric(dog, "intellect_watchdog_unavailable_nodes", cause="people") == 1


def test_a_node_someone_else_resumed_is_let_go_and_drained_anew_with_a_new_token(sim: Sim) -> None:
    sim.prom.xid("node-3")
    dog = sim.dog()
    sim.cycles(dog, 1)
    first = dog.state.held["node-3"].token
    sim.slurm._set("node-3", "RESUME", None, "alice")
    sim.cycles(dog, 1)  # still bad: let go of the old hold, drained again as a new one
    assert any("let go of node-3: resumed by someone else" in line for line in sim.logs)
    assert sim.slurm.state("node-3") == "drained" and dog.state.held["node-3"].token != first


def test_it_never_drains_over_or_resumes_a_human_drain_even_when_bad(sim: Sim) -> None:
    sim.slurm.person_drains("node-1", "disk swap -- alice")
    sim.prom.xid("node-1")
    dog = sim.dog()
    sim.cycles(dog, 3)
    sim.prom.ok("node-1")
    sim.cycles(dog, 50)
    assert sim.slurm.reason("node-1") == "disk swap -- alice" and sim.slurm.updates == [("node-1", "DRAIN")]


# -------------------------------------------------------------------------------------- repair, not time


def test_an_unrepaired_xid_is_never_resumed(sim: Sim) -> None:
    sim.prom.xid("node-2")
    dog = sim.dog(hold_s=300.0)
    sim.cycles(dog, 1)
    assert sim.slurm.state("node-2") == "drained"
    sim.prom.xid_aged_out("node-2")  # the Xid left the window; the GPU was never reset
    sim.cycles(dog, 4 * 3600 // int(POLL))  # four hours
    assert sim.slurm.state("node-2") == "drained" and dog.state.held["node-2"].ok_since is None
    sim.prom.exporter_down("node-2")  # unknown is not repair either
    sim.cycles(dog, 100)
    sim.prom.xid("node-2")  # sticky bad (the rules may keep it bad until repair)
    sim.cycles(dog, 100)
    assert sim.slurm.state("node-2") == "drained"
    sim.prom.ok("node-2")  # GPU reset: ok, but not for the whole hold
    sim.cycles(dog, 10)
    sim.prom.xid_aged_out("node-2")
    sim.cycles(dog, 1)
    sim.prom.ok("node-2")
    sim.cycles(dog, 20)  # 285 s of ok since the break: still held
    assert sim.slurm.state("node-2") == "drained"
    sim.cycles(dog, 1)  # 300 s
    assert sim.slurm.state("node-2") == "idle" and "node-2" not in dog.state.held
    assert sim.journal() == [("drain", ["node-2"], "watchdog"), ("resume", ["node-2"], "watchdog")]
    assert metric(dog, "intellect_watchdog_resumes_total") == 1


def test_degraded_by_another_rule_counts_as_repaired(sim: Sim) -> None:
    sim.prom.xid("node-4")
    dog = sim.dog(hold_s=60.0)
    sim.cycles(dog, 1)
    sim.prom.set["node-4"] = verdict("node-4", DEGRADED, "gpu_temp", "GPU 1 at 86 °C (degraded at 85)")
    sim.cycles(dog, 5)
    assert sim.slurm.state("node-4") == "idle"


# ----------------------------------------------------------------------------------------------- the cap


def test_30_drained_by_people_plus_34_bad_stays_within_the_cap(sim: Sim) -> None:
    names = big(sim, 64)
    for i, n in enumerate(names[:30]):  # some with intellect drain from other hosts, some by hand
        sim.slurm.person_drains(
            n, f"[intellect] ops 2026-01-01T00:00:00Z: rack {i} firmware" if i % 2 else "RMA"
        )
    sim.prom.xid(*names[30:])
    dog = sim.dog()  # max_drain_fraction 0.25: at most 16 of 64 unavailable, and 30 already are
    sim.cycles(dog, 20)
    assert [n for n in names if sim.slurm.state(n) == "drained"] == names[:30]
    assert sim.slurm.updates == [(n, "DRAIN") for n in names[:30]]
    assert metric(dog, "intellect_watchdog_held_back_nodes", why="cap") == 34
    assert metric(dog, "intellect_watchdog_unavailable_nodes", cause="people") == 30
    assert metric(dog, "intellect_watchdog_max_unavailable_nodes") == 16
    held = [line for line in sim.logs if line.startswith("NOT draining")]
    assert held == [
        "NOT draining node-[31-64] (34 node(s)): 30 of 64 nodes unavailable (30 drained by people, 0 down, "
        "0 by the watchdog); the cap is 16"
    ]  # once, not every cycle


def test_the_cap_counts_down_nodes_and_its_own_and_limits_drains_per_cycle(sim: Sim) -> None:
    names = big(sim, 64)
    for n in names[:20]:
        sim.slurm.person_drains(n, "maintenance -- bob")
    for n in names[20:30]:
        sim.slurm._set(n, "DOWN", "Not responding", "root")
    sim.prom.xid(*names[30:])
    dog = sim.dog(max_drain_fraction=0.6, max_drains_per_cycle=3)  # 38 of 64
    seen = []
    for _ in range(10):
        sim.clock.tick()
        d = dog.cycle()
        assert d is not None and len(d.drain) <= 3
        seen.append(sum(sim.slurm.state(n) in ("drained", "down") for n in names))
    assert seen == [33, 36] + [38] * 8  # 30 + 3 + 3 + 2: a few per cycle, then it stops at the cap
    assert len(dog.state.held) == 8 and metric(dog, "intellect_watchdog_held_back_nodes", why="cap") == 26
    assert metric(dog, "intellect_watchdog_unavailable_nodes", cause="down") == 10


def test_the_cap_counts_nodes_that_stopped_responding(sim: Sim) -> None:
    """``idle*`` (slurmd silent, not yet marked DOWN) is unavailable: it counts against the cap."""
    for n in ("node-1", "node-2"):
        sim.slurm.nodes[n]["state"] = "idle*"
    sim.prom.xid("node-7", "node-8")
    dog = sim.dog(max_drain_fraction=0.375)  # 3 of 8; two are already gone
    sim.cycles(dog, 3)
    assert sorted(dog.state.held) == ["node-7"] and sim.slurm.state("node-8") == "idle"
    assert metric(dog, "intellect_watchdog_unavailable_nodes", cause="down") == 2
    assert metric(dog, "intellect_watchdog_held_back_nodes", why="cap") == 1


def test_bad_nodes_come_before_exporter_down_when_room_is_short(sim: Sim) -> None:
    sim.prom.exporter_down("node-1")
    dog = sim.dog(max_drain_fraction=0.25)  # 2 of 8
    sim.cycles(dog, 20)  # unknown for 285 s
    sim.prom.xid("node-7", "node-8")
    sim.cycles(dog, 1)  # node-1 is past its grace now, but the two bad nodes come first
    assert sorted(dog.state.held) == ["node-7", "node-8"] and sim.slurm.state("node-1") == "idle"
    assert dog.cycle() is not None and metric(dog, "intellect_watchdog_held_back_nodes", why="cap") == 1


def test_cap_arithmetic() -> None:
    cfg = WatchdogConfig("http://p:9090")
    assert cap(64, cfg) == 16 and cap(3, cfg) == 1 and cap(0, cfg) == 1
    assert cap(64, WatchdogConfig("http://p:9090", max_unavailable=5)) == 5
    assert cap(3, WatchdogConfig("http://p:9090", max_drain_fraction=0.67)) == 2


@pytest.mark.parametrize(
    ("state", "why"),
    [("idle", None), ("mixed", None), ("allocated", None), ("drained", "drained"), ("draining", "drained"),
     ("down", "down"), ("fail", "fail"), ("maint", "maint"), ("idle+maint", "idle+maint"),
     ("powered_down", None)],
)  # fmt: skip
def test_unavailability_of_slurm_states(state: str, why: str | None) -> None:
    assert unavailability(Node("n", state, None, None, None, None, 2, 1000)) == why


# -------------------------------------------------------------------------------- exporter down → drain


def test_a_dead_exporter_is_drained_after_the_grace_period_and_resumed_once_back(sim: Sim) -> None:
    sim.prom.exporter_down("node-6")
    dog = sim.dog(unknown_grace_s=300.0, hold_s=120.0)
    sim.cycles(dog, 1)  # first seen unknown at T0 + 15
    sim.cycles(dog, 19)  # 285 s
    assert sim.slurm.state("node-6") == "idle"
    sim.cycles(dog, 1)  # 300 s
    reason = sim.slurm.reason("node-6") or ""
    m = REASON.match(reason)
    assert m and m.group(1) == "exporter down for 5m00s: dcgm-exporter down (scrape failing)", reason
    assert metric(dog, "intellect_watchdog_drains_total", rule="exporter_down") == 1
    sim.cycles(dog, 40)
    assert sim.slurm.state("node-6") == "drained"  # still down: held
    sim.prom.ok("node-6")
    sim.cycles(dog, 8)
    assert sim.slurm.state("node-6") == "drained"
    sim.cycles(dog, 1)
    assert sim.slurm.state("node-6") == "idle"


def test_many_unknown_at_once_is_a_monitoring_outage_not_dead_exporters(sim: Sim) -> None:
    sim.prom.exporter_down(*sim.slurm.nodes)  # e.g. an empty or misconfigured Prometheus
    dog = sim.dog(max_drain_fraction=1.0)
    sim.cycles(dog, 100)
    assert sim.slurm.updates == [] and metric(dog, "intellect_watchdog_held_back_nodes", why="outage") == 8
    assert sum("monitoring outage" in line for line in sim.logs) == 1


# ------------------------------------------------------------------------------------------------ restart


def test_a_restart_keeps_the_hold_state(sim: Sim) -> None:
    sim.prom.xid("node-2")
    first = sim.dog(hold_s=300.0)
    sim.cycles(first, 1)
    sim.prom.ok("node-2")
    sim.cycles(first, 10)  # ok for 135 s of 300
    path = sim.tmp / "state" / STATE_FILE
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary files left

    second = sim.dog(hold_s=300.0)  # the restarted process: same state file
    assert second.state == first.state
    sim.cycles(second, 10)
    assert sim.slurm.state("node-2") == "drained"  # 285 s
    sim.cycles(second, 1)
    assert sim.slurm.state("node-2") == "idle"  # 300 s since ok, across the restart
    assert WatchdogState.model_validate_json(path.read_bytes()).held == {}


def test_a_watchdog_without_the_state_never_resumes_what_another_drained(sim: Sim) -> None:
    sim.prom.xid("node-2")
    sim.cycles(sim.dog(), 1)
    sim.prom.ok("node-2")
    other = sim.dog(state_dir=sim.tmp / "elsewhere")
    sim.cycles(other, 100)
    assert sim.slurm.state("node-2") == "drained"
    assert metric(other, "intellect_watchdog_unavailable_nodes", cause="people") == 1  # not its own


def test_a_long_downtime_restarts_the_ok_timer(sim: Sim) -> None:
    sim.prom.xid("node-2")
    dog = sim.dog(hold_s=300.0)
    sim.cycles(dog, 1)
    sim.prom.ok("node-2")
    sim.cycles(dog, 10)
    sim.clock.tick(3600)  # the watchdog was stopped for an hour: nobody watched node-2
    later = sim.dog(hold_s=300.0)
    sim.cycles(later, 19)
    assert sim.slurm.state("node-2") == "drained"
    sim.cycles(later, 2)
    assert sim.slurm.state("node-2") == "idle"


def test_a_drain_whose_answer_was_lost_is_still_its_own(sim: Sim) -> None:
    sim.prom.xid("node-5")
    dog = sim.dog(hold_s=30.0)
    sim.slurm.lose_answers = True  # scontrol applies the drain, then times out
    sim.clock.tick()
    assert dog.cycle() is not None
    assert sim.slurm.state("node-5") == "drained" and dog.state.held["node-5"].reason is None
    sim.slurm.lose_answers = False
    restarted = sim.dog(hold_s=30.0)  # even across a crash right there
    sim.cycles(restarted, 1)
    assert restarted.state.held["node-5"].reason == sim.slurm.reason("node-5")
    sim.prom.ok("node-5")
    sim.cycles(restarted, 4)
    assert sim.slurm.state("node-5") == "idle"


def test_an_unreadable_state_file_is_kept_aside_and_it_starts_with_no_holds(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_text('{"version": 1, "held": {"node-2": {"token": 5}}}')
    logs: list[str] = []
    assert load_state(path, logs.append) == WatchdogState()
    assert not path.exists() and len(list(tmp_path.glob(f"{STATE_FILE}.unreadable-*"))) == 1
    assert "starting with no holds" in logs[0]
    hold = Hold(token="ab" * 6, text="watchdog: x (wd-token abababababab)", drained_at=T0, rules=["xid"])
    save_state(path, WatchdogState(observed_at=T0, held={"node-2": hold}))
    assert load_state(path, logs.append).held["node-2"] == hold and len(logs) == 1


# --------------------------------------------------------------------------------------------- flapping


def test_flapping_prometheus_changes_nothing_and_is_said_once_per_outage(sim: Sim) -> None:
    sim.prom.xid("node-2")
    dog = sim.dog(hold_s=3600.0, unknown_grace_s=3600.0)
    sim.cycles(dog, 1)
    sim.prom.ok("node-2")  # repairing: its ok timer runs
    sim.prom.exporter_down("node-4")  # its unknown timer runs
    sim.cycles(dog, 1)
    ok_since, path = dog.state.held["node-2"].ok_since, sim.tmp / "state" / STATE_FILE
    for outage in range(3):
        sim.prom.down = True
        if outage == 2:
            sim.prom.xid("node-3")  # turns bad while nobody can see it
        state, updates = path.read_bytes(), list(sim.slurm.updates)
        for _ in range(2):
            sim.clock.tick()
            assert dog.cycle() is None
        assert path.read_bytes() == state and sim.slurm.updates == updates
        assert metric(dog, "intellect_watchdog_failing", source="prometheus") == 1
        assert metric(dog, "intellect_watchdog_consecutive_failed_cycles") == 2
        sim.prom.down = False
        sim.cycles(dog, 1)
    assert metric(dog, "intellect_watchdog_cycle_errors_total", source="prometheus") == 6
    failed = [line for line in sim.logs if line.startswith("cycle failed: prometheus")]
    back = [line for line in sim.logs if line.startswith("prometheus answers again after 2 failed cycle(s)")]
    assert len(failed) == 3 and "nothing drained or resumed" in failed[0] and len(back) == 3
    assert dog.state.held["node-2"].ok_since == ok_since  # short outages do not restart the repair timer
    assert [sim.slurm.state(n) for n in ("node-2", "node-3", "node-4")] == ["drained", "drained", "idle"]
    assert metric(dog, "intellect_watchdog_failing", source="prometheus") == 0


def test_a_prometheus_outage_longer_than_the_grace_drains_nothing_and_restarts_the_unknown_timer(
    sim: Sim,
) -> None:
    sim.prom.exporter_down("node-4")
    dog = sim.dog(unknown_grace_s=300.0)
    sim.cycles(dog, 1)
    sim.prom.down = True
    sim.cycles(dog, 40)  # 10 minutes without Prometheus
    sim.prom.down = False
    sim.cycles(dog, 20)
    assert sim.slurm.updates == []  # unobserved time is not "unknown for 5 minutes": 285 s since it is back
    sim.cycles(dog, 1)
    assert sim.slurm.state("node-4") == "drained"


def test_the_real_evaluate_against_an_unreachable_prometheus_is_a_failed_cycle(sim: Sim) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = PrometheusClient("http://prom.invalid:9090", transport=httpx.MockTransport(refuse))
    cfg = WatchdogConfig("http://prom.invalid:9090", state_path=sim.tmp / "state" / STATE_FILE)
    dog = Watchdog(cfg, client, clock=sim.clock, log=sim.logs.append)
    for _ in range(30):
        sim.clock.tick(60)
        assert dog.cycle() is None
    assert sim.slurm.updates == [] and len(sim.logs) == 1 and "unreachable" in sim.logs[0]
    assert metric(dog, "intellect_watchdog_cycle_errors_total", source="prometheus") == 30
    assert dog.health()["failing"]["source"] == "prometheus"


def test_flapping_slurm_changes_nothing_and_the_next_cycle_retries(sim: Sim) -> None:
    sim.prom.xid("node-2")
    dog = sim.dog()
    sim.slurm.down = True
    sim.cycles(dog, 5)
    assert sim.prom.calls == 0 and sim.slurm.updates == [] and not (sim.tmp / "state" / STATE_FILE).exists()
    assert [line.split(":")[0:2] for line in sim.logs] == [["cycle failed", " slurm"]]
    assert metric(dog, "intellect_watchdog_cycle_errors_total", source="slurm") == 5
    sim.slurm.down = False
    sim.cycles(dog, 1)
    assert (
        sim.slurm.state("node-2") == "drained"
        and "slurm answers again after 5 failed cycle(s)" in sim.logs[-2]
    )
    assert dog.health() == {"ok": True, "failing": None, "held": ["node-2"]}


# ------------------------------------------------------------------------------------------- pure parts


def test_reason_text_is_one_bounded_printable_line_with_the_token_last() -> None:
    text = reason_text("Xid 79 on GPU 3\nand\x07more " + "x" * 300, "0123456789ab")
    assert len(text) <= 200 and text.isprintable() and token_of(text) == "0123456789ab"
    assert text.startswith("watchdog: Xid 79 on GPU 3 and more x") and "...(wd-token" not in text
    assert token_of("[intellect] a b: watchdog: x") is None


def test_decide_drains_bad_only_never_unknown_within_grace_nor_a_human_drain() -> None:
    slurm = {n: Node(n, "idle", None, None, None, None, 2, 1000) for n in "abd"}
    slurm["c"] = Node("c", "drained", "disk swap -- alice", "alice", "2026-01-01T00:00:00", None, 2, 1000)
    slurm.update({f"x{i}": Node(f"x{i}", "idle", None, None, None, None, 2, 1000) for i in range(8)})
    v = {"a": verdict("a", BAD, "xid", "Xid 79 on GPU 3"), "b": verdict("b", UNKNOWN, "no_data", "no data"),
         "c": verdict("c", BAD, "xid", "Xid 79 on GPU 3"), "d": Verdict("d")}  # fmt: skip
    d = decide(v, slurm, WatchdogState(), T0, WatchdogConfig("http://p:9090"))
    assert list(d.drain) == ["a"] and d.drain["a"].summary == "Xid 79 on GPU 3" and d.resume == []
    assert d.unavailable == {"people": 1, "down": 0, "watchdog": 0} and d.limit == 3


def test_dry_run_logs_what_it_would_do_and_changes_nothing(sim: Sim) -> None:
    sim.prom.xid("node-2")
    dog = sim.dog(dry_run=True)
    sim.cycles(dog, 3)
    assert sim.slurm.updates == [] and dog.state.held == {} and not (sim.tmp / "state" / STATE_FILE).exists()
    assert (
        sum(line.startswith("would drain node-2: watchdog: Xid 79 on GPU 3 (wd-token ") for line in sim.logs)
        == 3
    )


def test_metrics_and_healthz_are_served_and_the_webhook_only_wakes_the_loop(sim: Sim) -> None:
    sim.prom.xid("node-2")
    dog = sim.dog(listen_port=0)
    sim.cycles(dog, 1)
    server = make_server(dog)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        text = httpx.get(base + "/metrics").text
        assert 'intellect_watchdog_drains_total{rule="xid"} 1.0' in text
        assert 'intellect_watchdog_held_back_nodes{why="cap"} 0.0' in text
        assert httpx.get(base + "/healthz").json() == {"ok": True, "failing": None, "held": ["node-2"]}
        payload = {"alerts": [{"labels": {"hostname": "node-3", "alertname": "GpuXidDrainable"}}]}
        assert httpx.post(base + "/alerts", json=payload).status_code == 200
        assert dog.wake.is_set() and sim.slurm.state("node-3") == "idle"  # woken; the next cycle decides
        assert sim.logs[-1] == "alert for node-3: re-evaluating now"
    finally:
        server.shutdown()
        server.server_close()
