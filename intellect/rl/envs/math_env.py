"""math: questions whose answer goes in ``\\boxed{}``, checked by math-verify.

With no arguments the dataset is built in code (arithmetic, fractions, linear equations, percentages, powers,
gcd/lcm) with exact answers from Python; ``path`` loads a local JSONL of ``{"question", "answer"}`` instead.
Either way a question's hash decides its split, so train and eval never share one.

Reward: math-verify equivalence of the last boxed answer with the gold one (weight 1) plus a small format term
(the completion has a non-empty box). math-verify is imported on first use (it pulls in sympy).
"""

from __future__ import annotations

import functools
import json
import random
import threading
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from intellect.rl.envs.base import Rubric, Score, Task, Turn
from intellect.rl.envs.common import DatasetEnv, key_hash, sample_split, split_of, verdict
from intellect.rl.envs.math_problems import GENERATORS

DEFAULT_SIZE = {"train": 500, "eval": 100}
SUFFIX = "\nPut the final answer in \\boxed{}."
MAX_ANSWER_CHARS = 300  # longer boxed answers are wrong, not parsed (sympy time grows fast)


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (braces matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def _timeout() -> int | None:
    # math-verify's timeout uses SIGALRM, which only works on the main thread; elsewhere answers are bounded
    # by MAX_ANSWER_CHARS instead.
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse(answer: str) -> Any:
    from math_verify import parse

    return parse(f"${answer}$", parsing_timeout=_timeout())  # type: ignore[arg-type]


def equivalent(gold: str, pred: str) -> bool:
    """math-verify equivalence of two answers written as LaTeX or plain math (``1/2`` vs ``0.5``)."""
    from math_verify import verify

    if len(pred) > MAX_ANSWER_CHARS:
        return False
    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()))


def boxed_correct(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    pred = last_boxed(completion)
    return 1.0 if pred is not None and equivalent(str(task.answer), pred) else 0.0


def boxed_format(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    pred = last_boxed(completion)
    return 1.0 if pred is not None and pred.strip() else 0.0


class Math(DatasetEnv):
    name = "math"

    def __init__(
        self,
        path: str | None = None,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        eval_fraction: float = 0.15,
        format_weight: float = 0.1,
    ) -> None:
        super().__init__(path=path, split=split, size=size, seed=seed, eval_fraction=eval_fraction)
        self.rubric = Rubric([(boxed_correct, 1.0), (boxed_format, format_weight)])

    def _generate(self, split: str) -> list[Task]:
        def draw(rng: random.Random) -> tuple[str, Any]:
            question, answer = rng.choice(GENERATORS)(rng)
            return question, _answer_text(answer)

        size = self.size or DEFAULT_SIZE[split]
        pairs = sample_split(
            draw, split=split, salt=self.name, size=size, seed=self.seed, eval_fraction=self.eval_fraction
        )
        return [_task(q, str(a)) for q, a in pairs]

    def _load(self, split: str) -> list[Task]:
        assert self.path is not None
        rows: dict[str, str] = {}
        with Path(self.path).open() as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    q, a = str(item["question"]), str(item["answer"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"{self.path}:{line_no}: need a JSON object with question and answer"
                    ) from exc
                if split_of(q, self.name, self.eval_fraction) == split:
                    rows.setdefault(q, a)
        items = [_task(q, a) for q, a in rows.items()]
        return items[: self.size] if self.size else items

    def reference(self, task: Task) -> str:
        return f"\\boxed{{{task.answer}}}"

    def score(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> Score:
        return verdict(super().score(task, completion, transcript), "boxed_correct")


def _task(question: str, answer: str) -> Task:
    return Task(
        id=f"math-{key_hash(question)}", prompt=question + SUFFIX, answer=answer, info={"question": question}
    )


def _answer_text(value: Fraction | int) -> str:
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
