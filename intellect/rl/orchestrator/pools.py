"""Online difficulty pools and the task sampler.

A task's solve rate is the fraction of correct rollouts in its most recent scored group (recent, because the
policy moves). Above ``difficulty.easy_above`` the task is easy, below ``difficulty.hard_below`` hard, otherwise
normal; tasks never seen count as normal. Prompts come mostly from the normal pool, with ``easy_fraction`` and
``hard_fraction`` of the draws from the other two (when they are not empty). Environments are drawn by weight.
Rescheduled tasks (stale rollouts) are drawn again first.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

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
        u = rng.random()
        if u < self.cfg.easy_fraction and len(self.members(env, "easy")):
            return "easy"
        if u < self.cfg.easy_fraction + self.cfg.hard_fraction and len(self.members(env, "hard")):
            return "hard"
        return "normal"


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
