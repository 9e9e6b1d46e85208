"""math: questions whose answer goes in ``\\boxed{}``, checked by math-verify.

With no ``dataset`` the tasks are built in code (arithmetic, fractions, linear equations, percentages, powers,
gcd/lcm) with exact answers from Python. ``dataset`` reads rows with ``question`` and ``answer`` columns instead
(the schema of the ``math`` subset of ``PrimeIntellect/INTELLECT-3-RL``, whose ``avg@8_qwen3_4b_instruct_2507``
column is the solve rate to filter on); ``columns`` maps other names (AIME sets call it ``problem``). Either way
a question's hash decides its split, so train and eval never share one.

Reward: math-verify equivalence of the last boxed answer with the gold one (weight 1) plus a small format term
(the completion has a non-empty box). math-verify is imported on first use (it pulls in sympy).
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, ClassVar

from intellect.rl.envs.base import Task, Turn
from intellect.rl.envs.common import DatasetEnv, key_hash
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


class BoxedAnswerEnv(DatasetEnv):
    """Questions answered in ``\\boxed{}`` (math, science): dataset rows of ``question`` and ``answer``, the
    reference completion is the boxed gold answer. Subclasses set ``id_prefix``, the rewards and ``_draw``."""

    fields = {"question": "question", "answer": "answer"}
    requires = (("math_verify", "rl"),)
    id_prefix: ClassVar[str]

    def _row(self, item: dict[str, Any]) -> tuple[str, Task]:
        question, answer = str(item["question"]), str(item["answer"])
        return question, self._task(question, answer)

    def reference(self, task: Task) -> str:
        return f"\\boxed{{{task.answer}}}"

    def _task(self, question: str, answer: str, prompt: str | None = None) -> Task:
        """``prompt`` (default: the question) asks for a box; the question alone is the task's key."""
        return Task(
            id=f"{self.id_prefix}-{key_hash(prompt or question)}",
            prompt=(prompt or question) + SUFFIX,
            answer=answer,
            info={"question": question},
        )


class Math(BoxedAnswerEnv):
    name = "math"
    default_size = DEFAULT_SIZE
    correct_by = "boxed_correct"
    rewards = (boxed_correct, boxed_format)
    id_prefix = "math"

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        question, answer = rng.choice(GENERATORS)(rng)
        return question, self._task(question, _answer_text(answer))


def _answer_text(value: Fraction | int) -> str:
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
