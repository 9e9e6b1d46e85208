"""Safe arithmetic for the calculator tool: ``ast`` parsing, numbers and + - * / ** ( ) only, never ``eval``.

Values are exact ``Fraction`` s. Sizes are bounded before any work is done: the expression's length and node
count, each exponent, and the magnitude of every intermediate result, so ``9**9**9`` fails fast.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from fractions import Fraction

MAX_CHARS = 200
MAX_NODES = 100
MAX_EXPONENT = 100
MAX_BITS = 400  # about 1e120: any intermediate numerator or denominator above this is refused

_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class CalcError(ValueError):
    """The expression is not plain bounded arithmetic, or it cannot be computed."""


def evaluate(expr: str) -> Fraction:
    """The exact value of an arithmetic expression; raises CalcError for anything else."""
    expr = expr.strip().replace("^", "**")
    if not expr:
        raise CalcError("empty expression")
    if len(expr) > MAX_CHARS:
        raise CalcError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise CalcError("not an arithmetic expression") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError(f"more than {MAX_NODES} syntax nodes")
    return _eval(tree.body)


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        return _number(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _bounded(_power(left, right))
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalcError(f"operator {type(node.op).__name__} is not allowed")
        if op is operator.truediv and right == 0:
            raise CalcError("division by zero")
        return _bounded(op(left, right))
    raise CalcError(f"{type(node).__name__} is not allowed")


def _number(value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalcError(f"constant {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalcError("number out of range")
    return _bounded(Fraction(repr(value)) if isinstance(value, float) else Fraction(value))


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise CalcError("only whole-number exponents are allowed")
    exp = exponent.numerator
    if abs(exp) > MAX_EXPONENT:
        raise CalcError(f"exponent above {MAX_EXPONENT}")
    if base == 0 and exp < 0:
        raise CalcError("division by zero")
    size = max(base.numerator.bit_length(), base.denominator.bit_length())
    if size * abs(exp) > MAX_BITS:
        raise CalcError("result too large")
    return base**exp


def _bounded(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise CalcError("result too large")
    return value


def format_number(value: Fraction) -> str:
    """An integer as digits; anything else as a decimal with up to 12 significant digits."""
    if value.denominator == 1:
        return str(value.numerator)
    return format(float(value), ".12g")
