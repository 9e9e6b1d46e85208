"""Templated math problems for the built-in ``math`` dataset: each generator draws one (question, exact answer)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from fractions import Fraction

Problem = tuple[str, Fraction]


def arithmetic(rng: random.Random) -> Problem:
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 999)
    form = rng.randrange(3)
    if form == 0:
        return f"What is {a} * {b} + {c}?", Fraction(a * b + c)
    if form == 1:
        return f"What is {c} - {a} * {b}?", Fraction(c - a * b)
    return f"What is ({a} + {c}) * {b}?", Fraction((a + c) * b)


def fractions(rng: random.Random) -> Problem:
    x = Fraction(rng.randint(1, 9), rng.randint(2, 12))
    y = Fraction(rng.randint(1, 9), rng.randint(2, 12))
    op = rng.choice("+-*")
    value = {"+": x + y, "-": x - y, "*": x * y}[op]
    return (
        f"Compute {x.numerator}/{x.denominator} {op} {y.numerator}/{y.denominator}. "
        "Give the answer as a fraction.",
        value,
    )


def linear(rng: random.Random) -> Problem:
    a = rng.choice([n for n in range(-9, 10) if n not in (0, 1)])
    b, c = rng.randint(-50, 50), rng.randint(-50, 50)
    lhs = f"{a}x {'+' if b >= 0 else '-'} {abs(b)}"
    return f"Solve for x: {lhs} = {c}.", Fraction(c - b, a)


def percent(rng: random.Random) -> Problem:
    p, n = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75, 150]), rng.randint(4, 400)
    return f"What is {p}% of {n}?", Fraction(p * n, 100)


def power(rng: random.Random) -> Problem:
    base, exp = rng.randint(2, 12), rng.randint(2, 5)
    return f"What is {base}^{exp}?", Fraction(base**exp)


def gcd_lcm(rng: random.Random) -> Problem:
    k = rng.randint(2, 12)
    a, b = k * rng.randint(2, 20), k * rng.randint(2, 20)
    if rng.random() < 0.5:
        return f"What is the greatest common divisor of {a} and {b}?", Fraction(math.gcd(a, b))
    return f"What is the least common multiple of {a} and {b}?", Fraction(math.lcm(a, b))


def arithmetic_series(rng: random.Random) -> Problem:
    first, step, count = rng.randint(1, 20), rng.randint(1, 9), rng.randint(5, 40)
    last = first + step * (count - 1)
    return (
        f"What is the sum {first} + {first + step} + ... + {last}, where each term is {step} more than the last?",
        Fraction(count * (first + last), 2),
    )


GENERATORS: tuple[Callable[[random.Random], Problem], ...] = (
    arithmetic,
    fractions,
    linear,
    percent,
    power,
    gcd_lcm,
    arithmetic_series,
)
