"""Difficulty pools: the draw shares when a pool is empty, and the state saved with every batch (pools, sampler
RNG, reschedule queue) restored into fresh objects. A resumed run on the fake server:
``tests/test_orchestrator.py::test_resume_restores_pools_counters_and_redraws_groups_in_flight``."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from intellect.errors import RunError
from intellect.recipe import Difficulty
from intellect.rl.envs.base import Task
from intellect.rl.orchestrator.pools import POOLS, DifficultyPools, TaskSampler
from intellect.rl.orchestrator.state import VERSION, OrchestratorState
from intellect.rl.orchestrator.telemetry import Counts

DRAWS = 20_000  # binomial sd of a 0.10 share: 0.002; the tolerance below is 5 sd


def _tasks(n: int, prefix: str = "t") -> list[Task]:
    return [Task(id=f"{prefix}{i}", prompt=str(i), answer=None) for i in range(n)]


def _shares(pools: DifficultyPools, seed: int) -> dict[str, float]:
    sampler = TaskSampler([("a", _tasks(100), 1.0)], pools, random.Random(seed))
    drawn = Counter(sampler.next().pool for _ in range(DRAWS))
    return {pool: drawn[pool] / DRAWS for pool in POOLS}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("empty", ["easy", "hard"])
def test_an_empty_pool_gives_its_share_to_normal_not_to_the_other_pool(empty: str, seed: int) -> None:
    pools = DifficultyPools(Difficulty(easy_fraction=0.1, hard_fraction=0.1))
    other = "hard" if empty == "easy" else "easy"
    for i in range(10):
        pools.record("a", i, 0.0 if other == "hard" else 1.0)
    shares = _shares(pools, seed)
    assert shares[empty] == 0.0
    assert shares[other] == pytest.approx(0.10, abs=0.01)  # not 0.20: the empty pool's share is not its
    assert shares["normal"] == pytest.approx(0.90, abs=0.01)


def test_shares_follow_the_fractions_when_both_pools_have_tasks() -> None:
    pools = DifficultyPools(Difficulty(easy_fraction=0.15, hard_fraction=0.05))
    for i in range(10):
        pools.record("a", i, 1.0)
        pools.record("a", 10 + i, 0.0)
    shares = _shares(pools, 3)
    assert shares["easy"] == pytest.approx(0.15, abs=0.01)
    assert shares["hard"] == pytest.approx(0.05, abs=0.01)
    assert shares["normal"] == pytest.approx(0.80, abs=0.01)
    assert _shares(DifficultyPools(Difficulty(easy_fraction=0.4, hard_fraction=0.4)), 3)["normal"] == 1.0


def _played(seed: int = 7) -> tuple[DifficultyPools, TaskSampler, list[Task], list[Task]]:
    """Pools and a sampler after a few hundred groups whose solve rates moved tasks between the pools."""
    a, b = _tasks(50, "a"), _tasks(30, "b")
    pools = DifficultyPools(Difficulty(easy_fraction=0.2, hard_fraction=0.3))
    sampler = TaskSampler([("a", a, 2.0), ("b", b, 1.0)], pools, random.Random(seed))
    rates = random.Random(1)
    for _ in range(300):
        draw = sampler.next()
        pools.record(draw.env, draw.index, rates.choice([0.0, 0.5, 1.0]))
    return pools, sampler, a, b


def _fresh(a: list[Task], b: list[Task]) -> tuple[DifficultyPools, TaskSampler]:
    pools = DifficultyPools(Difficulty(easy_fraction=0.2, hard_fraction=0.3))
    return pools, TaskSampler([("a", a, 2.0), ("b", b, 1.0)], pools, random.Random(12345))


def _through_json(data: Any) -> Any:
    return json.loads(json.dumps(data))


def test_state_round_trip_rebuilds_the_pools_and_the_sampler_draws_what_it_would_have() -> None:
    pools, sampler, a, b = _played()
    in_flight = [sampler.next() for _ in range(3)]  # started, not finished when the batch was saved
    dropped = sampler.next()
    sampler.reschedule(dropped)  # waiting in the queue
    saved = _through_json({"pools": pools.state(), "sampler": sampler.state(also_again=in_flight)})

    pools2, sampler2 = _fresh(a, b)
    assert sampler2.restore(saved["sampler"]) == ["a", "b"]
    pools2.restore(saved["pools"])
    assert pools2.counts() == pools.counts() and sum(pools.counts().values()) > 20
    for env, n in (("a", 50), ("b", 30)):
        assert [pools2.pool_of(env, i) for i in range(n)] == [pools.pool_of(env, i) for i in range(n)]
        for pool in ("easy", "hard"):
            assert pools2.members(env, pool).items() == pools.members(env, pool).items()  # same order

    # the queue first, then the groups that were in flight, then exactly the uninterrupted sampler's draws
    assert [sampler2.next() for _ in range(4)] == [dropped, *in_flight]
    assert sampler.next() == dropped
    rates = random.Random(2)
    for _ in range(500):
        one, two = sampler.next(), sampler2.next()
        assert one == two
        rate = rates.choice([0.0, 0.5, 1.0])  # the pools keep moving, the same way in both
        pools.record(one.env, one.index, rate)
        pools2.record(two.env, two.index, rate)


def test_an_environment_whose_task_count_changed_is_not_restored() -> None:
    pools, sampler, a, b = _played()
    in_flight = [sampler.next() for _ in range(20)]
    assert {d.env for d in in_flight} == {"a", "b"}
    saved = _through_json({"pools": pools.state(), "sampler": sampler.state(also_again=in_flight)})
    pools2 = DifficultyPools(Difficulty(easy_fraction=0.2, hard_fraction=0.3))
    sampler2 = TaskSampler([("a", a, 2.0), ("b", b[:10], 1.0)], pools2, random.Random(0))
    same = sampler2.restore(saved["sampler"])
    pools2.restore(saved["pools"], envs=same)
    assert same == ["a"]
    assert [sampler2.next() for _ in range(sum(d.env == "a" for d in in_flight))] == [
        d for d in in_flight if d.env == "a"
    ]
    assert all(pools2.pool_of("b", i) == "normal" for i in range(10))
    assert len(pools2.members("b", "easy")) == len(pools2.members("b", "hard")) == 0
    assert [pools2.pool_of("a", i) for i in range(50)] == [pools.pool_of("a", i) for i in range(50)]


def test_orchestrator_state_json_round_trip_and_version_check() -> None:
    pools, sampler, _, _ = _played()
    counts = Counts(dropped_stale=1, dropped_off_policy=2, groups_started=40, tokens=999)
    state = OrchestratorState(
        batch=3,
        seq=40,
        counts=counts.to_json(),
        pools=pools.state(),
        sampler=sampler.state(),
        control_rng=[3, list(random.Random(5).getstate()[1]), None],
    )
    data = _through_json(state.to_json())
    assert data["version"] == VERSION and data["batch"] == 3
    back = OrchestratorState.from_json(data)
    assert back == state and Counts.from_json(back.counts) == counts
    assert Counts.from_json({"tokens": 5, "from_a_newer_writer": 1}) == Counts(tokens=5)
    with pytest.raises(RunError, match="version 2"):
        OrchestratorState.from_json({**data, "version": 2}, "x/orchestrator.json")
    with pytest.raises(RunError, match="malformed"):
        OrchestratorState.from_json({k: v for k, v in data.items() if k != "pools"})
