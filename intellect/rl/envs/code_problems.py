"""Templated Python function tasks for the built-in ``code`` dataset.

Each generator draws (prompt, assert statements, function name, reference solution); the asserts' expected
values come from running the same logic here, so every task is solvable by its reference.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

CodeProblem = tuple[str, list[str], str, str]


def _prompt(name: str, signature: str, what: str) -> str:
    return f"Write a Python function `{name}({signature})` that {what}. Reply with a ```python code block.\n"


def affine(rng: random.Random) -> CodeProblem:
    k, c = rng.randint(2, 19), rng.randint(-50, 50)
    xs = rng.sample(range(-100, 100), 4)
    tests = [f"assert f({x}) == {k * x + c}" for x in xs]
    solution = f"def f(x):\n    return {k} * x + ({c})\n"
    return _prompt("f", "x", f"returns {k} * x + ({c})"), tests, "f", solution


def count_char(rng: random.Random) -> CodeProblem:
    ch = rng.choice(string.ascii_lowercase)
    words = ["".join(rng.choices(ch + "abcxyz", k=rng.randint(0, 12))) for _ in range(4)]
    tests = [f"assert count_char({w!r}) == {w.count(ch)}" for w in words]
    solution = f"def count_char(s):\n    return s.count({ch!r})\n"
    return (
        _prompt("count_char", "s", f"returns how many times {ch!r} occurs in the string s"),
        tests,
        "count_char",
        solution,
    )


def clip(rng: random.Random) -> CodeProblem:
    lo = rng.randint(-20, 10)
    hi = lo + rng.randint(1, 30)
    xs = [lo - rng.randint(1, 9), hi + rng.randint(1, 9), rng.randint(lo, hi), lo]
    tests = [f"assert clip({x}) == {min(max(x, lo), hi)}" for x in xs]
    solution = f"def clip(x):\n    return min(max(x, {lo}), {hi})\n"
    what = f"returns x limited to the range [{lo}, {hi}]"
    return _prompt("clip", "x", what), tests, "clip", solution


def sum_multiples(rng: random.Random) -> CodeProblem:
    k = rng.randint(2, 13)
    ns = rng.sample(range(0, 300), 4)
    tests = [f"assert sum_multiples({n}) == {sum(i for i in range(n) if i % k == 0)}" for n in ns]
    solution = f"def sum_multiples(n):\n    return sum(i for i in range(n) if i % {k} == 0)\n"
    what = f"returns the sum of the non-negative multiples of {k} that are below n"
    return _prompt("sum_multiples", "n", what), tests, "sum_multiples", solution


def every_nth(rng: random.Random) -> CodeProblem:
    step, start = rng.randint(2, 5), rng.randint(0, 2)
    lists = [rng.sample(range(100), rng.randint(0, 12)) for _ in range(4)]
    tests = [f"assert every_nth({xs}) == {xs[start::step]}" for xs in lists]
    solution = f"def every_nth(xs):\n    return xs[{start}::{step}]\n"
    what = f"returns the list of every {step}th element of the list xs, starting at index {start}"
    return _prompt("every_nth", "xs", what), tests, "every_nth", solution


GENERATORS: tuple[Callable[[random.Random], CodeProblem], ...] = (
    affine,
    count_char,
    clip,
    sum_multiples,
    every_nth,
)
