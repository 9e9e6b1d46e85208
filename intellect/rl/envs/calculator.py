"""calculator: multi-turn tool use. The model may call ``<calc>12*(3+4)</calc>``; the environment answers
``<result>84</result>`` (computed by ``safe_calc``, never ``eval``) until the model gives
``<answer>84</answer>`` or the turns run out.

Reward: the final answer is right (weight 1) plus a small bonus when the episode's tool calls are all well
formed (at least one). ``Score.correct`` is the answer alone. Every character stays in ``CharTokenizer.chars``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from fractions import Fraction
from typing import Annotated

from annotated_types import Ge

from intellect.rl.envs.base import Rubric, Task, Turn
from intellect.rl.envs.common import (
    Fraction01,
    GeneratedEnv,
    NonNegative,
    PositiveInt,
    Split,
    assistant_texts,
    tag_contents,
)
from intellect.rl.envs.safe_calc import CalcError, evaluate, format_number

DEFAULT_SIZE = {"train": 2000, "eval": 200}
INSTRUCTIONS = "Use <calc>expression</calc> to compute, then reply <answer>number</answer>.\n"
TEMPLATES = (
    "{a}*{b}+{c}",
    "{a}*{b}-{c}",
    "({a}+{b})*{c}",
    "{a}*({b}-{c})",
    "({a}-{b})*({c}+{d})",
    "{a}*{b}*{d}",
)


def answer_correct(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    """1 when the last ``<answer>`` of the episode equals the task's value."""
    answers = [a for text in assistant_texts(completion, transcript) for a in tag_contents(text, "answer")]
    if not answers:
        return 0.0
    try:
        return 1.0 if Fraction(answers[-1].strip()) == Fraction(task.answer) else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0


def tool_format(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    """1 when the episode made at least one tool call and every call was a valid expression."""
    calls = [c for text in assistant_texts(completion, transcript) for c in tag_contents(text, "calc")]
    if not calls:
        return 0.0
    try:
        for call in calls:
            evaluate(call)
    except CalcError:
        return 0.0
    return 1.0


def tool_reply(call: str) -> str:
    try:
        return f"<result>{format_number(evaluate(call))}</result>"
    except CalcError as exc:
        return f"<result>error: {exc}</result>"


class Calculator(GeneratedEnv):
    name = "calculator"
    default_size = DEFAULT_SIZE
    correct_by = "answer_correct"
    stop = ["</calc>", "</answer>"]

    def __init__(
        self,
        split: Split = "train",
        size: PositiveInt | None = None,
        seed: int = 0,
        max_turns: Annotated[int, Ge(2)] = 4,
        eval_fraction: Fraction01 = 0.1,
        tool_weight: NonNegative = 0.2,
    ) -> None:
        if max_turns < 2:
            raise ValueError(
                f"calculator: max_turns must be >= 2 for a tool call and an answer (got {max_turns})"
            )
        super().__init__(split=split, size=size, seed=seed, eval_fraction=eval_fraction, max_turns=max_turns)
        self.max_turns = max_turns
        self.rubric = Rubric([(answer_correct, 1.0), (tool_format, tool_weight)])

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        expr, value = _expression(rng)
        return expr, _task(expr, value)

    def respond(self, task: Task, transcript: Sequence[Turn]) -> str | None:
        """``<result>...</result>`` for the last turn's tool call; None after an answer, no call, or the last
        allowed turn."""
        turns = [t for t in transcript if t.role == "assistant"]
        if not turns or transcript[-1].role != "assistant" or len(turns) >= self.max_turns:
            return None
        last = turns[-1].text
        calls = tag_contents(last, "calc")
        if tag_contents(last, "answer") or not calls:
            return None
        return tool_reply(calls[-1])

    def gold_turns(self, task: Task) -> list[Turn]:
        """A correct episode: one tool call, its result, the answer (for tests and demonstrations)."""
        call = task.info["expression"]
        return [
            Turn("assistant", f"<calc>{call}</calc>"),
            Turn("tool", tool_reply(call)),
            Turn("assistant", f"<answer>{task.answer}</answer>"),
        ]


def _expression(rng: random.Random) -> tuple[str, Fraction]:
    template = rng.choice(TEMPLATES)
    small = "d" in template and "c" not in template  # a*b*d: keep the product readable
    nums = {k: rng.randint(2, 99 if small else 999) for k in "abcd"}
    expr = template.format(**nums)
    return expr, evaluate(expr)


def _task(expr: str, value: Fraction) -> Task:
    prompt = f"What is {expr}? {INSTRUCTIONS}"
    return Task(id=f"calc-{expr}", prompt=prompt, answer=format_number(value), info={"expression": expr})
