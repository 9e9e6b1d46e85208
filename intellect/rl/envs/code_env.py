"""code: write a small Python function; the reward is the share of the task's asserts that pass.

The completion's last fenced code block (or the whole completion) runs in a fresh ``python -I`` subprocess
with a timeout and memory/CPU limits, never through a shell. This isolates crashes and hangs, not malice: the
checked code could still fake its result, so use a real sandbox for untrusted models at scale.

With no arguments the dataset is built in code from templates; ``path`` loads a local JSONL of
``{"prompt", "tests": [assert statements]}``. A prompt's hash decides its split.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from intellect.rl.envs.base import Task, Turn
from intellect.rl.envs.code_problems import GENERATORS
from intellect.rl.envs.common import DatasetEnv, key_hash

DEFAULT_SIZE = {"train": 300, "eval": 60}
TIMEOUT_S = 5.0
MARKER = "@@intellect-tests@@"
# Runs in the child: limits first, then the candidate code, then each assert in the same namespace.
HARNESS = f"""
import json, resource, sys
data = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
resource.setrlimit(resource.RLIMIT_CPU, ({int(TIMEOUT_S)}, {int(TIMEOUT_S)}))
ns = {{"__name__": "__candidate__"}}
passed = 0
try:
    exec(compile(data["code"], "<candidate>", "exec"), ns)
    for test in data["tests"]:
        try:
            exec(compile(test, "<test>", "exec"), ns)
            passed += 1
        except Exception:
            pass
except BaseException:
    pass
sys.stdout.write("\\n{MARKER}" + json.dumps(passed) + "\\n")
"""


def extract_code(completion: str) -> str:
    blocks = re.findall(r"```(?:python|py)?\n(.*?)```", completion, flags=re.DOTALL)
    return blocks[-1] if blocks else completion


def run_tests(code: str, tests: Sequence[str], timeout: float = TIMEOUT_S) -> int:
    """How many of ``tests`` pass after ``code`` runs, in a subprocess; 0 on a timeout or a crash."""
    payload = json.dumps({"code": code, "tests": list(tests)})
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
    return int(json.loads(lines[-1][len(MARKER) :])) if lines else 0


def tests_passed(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    tests = task.answer
    return run_tests(extract_code(completion), tests) / len(tests)


def defines_function(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    name = task.info.get("function")
    if not name:
        return 1.0 if "def " in extract_code(completion) else 0.0
    return (
        1.0 if re.search(rf"^\s*def {re.escape(name)}\s*\(", extract_code(completion), re.MULTILINE) else 0.0
    )


class Code(DatasetEnv):
    name = "code"
    default_size = DEFAULT_SIZE
    correct_by = "tests_passed"
    rewards = (tests_passed, defines_function)
    fields = "prompt and tests"

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        problem = rng.choice(GENERATORS)(rng)
        return problem[0], _task(*problem)

    def _row(self, item: Any) -> tuple[str, Task | None]:
        prompt, tests = str(item["prompt"]), [str(t) for t in item["tests"]]
        if not tests:
            return prompt, None
        return prompt, _task(prompt, tests, item.get("function"), item.get("solution"))

    def reference(self, task: Task) -> str | None:
        solution = task.info.get("solution")
        return f"```python\n{solution}```" if solution else None


def _task(prompt: str, tests: list[str], function: str | None, solution: str | None) -> Task:
    info = {"function": function, "solution": solution}
    return Task(id=f"code-{key_hash(prompt)}", prompt=prompt, answer=tuple(tests), info=info)
