"""science: single-turn science questions whose answer is a value or the letter of a choice, in ``\\boxed{}``.

Scoring, in order: math-verify equivalence of the last boxed answer with the gold one; then, when the gold answer
is a choice letter (A-J), an exact match of the letter the completion gives (``\\boxed{B}``, ``(B)``,
``Answer: B``). With no ``dataset`` the tasks are built in code (kinematics, Newton's second law, density, molar
mass, Ohm's law, as values or as four choices); ``dataset`` reads rows with ``question`` and ``answer`` columns,
the schema of the ``science`` subset of ``PrimeIntellect/INTELLECT-3-RL`` (solve rate in
``avg@8_qwen3_4b_instruct_2507``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from fractions import Fraction

from intellect.rl.envs.base import Task, Turn
from intellect.rl.envs.math_env import BoxedAnswerEnv, boxed_format, equivalent, last_boxed

DEFAULT_SIZE = {"train": 500, "eval": 100}
LETTERS = "ABCDEFGHIJ"
_LETTER_PATTERNS = (
    r"\\boxed\{\s*\(?([A-J])\)?\s*\}",
    r"[Aa]nswer\s*(?:is|:)?\s*\(?([A-J])\)?\b",
    r"^\s*\(?([A-J])\)?[.)]?\s*$",
)

Problem = tuple[str, Fraction, str]  # question, value, unit


def kinematics(rng: random.Random) -> Problem:
    d, t = rng.randint(2, 90) * 10, rng.randint(2, 12)
    return (
        f"A train covers {d} km in {t} hours at constant speed. What is its speed in km/h?",
        Fraction(d, t),
        "km/h",
    )


def newton(rng: random.Random) -> Problem:
    m, a = rng.randint(2, 60), rng.randint(1, 12)
    return f"What net force in newtons accelerates a {m} kg mass at {a} m/s^2?", Fraction(m * a), "N"


def density(rng: random.Random) -> Problem:
    v, rho = rng.randint(2, 40), rng.choice([1, 2, 3, 7, 8, 11, 19])
    return (
        f"A block of volume {v} cm^3 has a mass of {v * rho} g. What is its density in g/cm^3?",
        Fraction(rho),
        "g/cm^3",
    )


def moles(rng: random.Random) -> Problem:
    name, molar = rng.choice([("water", 18), ("methane", 16), ("carbon dioxide", 44), ("oxygen gas", 32)])
    n = rng.randint(1, 20)
    return f"How many moles are in {n * molar} g of {name} (molar mass {molar} g/mol)?", Fraction(n), "mol"


def ohm(rng: random.Random) -> Problem:
    r, i = rng.randint(2, 50), rng.randint(1, 10)
    return (
        f"A current of {i} A flows through a {r} ohm resistor. What is the voltage across it in volts?",
        Fraction(r * i),
        "V",
    )


GENERATORS: tuple[Callable[[random.Random], Problem], ...] = (kinematics, newton, density, moles, ohm)


def _number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def chosen_letter(text: str) -> str | None:
    """The choice letter a completion commits to, from its last box, an 'Answer: X', or a bare letter."""
    for pattern in _LETTER_PATTERNS:
        found = re.findall(pattern, text, flags=re.MULTILINE)
        if found:
            return str(found[-1]).upper()
    return None


def science_correct(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    gold = str(task.answer).strip()
    pred = last_boxed(completion)
    if pred is not None and equivalent(gold, pred):
        return 1.0
    if len(gold) == 1 and gold.upper() in LETTERS:
        return 1.0 if chosen_letter(completion) == gold.upper() else 0.0
    return 0.0


class Science(BoxedAnswerEnv):
    name = "science"
    default_size = DEFAULT_SIZE
    correct_by = "science_correct"
    rewards = (science_correct, boxed_format)
    id_prefix = "sci"

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        question, value, unit = rng.choice(GENERATORS)(rng)
        if rng.random() < 0.5:
            return question, self._task(question, _number(value))
        wrong = {value + d for d in (-2, -1, 1, 2, 3) if value + d > 0}
        choices = [value, *rng.sample(sorted(wrong), 3)]
        rng.shuffle(choices)
        listed = "\n".join(f"({LETTERS[i]}) {_number(c)} {unit}" for i, c in enumerate(choices))
        return question, self._task(question, LETTERS[choices.index(value)], f"{question}\n{listed}")
