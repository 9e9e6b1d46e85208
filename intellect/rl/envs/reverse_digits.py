"""reverse-digits: the CPU-learnable task. Prompt ``"3917>"``, answer ``"7193"``, then eos.

Every character is a digit or the separator, all in ``CharTokenizer.chars``. A digit string belongs to train
or eval by its hash, so the splits never share one whatever the seed or size.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from intellect.rl.envs.base import Environment, Rubric, Score, Task, Turn
from intellect.rl.envs.common import check_split, sample_split, verdict

SEPARATOR = ">"
DEFAULT_SIZE = {"train": 5000, "eval": 500}


def exact_match(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    return 1.0 if completion.strip() == task.answer else 0.0


def partial_match(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    """Fraction of positions right, over the longer of answer and completion (so extra characters cost)."""
    pred, gold = completion.strip(), str(task.answer)
    right = sum(a == b for a, b in zip(pred, gold, strict=False))
    return right / max(len(pred), len(gold), 1)


class ReverseDigits(Environment):
    name = "reverse-digits"

    def __init__(
        self,
        min_len: int = 3,
        max_len: int = 5,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        eval_fraction: float = 0.1,
        partial_weight: float = 0.5,
    ) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"reverse-digits: need 1 <= min_len <= max_len (got {min_len}, {max_len})")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"reverse-digits: eval_fraction must be in (0, 1) (got {eval_fraction})")
        super().__init__(min_len=min_len, max_len=max_len, split=check_split(split), size=size, seed=seed)
        self.min_len, self.max_len, self.split = min_len, max_len, split
        self.size, self.seed, self.eval_fraction = size, seed, eval_fraction
        self.rubric = Rubric([(exact_match, 1.0), (partial_match, partial_weight)])
        self._cache: dict[str, list[Task]] = {}

    def tasks(self, split: str | None = None) -> Sequence[Task]:
        """The tasks of ``split`` (default: the ``split`` argument), in a fixed seeded order."""
        split = check_split(split or self.split)
        if split not in self._cache:
            self._cache[split] = self._build(split)
        return self._cache[split]

    def _build(self, split: str) -> list[Task]:
        def draw(rng: random.Random) -> tuple[str, Any]:
            length = rng.randint(self.min_len, self.max_len)
            return "".join(rng.choice("0123456789") for _ in range(length)), None

        pairs = sample_split(
            draw,
            split=split,
            salt=self.name,
            size=self.size or DEFAULT_SIZE[split],
            seed=self.seed,
            eval_fraction=self.eval_fraction,
        )
        return [
            Task(id=f"rd-{digits}", prompt=digits + SEPARATOR, answer=digits[::-1], info={"digits": digits})
            for digits, _ in pairs
        ]

    def reference(self, task: Task) -> str:
        return str(task.answer)

    def score(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> Score:
        return verdict(super().score(task, completion, transcript), "exact_match")
