"""The async bound (max_async_level) and the off-policy bound (max_off_policy_steps): verdicts, the drop counters
and where they are reported. The end-to-end check (no trained rollout spans more updates than allowed) is
``tests/test_orchestrator.py::test_rollouts_spanning_too_many_updates_are_never_trained``."""

from __future__ import annotations

from pathlib import Path

import pytest

from intellect.rl.envs.base import Task
from intellect.rl.orchestrator.bound import Verdict, judge, judge_group, min_weight_step, span
from intellect.rl.orchestrator.loop import Finished
from intellect.rl.orchestrator.pools import Draw
from intellect.rl.orchestrator.rollout import SampleResult, finalize_group
from intellect.rl.orchestrator.summary import summarize
from intellect.rl.orchestrator.telemetry import Counts, Telemetry, progress_line, step_record
from tests.unit.test_orchestrator_units import _orchestrator  # the same unit orchestrator, one copy


@pytest.mark.parametrize(
    ("steps", "k", "off", "verdict"),
    [
        ((9, 9), 2, 0, Verdict.ACCEPT),  # batch 10 on weights 9: on-policy
        ((7, 7), 2, 0, Verdict.ACCEPT),  # the oldest weights k=2 allows (10-1-2)
        ((6, 6), 2, 8, Verdict.BEYOND_ASYNC),  # older than N-1-k, whatever max_off_policy_steps
        ((6, 9), 2, 8, Verdict.BEYOND_ASYNC),
        ((8, 9), 2, 0, Verdict.OFF_POLICY),  # one update mid-generation, none allowed
        ((8, 9), 2, 1, Verdict.ACCEPT),
        ((7, 9), 2, 1, Verdict.OFF_POLICY),  # two updates, one allowed
        ((7, 9), 2, 2, Verdict.ACCEPT),
        ((7, 9), 2, 5, Verdict.ACCEPT),  # above k the off-policy bound cannot bind
    ],
)
def test_judge_batch_10(steps: tuple[int, int], k: int, off: int, verdict: Verdict) -> None:
    assert judge(steps, 10, k, off) is verdict


def test_a_group_takes_the_worst_verdict_of_its_samples() -> None:
    assert judge_group([(9, 9), (8, 9), (9, 9)], 10, 1, 1) is Verdict.ACCEPT
    assert judge_group([(9, 9), (8, 9), (9, 9)], 10, 1, 0) is Verdict.OFF_POLICY
    assert judge_group([(8, 9), (7, 7)], 10, 1, 0) is Verdict.BEYOND_ASYNC  # the async bound comes first
    assert judge_group([], 10, 1, 0) is Verdict.ACCEPT


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_within_the_async_bound_a_span_never_exceeds_k(k: int) -> None:
    """first >= N-1-k and last <= N-1: max_off_policy_steps >= k accepts everything the async bound does."""
    for batch in range(1, 12):
        lowest = min_weight_step(batch, k)
        for first in range(lowest, batch):
            for last in range(first, batch):
                assert span((first, last)) <= k
                assert judge((first, last), batch, k, k) is Verdict.ACCEPT
                assert judge((first, last), batch, k, k + 3) is Verdict.ACCEPT


def _result(reward: float, first: int, last: int) -> SampleResult:
    r = SampleResult([1, 5], [6, 7, 2], [-0.1, -0.2, -0.3], [1, 1, 1], first=first, last=last)
    r.reward = reward
    return r


def test_keep_drops_groups_spanning_too_many_updates_and_reschedules_them(tmp_path: Path) -> None:
    orch = _orchestrator(tmp_path, max_async_level=2, max_off_policy_steps=0)
    draw = Draw("coin-flip", 2, Task(id="t2", prompt="2", answer=None), "normal")
    hit = [_result(1.0, 3, 3), _result(0.0, 3, 4)]  # batch 5 (weights >= 2): one sample saw an update
    assert orch.keep(Finished("g1", 5, draw, hit), finalize_group("g1", "e", "t", hit)) is None
    assert orch.counts.dropped_off_policy == 1 and orch.counts.dropped_stale == 0
    assert orch.sampler.next() == draw  # its task is drawn again
    old = [_result(1.0, 1, 1), _result(0.0, 2, 2)]  # weights 1 < 5-1-2
    assert orch.keep(Finished("g2", 5, draw, old), finalize_group("g2", "e", "t", old)) is None
    assert orch.counts.dropped_stale == 1 and orch.counts.dropped_off_policy == 1
    steady = [_result(1.0, 2, 2), _result(0.0, 4, 4)]
    assert orch.keep(Finished("g3", 5, draw, steady), finalize_group("g3", "e", "t", steady)) is not None


def test_dropped_off_policy_is_in_the_record_progress_line_prometheus_and_summary() -> None:
    samples = finalize_group("g", "e", "t", [_result(1.0, 2, 2), _result(0.0, 2, 2)]).samples
    delta = Counts(dropped_stale=1, dropped_off_policy=3, tokens=10)
    record = step_record(3, samples, [1.0, 0.0], [0.5], delta, 1.0, {"easy": 0, "normal": 2, "hard": 0})
    assert record["dropped_off_policy"] == 3 and record["dropped_stale"] == 1
    assert "off-policy 3" in progress_line(record, 5)
    telemetry = Telemetry()
    telemetry.observe(record, inflight=0)
    telemetry.observe({**record, "dropped_off_policy": 2}, inflight=0)
    got = telemetry.registry.get_sample_value(
        "intellect_orchestrator_dropped_groups_total", {"reason": "off_policy"}
    )
    assert got == 5.0
    steps = [{**record, "kind": "step", "step": n, "reward_mean": 0.5} for n in (1, 2)]
    assert summarize(steps, 2, None, 1.0)["dropped_off_policy"] == 6
