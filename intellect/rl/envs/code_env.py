"""code: write a Python program; the reward is the share of the task's tests that pass.

Tests come in two forms:
- **asserts**: a list of ``assert`` statements run after the candidate's code, in its namespace (the built-in
  templated tasks, and rows ``{"question", "tests": [...]}`` read with ``columns: {tests: tests}``);
- **input/output cases**, the schema of the ``code`` subset of ``PrimeIntellect/INTELLECT-3-RL``: its ``info``
  column is a JSON object whose ``tests`` is (JSON of) ``{"inputs": [...], "outputs": [...], "fn_name": ...}``.
  Without ``fn_name`` each input is the program's stdin and its stdout must match the output token for token;
  with ``fn_name`` each input holds the call's arguments and the return value must equal the output (a
  top-level function, or a method of ``class Solution``).

The completion's last fenced code block (or the whole completion) runs in a fresh ``python -I`` subprocess
with a timeout and memory/CPU limits, never through a shell. This isolates crashes and hangs, not malice: the
checked code could still fake its result; the sandbox is a separate piece of work.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Annotated, Any

from annotated_types import Gt

from intellect.rl.envs.base import Task, Turn
from intellect.rl.envs.code_problems import GENERATORS
from intellect.rl.envs.common import DatasetEnv, PositiveInt, key_hash

DEFAULT_SIZE = {"train": 300, "eval": 60}
TIMEOUT_S = 5.0
MARKER = "@@intellect-tests@@"
# Runs in the child: limits first, then the candidate code, then each test. For stdio cases the program runs
# once per case as __main__ with that case's stdin; for call cases it is defined once and called per case.
HARNESS = f"""
import io, json, resource, sys
data = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
cpu = max(1, int(data["timeout"]))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
real_out = sys.stdout
passed = 0
def define():
    ns = {{"__name__": "__candidate__"}}
    exec(compile(data["code"], "<candidate>", "exec"), ns)
    return ns
def same(got, want):
    return got == want or [got] == want or (isinstance(got, tuple) and list(got) == want)
try:
    tests = data["tests"]
    if tests["kind"] == "asserts":
        ns = define()
        for test in tests["cases"]:
            try:
                exec(compile(test, "<test>", "exec"), ns)
                passed += 1
            except Exception:
                pass
    elif tests["kind"] == "call":
        ns = define()
        fn = ns.get(tests["fn_name"])
        if fn is None and "Solution" in ns:
            fn = getattr(ns["Solution"](), tests["fn_name"], None)
        for args, want in tests["cases"]:
            try:
                passed += same(fn(*args), want)
            except Exception:
                pass
    else:
        code = compile(data["code"], "<candidate>", "exec")
        for stdin, want in tests["cases"]:
            raw = io.BytesIO()
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
            sys.stdout = out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
            try:
                exec(code, {{"__name__": "__main__"}})
            except SystemExit:
                pass
            except Exception:
                continue
            finally:
                sys.stdout = real_out
            out.flush()
            passed += raw.getvalue().decode("utf-8", "replace").split() == want.split()
except BaseException:
    pass
real_out.write("\\n{MARKER}" + json.dumps(passed) + "\\n")
"""


def extract_code(completion: str) -> str:
    blocks = re.findall(r"```(?:python|py)?\n(.*?)```", completion, flags=re.DOTALL)
    return blocks[-1] if blocks else completion


def normalise_tests(tests: Any, max_tests: int | None = None) -> dict[str, Any]:
    """A task's tests as ``{"kind": "asserts"|"stdio"|"call", "cases": [...], "fn_name"?}``.

    Accepts a list of assert statements, an INTELLECT-3-RL ``info`` object (or its JSON text) holding ``tests``,
    or the ``{"inputs", "outputs", "fn_name"}`` object itself. Raises ValueError on anything else."""
    if isinstance(tests, str):
        tests = json.loads(tests)
    if isinstance(tests, list | tuple):
        if not all(isinstance(t, str) for t in tests):
            raise ValueError("a list of tests must hold assert statements (strings)")
        return {"kind": "asserts", "cases": list(tests)[:max_tests]}
    if not isinstance(tests, dict):
        raise ValueError(
            f"tests must be a list of asserts or an object with inputs/outputs, got {type(tests)}"
        )
    if "tests" in tests and "inputs" not in tests:
        return normalise_tests(tests["tests"], max_tests)
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise ValueError("tests need equally long 'inputs' and 'outputs' lists")
    pairs = list(zip(inputs, outputs, strict=True))[:max_tests]
    fn_name = tests.get("fn_name")
    if fn_name:
        cases = [[_call_args(i), _json_value(o)] for i, o in pairs]
        return {"kind": "call", "fn_name": str(fn_name), "cases": cases}
    return {"kind": "stdio", "cases": [[_text(i), _text(o)] for i, o in pairs]}


def _call_args(value: Any) -> list[Any]:
    """Call arguments: a list is the arguments; a string holds one JSON value per line (LiveCodeBench)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [json.loads(line) for line in value.splitlines() if line.strip()]
    return [value]


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _text(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else "\n".join(map(str, value))
        if isinstance(value, list)
        else str(value)
    )


def run_tests(code: str, tests: Sequence[str] | dict[str, Any], timeout: float = TIMEOUT_S) -> int:
    """How many of ``tests`` pass for ``code``, in a subprocess; 0 on a timeout or a crash."""
    spec = tests if isinstance(tests, dict) else normalise_tests(list(tests))
    payload = json.dumps({"code": code, "tests": spec, "timeout": timeout})
    with tempfile.TemporaryDirectory(prefix="intellect-code-") as tmp:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", HARNESS],
                input=payload,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
            )
        except subprocess.TimeoutExpired:
            return 0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    try:
        passed = int(json.loads(lines[-1][len(MARKER) :])) if lines else 0
    except (ValueError, TypeError):  # the candidate printed a malformed marker of its own
        return 0
    return max(0, min(passed, len(spec["cases"])))  # a forged count never scores above every test


def tests_passed(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    spec = task.answer
    timeout = float(task.info.get("timeout", TIMEOUT_S))
    return run_tests(extract_code(completion), spec, timeout) / max(len(spec["cases"]), 1)


def defines_function(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    name = task.info.get("function")
    code = extract_code(completion)
    if not name:
        return 1.0 if code.strip() and "```" not in code else 0.0
    return 1.0 if re.search(rf"^\s*def {re.escape(name)}\s*\(", code, re.MULTILINE) else 0.0


class Code(DatasetEnv):
    name = "code"
    default_size = DEFAULT_SIZE
    correct_by = "tests_passed"
    rewards = (tests_passed, defines_function)
    fields = {"question": "question", "tests": "info"}

    def __init__(
        self,
        max_tests: PositiveInt = 15,
        timeout_s: Annotated[float, Gt(0)] = TIMEOUT_S,
        instruction: str = "Solve the programming task below in a Python markdown code block.",
        **data: Any,
    ) -> None:
        """``data``: the dataset arguments of DatasetEnv (checked from its signature)."""
        self.max_tests, self.timeout_s, self.instruction = max_tests, timeout_s, instruction
        super().__init__(**data)

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        prompt, tests, function, solution = rng.choice(GENERATORS)(rng)
        return prompt, self._task(prompt, normalise_tests(tests), function, solution)

    def _row(self, item: dict[str, Any]) -> tuple[str, Task | None]:
        question = str(item["question"])
        spec = normalise_tests(item["tests"], self.max_tests)
        if not spec["cases"]:
            return question, None
        prompt = f"{self.instruction}\n\n{question}" if self.instruction else question
        return question, self._task(prompt, spec, spec.get("fn_name"), item.get("solution"))

    def _task(self, prompt: str, spec: dict[str, Any], function: str | None, solution: str | None) -> Task:
        info = {"function": function, "solution": solution, "timeout": self.timeout_s}
        return Task(id=f"code-{key_hash(prompt)}", prompt=prompt, answer=spec, info=info)

    def reference(self, task: Task) -> str | None:
        solution = task.info.get("solution")
        return f"```python\n{solution}```" if solution else None
