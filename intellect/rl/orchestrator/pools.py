"""Online difficulty pools and the task sampler.

A task's solve rate is the fraction of correct rollouts in its most recent scored group (recent, because the
policy moves). Above ``difficulty.easy_above`` the task is easy, below ``difficulty.hard_below`` hard, otherwise
normal; tasks never seen count as normal. Environments are drawn by weight; then ``easy_fraction`` of the draws
come from the easy pool and ``hard_fraction`` from the hard pool, the rest from the normal pool. An empty easy or
hard pool gives its share to the normal pool (never to the other one), so neither pool is drawn from more often
than configured. Rescheduled tasks (dropped rollouts, groups in flight at a resume) are drawn again first.

Both keep a JSON-able state (``state`` / ``restore``), saved with every batch (``intellect.rl.orchestrator.state``):
the pools hold each seen task's pool, easy and hard in the order of their sets (a random choice depends on it);
the sampler its RNG state and reschedule queue. Restored into fresh objects, they draw what the saved ones would.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from intellect.rl.orchestrator.state import rng_state, rng_tuple

if TYPE_CHECKING:
    from intellect.recipe import Difficulty
    from intellect.rl.envs.base import Task

T = TypeVar("T")
POOLS = ("easy", "normal", "hard")


class IndexedSet(Generic[T]):
    """A set with O(1) add, remove and uniform random choice."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._where: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._where

    def add(self, item: T) -> None:
        if item not in self._where:
            self._where[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: T) -> None:
        i = self._where.pop(item, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._where[last] = i

    def choice(self, rng: random.Random) -> T:
        return self._items[rng.randrange(len(self._items))]

    def items(self) -> list[T]:
        """The members in their internal order (``choice`` depends on it; adding them in order rebuilds it)."""
        return list(self._items)


def classify(solve_rate: float, easy_above: float, hard_below: float) -> str:
    """The pool of a task with this solve rate."""
    if solve_rate > easy_above:
        return "easy"
    if solve_rate < hard_below:
        return "hard"
    return "normal"


class DifficultyPools:
    """Per-environment easy/hard sets of task indices, fed by observed solve rates."""

    def __init__(self, difficulty: Difficulty) -> None:
        self.cfg = difficulty
        self._pool: dict[tuple[str, int], str] = {}
        self._sets: dict[tuple[str, str], IndexedSet[int]] = {}

    def members(self, env: str, pool: str) -> IndexedSet[int]:
        return self._sets.setdefault((env, pool), IndexedSet())

    def pool_of(self, env: str, index: int) -> str:
        return self._pool.get((env, index), "normal")

    def record(self, env: str, index: int, solve_rate: float) -> str:
        """Move a task to the pool its latest solve rate puts it in; return that pool."""
        new = classify(solve_rate, self.cfg.easy_above, self.cfg.hard_below)
        old = self._pool.get((env, index))
        if old is not None and old != "normal":
            self.members(env, old).discard(index)
        self._pool[(env, index)] = new
        if new != "normal":
            self.members(env, new).add(index)
        return new

    def counts(self) -> dict[str, int]:
        """Tasks seen per pool (unseen tasks are not counted)."""
        out = dict.fromkeys(POOLS, 0)
        for pool in self._pool.values():
            out[pool] += 1
        return out

    def pick_pool(self, env: str, rng: random.Random) -> str:
        """easy with ``easy_fraction``, hard with ``hard_fraction`` (what is left when they add up past 1),
        normal otherwise; an empty easy or hard pool's share goes to normal."""
        u = rng.random()
        if u < self.cfg.easy_fraction:
            return "easy" if len(self.members(env, "easy")) else "normal"
        if u < self.cfg.easy_fraction + self.cfg.hard_fraction:
            return "hard" if len(self.members(env, "hard")) else "normal"
        return "normal"

    def state(self) -> dict[str, dict[str, list[int]]]:
        """``{env: {"easy": [...], "normal": [...], "hard": [...]}}``: every seen task's index under its pool,
        easy and hard in their sets' order, normal ascending."""
        out: dict[str, dict[str, list[int]]] = {}
        for (env, index), pool in self._pool.items():
            out.setdefault(env, {p: [] for p in POOLS})
            if pool == "normal":
                out[env]["normal"].append(index)
        for env, pools in out.items():
            pools["normal"].sort()
            for pool in ("easy", "hard"):
                pools[pool] = self.members(env, pool).items()
        return out

    def restore(self, data: dict[str, dict[str, list[int]]], envs: Iterable[str] | None = None) -> None:
        """Replace the pools with a saved ``state()`` (only the environments in ``envs``, when given)."""
        keep = None if envs is None else set(envs)
        self._pool.clear()
        self._sets.clear()
        for env, pools in data.items():
            if keep is not None and env not in keep:
                continue
            for pool in POOLS:
                for index in pools.get(pool, []):
                    self._pool[(env, int(index))] = pool
                    if pool != "normal":
                        self.members(env, pool).add(int(index))


@dataclass(frozen=True)
class Draw:
    env: str
    index: int
    task: Task
    pool: str


class TaskSampler:
    """Draws (environment, task) pairs: environment by weight, then pool, then a task of that pool."""

    def __init__(
        self,
        envs: Sequence[tuple[str, Sequence[Task], float]],
        pools: DifficultyPools,
        rng: random.Random | None = None,
        max_tries: int = 64,
    ) -> None:
        if not envs:
            raise ValueError("the task sampler needs at least one environment")
        self.tasks = {name: list(tasks) for name, tasks, _ in envs}
        for name, tasks in self.tasks.items():
            if not tasks:
                raise ValueError(f"environment {name!r} has no training task")
        self.names = [name for name, _, _ in envs]
        self.weights = [float(w) for _, _, w in envs]
        self.pools = pools
        self.rng = rng or random.Random(0)
        self.max_tries = max_tries
        self._again: deque[Draw] = deque()

    def reschedule(self, draw: Draw) -> None:
        self._again.append(draw)

    def state(self, also_again: Sequence[Draw] = ()) -> dict[str, Any]:
        """The RNG state, the reschedule queue followed by ``also_again`` (draws to make again after a resume),
        and the task count per environment (to notice a data set that changed)."""
        return {
            "rng": rng_state(self.rng.getstate()),
            "again": [[d.env, d.index, d.pool] for d in [*self._again, *also_again]],
            "tasks": {name: len(tasks) for name, tasks in self.tasks.items()},
        }

    def restore(self, data: dict[str, Any]) -> list[str]:
        """Take a saved ``state()``: the RNG state and the queue. Returns the environments whose saved task
        count matches this session's (their pools are meaningful); queued draws of others are left out."""
        self.rng.setstate(rng_tuple(data["rng"]))
        counts = data.get("tasks", {})
        same = [name for name, tasks in self.tasks.items() if counts.get(name) == len(tasks)]
        self._again = deque(
            Draw(env, int(index), self.tasks[env][int(index)], str(pool))
            for env, index, pool in data.get("again", [])
            if env in same
        )
        return same

    def next(self) -> Draw:
        if self._again:
            return self._again.popleft()
        env = self.rng.choices(self.names, weights=self.weights)[0]
        pool = self.pools.pick_pool(env, self.rng)
        tasks = self.tasks[env]
        if pool != "normal":
            index = self.pools.members(env, pool).choice(self.rng)
            return Draw(env, index, tasks[index], pool)
        index = self._normal_index(env, len(tasks))
        return Draw(env, index, tasks[index], self.pools.pool_of(env, index))

    def _normal_index(self, env: str, n: int) -> int:
        """A uniform draw among the tasks not easy or hard (rejection sampling, bounded; then any task)."""
        index = self.rng.randrange(n)
        for _ in range(self.max_tries):
            if self.pools.pool_of(env, index) == "normal":
                return index
            index = self.rng.randrange(n)
        return index
