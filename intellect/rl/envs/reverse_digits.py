"""reverse-digits: the CPU-learnable task. Prompt ``"3917>"``, answer ``"7193"``, then eos.

Every character is a digit or the separator, all in ``CharTokenizer.chars``. A digit string belongs to train
or eval by its hash, so the splits never share one whatever the seed or size.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from intellect.rl.envs.base import ArgProblem, Rubric, Task, Turn
from intellect.rl.envs.common import Fraction01, GeneratedEnv, NonNegative, PositiveInt, Split

SEPARATOR = ">"
DEFAULT_SIZE = {"train": 5000, "eval": 500}


def exact_match(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    return 1.0 if completion.strip() == task.answer else 0.0


def partial_match(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    """Fraction of positions right, over the longer of answer and completion (so extra characters cost)."""
    pred, gold = completion.strip(), str(task.answer)
    right = sum(a == b for a, b in zip(pred, gold, strict=False))
    return right / max(len(pred), len(gold), 1)


class ReverseDigits(GeneratedEnv):
    name = "reverse-digits"
    default_size = DEFAULT_SIZE
    correct_by = "exact_match"

    def __init__(
        self,
        min_len: PositiveInt = 3,
        max_len: PositiveInt = 5,
        split: Split = "train",
        size: PositiveInt | None = None,
        seed: int = 0,
        eval_fraction: Fraction01 = 0.1,
        partial_weight: NonNegative = 0.5,
    ) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"reverse-digits: need 1 <= min_len <= max_len (got {min_len}, {max_len})")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"reverse-digits: eval_fraction must be in (0, 1) (got {eval_fraction})")
        super().__init__(
            min_len=min_len, max_len=max_len, split=split, size=size, seed=seed, eval_fraction=eval_fraction
        )
        self.min_len, self.max_len = min_len, max_len
        self.rubric = Rubric([(exact_match, 1.0), (partial_match, partial_weight)])

    @classmethod
    def preflight(cls, args: dict[str, Any], role: str) -> list[str]:
        if args["min_len"] > args["max_len"]:
            raise ArgProblem("max_len", f"must be ≥ min_len {args['min_len']} (got {args['max_len']})")
        if not 0 < args["eval_fraction"] < 1:
            raise ArgProblem(
                "eval_fraction", f"must lie strictly between 0 and 1 (got {args['eval_fraction']})"
            )
        return super().preflight(args, role)

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        length = rng.randint(self.min_len, self.max_len)
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        return digits, Task(
            id=f"rd-{digits}", prompt=digits + SEPARATOR, answer=digits[::-1], info={"digits": digits}
        )

    def reference(self, task: Task) -> str:
        return str(task.answer)
