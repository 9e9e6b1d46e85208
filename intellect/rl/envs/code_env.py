"""code: write a Python program; the reward is the share of the task's tests that pass.

Tests come in two forms:
- **asserts**: a list of ``assert`` statements about the candidate's functions (the built-in templated tasks,
  and rows ``{"question", "tests": [...]}`` read with ``columns: {tests: tests}``); the candidate-side calls
  of each run in its namespace, the rest of the assert outside (see ``intellect.sandbox.harness``);
- **input/output cases**, the schema of the ``code`` subset of ``PrimeIntellect/INTELLECT-3-RL``: its ``info``
  column is a JSON object whose ``tests`` is (JSON of) ``{"inputs": [...], "outputs": [...], "fn_name": ...}``.
  Without ``fn_name`` each input is the program's stdin and its stdout must match the output token for token;
  with ``fn_name`` each input holds the call's arguments and the return value must equal the output (a
  top-level function, or a method of ``class Solution``).

The completion's last fenced code block (or the whole completion) runs in the sandbox (``intellect.sandbox``):
bubblewrap by default (``sandbox: isolated``; a site's own runner by its name in the ``intellect.sandboxes``
entry point group), at most ``sandbox_concurrency`` programs at once, with ``sandbox_warm`` sandboxes started
ahead while the model generates. A host that cannot isolate fails the role at start, unless the recipe asks
for ``sandbox: unisolated`` (no isolation; a warning at launch and in the role's log).

Scoring never trusts the program (``intellect.sandbox.harness``): the expected outputs and values never enter
its sandbox; the harness there reports what it observed, and the verdict is computed here on decoded plain
values, so forged output, patched builtins or an always-equal object score 0, and a reward stays in [0, 1].
A sandbox that fails to run is a reward error (the sample is masked and counted), not a score of 0.
"""

from __future__ import annotations

import functools
import json
import random
import re
import weakref
from collections.abc import Sequence
from typing import Annotated, Any

from annotated_types import Ge, Gt

from intellect.errors import EnvError
from intellect.rl.envs.base import Task, Turn
from intellect.rl.envs.code_problems import GENERATORS
from intellect.rl.envs.common import DatasetEnv, PositiveInt, key_hash
from intellect.sandbox import Limits, SandboxPool, SandboxUnavailable, make_runner
from intellect.sandbox.harness import check_program, harness_limits, harness_request, split_assert
from intellect.sandbox.pool import sandbox_preflight

DEFAULT_SIZE = {"train": 300, "eval": 60}
TIMEOUT_S = 5.0


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
        cases = list(tests)[:max_tests]
        for test in cases:
            split_assert(test)  # ValueError for a test that cannot be judged outside the sandbox
        return {"kind": "asserts", "cases": cases}
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


@functools.cache
def default_pool() -> SandboxPool:
    """The isolated pool that module-level ``run_tests`` uses (SandboxUnavailable when the host cannot isolate)."""
    runner = make_runner("isolated")
    runner.check()
    return SandboxPool(runner, size=8)


def run_tests(
    code: str,
    tests: Sequence[str] | dict[str, Any],
    timeout: float = TIMEOUT_S,
    pool: SandboxPool | None = None,
) -> int:
    """How many of ``tests`` pass for ``code``, judged outside its sandbox; 0 on a timeout or a crash."""
    spec = tests if isinstance(tests, dict) else normalise_tests(list(tests))
    return check_program(pool or default_pool(), code, spec, timeout).passed


def tests_passed(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    """The share of the task's tests that pass, in the default isolated pool."""
    timeout = float(task.info.get("timeout", TIMEOUT_S))
    return check_program(default_pool(), extract_code(completion), task.answer, timeout).fraction


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
    rewards = (tests_passed, defines_function)  # tests_passed is replaced by the method on this env's pool
    fields = {"question": "question", "tests": "info"}

    def __init__(
        self,
        max_tests: PositiveInt = 15,
        timeout_s: Annotated[float, Gt(0)] = TIMEOUT_S,
        instruction: str = "Solve the programming task below in a Python markdown code block.",
        sandbox: str = "isolated",
        sandbox_concurrency: PositiveInt = 8,
        sandbox_warm: Annotated[int, Ge(0)] = 4,
        memory_mb: PositiveInt = 1024,
        **data: Any,
    ) -> None:
        """``sandbox``: ``isolated`` (bubblewrap), ``unisolated`` (none: the program can reach this host), or a
        site's runner (``intellect.sandboxes``); ``sandbox_concurrency``: programs run at once; ``sandbox_warm``:
        sandboxes started ahead; ``memory_mb``: each program's memory (per process under rlimits). ``data``:
        the dataset arguments of DatasetEnv (checked from its signature)."""
        self.max_tests, self.timeout_s, self.instruction = max_tests, timeout_s, instruction
        super().__init__(**data)
        runner = make_runner(sandbox)
        try:
            runner.check()
        except SandboxUnavailable as exc:
            raise EnvError(
                f"code: {exc}",
                hint="install bubblewrap and allow user namespaces, or set args.sandbox: unisolated to run "
                "model-written code without isolation",
            ) from exc
        # processes bounds the run's memory too under rlimits (memory_mb is per process): 8 leaves room for a
        # thread or two (the deep-recursion idiom) next to the harness and the case being run
        self.limits = Limits(memory_mb=memory_mb, processes=8)
        template = harness_request(harness_limits(timeout_s, self.limits))
        self.pool = SandboxPool(runner, sandbox_concurrency, sandbox_warm, template=template)
        self.workers = sandbox_concurrency  # one scoring thread per sandbox the pool may run at once
        weakref.finalize(self, self.pool.close)
        self.rubric.funcs[0] = (self.tests_passed, self.rubric.funcs[0][1])

    @classmethod
    def preflight(cls, args: dict[str, Any], role: str) -> list[str]:
        return super().preflight(args, role) + sandbox_preflight(args.get("sandbox", "isolated"), cls.name)

    def tests_passed(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
        """The share of the task's tests the completion's program passes (in [0, 1])."""
        timeout = float(task.info.get("timeout", self.timeout_s))
        verdict = check_program(self.pool, extract_code(completion), task.answer, timeout, self.limits)
        return verdict.fraction

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
