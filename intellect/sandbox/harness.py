"""Scoring a program against tests without trusting it.

The rule: **the expected answers never enter the sandbox that runs the candidate.** The host sends the
program and each case's input (a stdin, call arguments, the candidate-side expressions of an assert) to the
harness (``_inside.py``), which reports what it observed; the host decodes those observations into plain
builtin values (``_inside.decode``: exact types, nothing of the candidate's survives the trip) and compares
them itself. A forged line, a patched builtin, an always-equal object or an ``os._exit`` can only spoil the
candidate's own observations; to match an expected value it has to produce it, which is solving the task.

Asserts are split on the host (``split_assert``): each outermost call or name rooted in a name the test does
not get from the builtins or the standard library (``f(3)``, ``Solution().twoSum(...)``) is observed in the
sandbox; the rest of the assert is either ``observed == literal``, compared here, or judged in a second,
fresh sandbox where no candidate code ever ran (``__v[i]`` stands for the i-th observation). Asserts whose
candidate calls sit inside a lambda or comprehension cannot be split and are refused when tasks are built.
"""

from __future__ import annotations

import ast
import builtins
import functools
import marshal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intellect.sandbox import _inside
from intellect.sandbox.api import PYTHON, Limits, Request, Result
from intellect.sandbox.pool import SandboxPool

SOURCE = Path(_inside.__file__).read_text()
STARTUP_S = 1.0  # wall time a run gets on top of its tests' budget (start-up, reporting)
OUTPUT_BYTES = 4 << 20
_BUILTINS = frozenset(dir(builtins))
_MODULES = frozenset(sys.stdlib_module_names)
_SCOPED = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.NamedExpr)
_NO_LITERAL = object()


@dataclass(frozen=True)
class Split:
    """One assert: what to observe in the sandbox, and how to judge it."""

    observe: tuple[str, ...]  # expressions evaluated in the candidate's namespace
    expected: Any  # the literal the single observation must equal, or _NO_LITERAL
    residual: str  # the assert's expression over __v[i] (judged when there is no literal)
    modules: tuple[str, ...]  # standard modules the residual names


@dataclass
class Verdict:
    passed: int
    total: int
    outcomes: list[str]  # per case: pass, fail, error, timeout, crash, missing
    observed: Result | None = None
    judged: Result | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return max(0.0, min(1.0, self.passed / self.total)) if self.total else 0.0


def harness_limits(timeout_s: float, base: Limits | None = None) -> Limits:
    base = base or Limits()
    return Limits(
        wall_s=timeout_s + STARTUP_S,
        cpu_s=max(1.0, timeout_s),
        memory_mb=base.memory_mb,
        processes=base.processes,
        file_mb=base.file_mb,
        open_files=base.open_files,
        tmp_mb=base.tmp_mb,
        output_bytes=OUTPUT_BYTES,
    )


def harness_request(limits: Limits, stdin: bytes = b"") -> Request:
    """The harness as a request: what a pool starts ahead (its job comes later on stdin)."""
    return Request(
        [PYTHON, "-I", "-S", "harness.py"], files={"harness.py": SOURCE}, stdin=stdin, limits=limits
    )


# ------------------------------------------------------------------------------------------------ asserts


@functools.lru_cache(maxsize=4096)
def split_assert(test: str) -> Split:
    """Split one ``assert`` statement; ValueError when it is not one, or cannot be judged unforgeably."""
    try:
        tree = ast.parse(test.strip())
    except SyntaxError as exc:
        raise ValueError(f"test {test!r} does not parse: {exc.msg}") from exc
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"test {test!r}: a test must be one assert statement")
    expr = tree.body[0].test
    if any(isinstance(node, _SCOPED) for node in ast.walk(expr)):
        raise ValueError(f"test {test!r}: a lambda or comprehension in an assert cannot be judged outside")
    observed: list[str] = []
    residual = _Observe(observed).visit(expr)
    ast.fix_missing_locations(residual)
    modules = sorted({n.id for n in ast.walk(residual) if isinstance(n, ast.Name) and n.id in _MODULES})
    return Split(
        tuple(observed), _literal_side(residual, len(observed)), ast.unparse(residual), tuple(modules)
    )


def _candidate_root(node: ast.AST) -> bool:
    """Is ``node`` a chain of calls, attributes and subscripts rooted in a name that is the candidate's: not a
    builtin, and not a standard module (unless called directly, ``array(3)``, which no module can be)?"""
    above: ast.AST | None = None
    while True:
        if isinstance(node, ast.Name):
            if node.id in _BUILTINS:
                return False
            return node.id not in _MODULES or isinstance(above, ast.Call)
        if isinstance(node, ast.Call):
            above, node = node, node.func
        elif isinstance(node, ast.Attribute | ast.Subscript):
            above, node = node, node.value
        else:
            return False


class _Observe(ast.NodeTransformer):
    """Replaces each outermost expression rooted in a candidate's name by ``__v[i]``."""

    def __init__(self, observed: list[str]) -> None:
        self.observed = observed

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Call | ast.Attribute | ast.Subscript | ast.Name) and _candidate_root(node):
            self.observed.append(ast.unparse(node))
            index = ast.Constant(len(self.observed) - 1)
            return ast.Subscript(ast.Name("__v", ast.Load()), index, ast.Load())
        return self.generic_visit(node)


def _literal_side(residual: ast.AST, n: int) -> Any:
    """The literal of ``__v[0] == literal`` (either way round) with one observation, else _NO_LITERAL."""
    if n != 1 or not isinstance(residual, ast.Compare) or len(residual.ops) != 1:
        return _NO_LITERAL
    if not isinstance(residual.ops[0], ast.Eq):
        return _NO_LITERAL
    left, right = residual.left, residual.comparators[0]
    other = right if _is_v0(left) else left if _is_v0(right) else None
    if other is None:
        return _NO_LITERAL
    try:
        return ast.literal_eval(other)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO_LITERAL


def _is_v0(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "__v"
        and isinstance(node.slice, ast.Constant)
        and node.slice.value == 0
    )


# ------------------------------------------------------------------------------------------------ checking


def _job(
    code: str, tests: dict[str, Any], timeout_s: float, limits: Limits
) -> tuple[dict[str, Any], list[Any]]:
    """What the sandbox gets (inputs only) and what stays here (one expectation per case)."""
    kind = tests["kind"]
    if kind == "stdio":
        cases = [stdin for stdin, _ in tests["cases"]]
        expect: list[Any] = [_inside.digest(want) for _, want in tests["cases"]]
    elif kind == "call":
        cases = [args for args, _ in tests["cases"]]
        expect = [want for _, want in tests["cases"]]
    elif kind == "asserts":
        splits = [split_assert(t) for t in tests["cases"]]
        cases = [list(s.observe) for s in splits]
        expect = splits
    else:
        raise ValueError(f"unknown kind of tests {kind!r}")
    job = {
        "mode": "observe",
        "kind": "expr" if kind == "asserts" else kind,
        "fn_name": tests.get("fn_name"),
        "code": code,
        "cases": cases,
        "timeout_s": timeout_s,
        "cpu_s": max(1.0, timeout_s),
        "output_bytes": limits.file_mb << 20,  # a stdio case's output: as much as it may write
    }
    return job, expect


def parse_observations(stdout: bytes, n: int) -> list[dict[str, Any] | None]:
    """The first well-formed report for each case (anything else in the stream is ignored)."""
    found: list[dict[str, Any] | None] = [None] * n
    for line in stdout.split(b"\n"):
        try:
            item = _inside.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(item) is not dict:
            continue
        i, status = item.get("i"), item.get("status")
        if type(i) is int and 0 <= i < n and status in _inside.STATUSES and found[i] is None:
            found[i] = item
    return found


def same(got: Any, want: Any) -> bool:
    """A call's result against the expected JSON value: equal, or equal once wrapped in a list (datasets that
    list a single output), or a tuple equal as a list. Both sides are plain builtins here."""
    try:
        return bool(got == want or [got] == want or (type(got) is tuple and list(got) == want))
    except (RecursionError, TypeError, ValueError):
        return False


def _values(item: dict[str, Any], n: int) -> list[Any] | None:
    """The decoded observations of a case, or None when they are not exactly ``n`` valid values."""
    data = item.get("value")
    if type(data) is not list or len(data) != n:
        return None
    try:
        return [_inside.decode(v) for v in data]
    except (ValueError, TypeError, RecursionError, OverflowError):
        return None


def _equal(got: Any, want: Any) -> bool:
    try:
        return bool(got == want)
    except (RecursionError, TypeError, ValueError):
        return False


def check_program(
    pool: SandboxPool, code: str, tests: dict[str, Any], timeout_s: float, limits: Limits | None = None
) -> Verdict:
    """Run ``code`` against ``tests`` (``{"kind": "stdio"|"call"|"asserts", "cases", "fn_name"?}``) and judge
    every case here (and, for asserts that need it, in a fresh sandbox). SandboxError when a sandbox fails."""
    lim = harness_limits(timeout_s, limits)
    job, expect = _job(code, tests, timeout_s, lim)
    stdin = marshal.dumps(job)
    template = pool.template
    if template is not None and template.limits == lim:
        observed = pool.run_template(stdin)
    else:
        observed = pool.run(harness_request(lim, stdin))
    items = parse_observations(observed.stdout, len(expect))
    outcomes: list[str] = []
    pending: list[tuple[int, Split, list[Any]]] = []
    for i, (item, want) in enumerate(zip(items, expect, strict=True)):
        if item is None:
            outcomes.append("missing")
            continue
        if item["status"] != "ok":
            outcomes.append(item["status"])
            continue
        outcomes.append(_judge_here(tests["kind"], item, want, i, pending))
    verdict = Verdict(0, len(expect), outcomes, observed)
    if pending:
        _judge_apart(pool, pending, outcomes, verdict, lim)
    verdict.passed = sum(o == "pass" for o in outcomes)
    return verdict


def _judge_here(
    kind: str, item: dict[str, Any], want: Any, i: int, pending: list[tuple[int, Split, list[Any]]]
) -> str:
    if kind == "stdio":
        value = item.get("value")
        return "pass" if type(value) is str and value == want else "fail"
    if kind == "call":
        values = _values(item, 1)
        return "pass" if values is not None and same(values[0], want) else "fail"
    split: Split = want
    values = _values(item, len(split.observe))
    if values is None:
        return "fail"
    if split.expected is not _NO_LITERAL:
        return "pass" if _equal(values[0], split.expected) else "fail"
    pending.append((i, split, values))
    return "judging"


def _judge_apart(
    pool: SandboxPool,
    pending: list[tuple[int, Split, list[Any]]],
    outcomes: list[str],
    verdict: Verdict,
    lim: Limits,
) -> None:
    """Evaluate the asserts that are not ``observed == literal`` in a sandbox that never ran candidate code."""
    checks = []
    for _, split, values in pending:
        checks.append(
            {"expr": split.residual, "values": [_inside.encode(v) for v in values], "modules": split.modules}
        )
    job = marshal.dumps({"mode": "judge", "checks": checks})
    judged = pool.run(harness_request(lim, job))
    verdict.judged = judged
    answers: list[Any] = []
    for line in judged.stdout.split(b"\n"):
        try:
            item = _inside.loads(line)
        except ValueError:
            continue
        if type(item) is dict and type(item.get("judged")) is list:
            answers = item["judged"]
            break
    if len(answers) != len(pending) or not judged.ok:
        verdict.notes.append(f"judge: {judged.stopped}, {len(answers)} of {len(pending)} answers")
        answers = [False] * len(pending)
    for (i, _, _), ok in zip(pending, answers, strict=True):
        outcomes[i] = "pass" if ok is True else "fail"
