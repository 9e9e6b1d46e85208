"""python-tool: multi-turn tool use with a Python interpreter in the sandbox. The model may run a program with
``<python>print(2**100 % 97)</python>``; the environment runs it in a fresh sandbox (``intellect.sandbox``) and
answers ``<output>...</output>`` (stdout, or the error's last line) until the model gives
``<answer>N</answer>`` or the turns run out.

Tasks are numeric questions that are tedious by hand and one line in Python (digit sums of large powers,
prime counts, modular powers, Fibonacci numbers modulo m, counting multiples). Reward: the final answer is
right (weight 1) plus a small bonus when the episode ran at least one program and every program ran cleanly.
``Score.correct`` is the answer alone. Each tool call is its own sandbox run: nothing persists between calls.
"""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from annotated_types import Ge, Gt

from intellect.errors import EnvError
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
from intellect.sandbox import (
    PYTHON,
    Limits,
    Request,
    SandboxError,
    SandboxPool,
    SandboxUnavailable,
    make_runner,
)
from intellect.sandbox.pool import sandbox_preflight

log = logging.getLogger(__name__)

DEFAULT_SIZE = {"train": 2000, "eval": 200}
INSTRUCTIONS = (
    "You can run Python: write <python>code</python> and you will get its printed output. "
    "Reply <answer>number</answer> when you know it.\n"
)
ERROR_PREFIX = "<output>error:"
# Reads the program from stdin, then runs it with stdin at EOF: one template, so sandboxes can start ahead.
BOOTSTRAP = (
    "import os\nsrc = b''\nwhile chunk := os.read(0, 65536):\n    src += chunk\n"
    "os.dup2(os.open('/dev/null', os.O_RDONLY), 0)\n"
    "exec(compile(src, 'main.py', 'exec'), {'__name__': '__main__'})\n"
)


SIEVE = (
    "n = {n}\nsieve = bytearray([1]) * n\nsieve[0] = sieve[1] = 0\n"
    "for p in range(2, int(n**0.5) + 1):\n    if sieve[p]:\n"
    "        sieve[p * p :: p] = bytearray(len(range(p * p, n, p)))\nprint(sum(sieve))"
)


def _primes_below(n: int) -> int:
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    for p in range(2, int(n**0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytearray(len(range(p * p, n, p)))
    return sum(sieve)


def _fib_mod(n: int, m: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % m
    return a


Problem = tuple[str, int, str]  # question, answer, a program that prints the answer


def digit_sum(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 9), rng.randint(60, 400)
    return (
        f"What is the sum of the decimal digits of {a}**{b}?",
        sum(map(int, str(a**b))),
        (f"print(sum(map(int, str({a}**{b}))))"),
    )


def prime_count(rng: random.Random) -> Problem:
    n = rng.randint(1000, 60000)
    return f"How many prime numbers are smaller than {n}?", _primes_below(n), SIEVE.format(n=n)


def mod_power(rng: random.Random) -> Problem:
    a, b, m = rng.randint(2, 999), rng.randint(100, 10**6), rng.randint(1000, 99999)
    return f"What is {a}**{b} modulo {m}?", pow(a, b, m), f"print(pow({a}, {b}, {m}))"


def fibonacci(rng: random.Random) -> Problem:
    n, m = rng.randint(100, 5000), rng.randint(1000, 99999)
    program = f"a, b = 0, 1\nfor _ in range({n}):\n    a, b = b, (a + b) % {m}\nprint(a)"
    return f"What is the {n}th Fibonacci number (F0 = 0, F1 = 1) modulo {m}?", _fib_mod(n, m), program


def multiples(rng: random.Random) -> Problem:
    n, a, b = rng.randint(10**4, 10**7), rng.randint(2, 40), rng.randint(2, 40)
    answer = n // a + n // b - n // (a * b // _gcd(a, b))
    program = f"print(sum(1 for k in range(1, {n} + 1) if k % {a} == 0 or k % {b} == 0))"
    return f"How many integers from 1 to {n} are divisible by {a} or by {b}?", answer, program


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


GENERATORS: tuple[Callable[[random.Random], Problem], ...] = (
    digit_sum,
    prime_count,
    mod_power,
    fibonacci,
    multiples,
)


def answer_correct(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    """1 when the last ``<answer>`` of the episode is the task's number."""
    answers = [a for text in assistant_texts(completion, transcript) for a in tag_contents(text, "answer")]
    if not answers:
        return 0.0
    try:
        return 1.0 if int(answers[-1].strip().replace(",", "")) == int(task.answer) else 0.0
    except ValueError:
        return 0.0


def tool_clean(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    """1 when the episode ran at least one program and none failed (read from the environment's own turns)."""
    replies = [t.text for t in transcript if t.role == "tool"]
    return 1.0 if replies and not any(r.startswith(ERROR_PREFIX) for r in replies) else 0.0


class PythonTool(GeneratedEnv):
    name = "python-tool"
    default_size = DEFAULT_SIZE
    correct_by = "answer_correct"
    stop = ["</python>", "</answer>"]

    def __init__(
        self,
        split: Split = "train",
        size: PositiveInt | None = None,
        seed: int = 0,
        max_turns: Annotated[int, Ge(2)] = 4,
        eval_fraction: Fraction01 = 0.1,
        tool_weight: NonNegative = 0.2,
        timeout_s: Annotated[float, Gt(0)] = 5.0,
        output_chars: PositiveInt = 1000,
        memory_mb: PositiveInt = 512,
        sandbox: str = "isolated",
        sandbox_concurrency: PositiveInt = 8,
        sandbox_warm: Annotated[int, Ge(0)] = 2,
    ) -> None:
        """``timeout_s``, ``memory_mb``: each program's limits; ``output_chars``: the most of its output the
        model sees; ``sandbox``, ``sandbox_concurrency``, ``sandbox_warm``: as for the code environment."""
        super().__init__(split=split, size=size, seed=seed, eval_fraction=eval_fraction, max_turns=max_turns)
        self.max_turns = max_turns
        self.output_chars = output_chars
        self.rubric = Rubric([(answer_correct, 1.0), (tool_clean, tool_weight)])
        runner = make_runner(sandbox)
        try:
            runner.check()
        except SandboxUnavailable as exc:
            raise EnvError(
                f"python-tool: {exc}",
                hint="install bubblewrap and allow user namespaces, or set args.sandbox: unisolated",
            ) from exc
        limits = Limits(
            wall_s=timeout_s, cpu_s=timeout_s, memory_mb=memory_mb, processes=8, output_bytes=64 << 10
        )
        template = Request([PYTHON, "-I", "-S", "-c", BOOTSTRAP], limits=limits)
        self.pool = SandboxPool(runner, sandbox_concurrency, sandbox_warm, template=template)
        self.workers = sandbox_concurrency  # one scoring thread per sandbox the pool may run at once
        weakref.finalize(self, self.pool.close)
        self.sandbox_errors = 0

    @classmethod
    def preflight(cls, args: dict[str, Any], role: str) -> list[str]:
        return super().preflight(args, role) + sandbox_preflight(args.get("sandbox", "isolated"), cls.name)

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        question, answer, program = rng.choice(GENERATORS)(rng)
        prompt = f"{question} {INSTRUCTIONS}"
        return question, Task(
            id=f"py-{question}", prompt=prompt, answer=str(answer), info={"program": program}
        )

    def run_program(self, code: str) -> str:
        """The tool's reply for ``code``: ``<output>stdout</output>``, or ``<output>error: ...</output>``."""
        try:
            result = self.pool.run_template(code.encode())
        except SandboxError as exc:
            self.sandbox_errors += 1
            log.warning("python-tool: the sandbox failed: %s", exc)
            return f"{ERROR_PREFIX} the sandbox failed</output>"
        out = result.stdout.decode("utf-8", "replace")
        if not result.ok:
            lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
            why = lines[-1] if lines else f"stopped: {result.stopped}"
            if result.stopped != "exit":
                why = f"stopped: {result.stopped}"
            return f"{ERROR_PREFIX} {why[: self.output_chars]}</output>"
        return f"<output>{out[: self.output_chars]}</output>"

    def respond(self, task: Task, transcript: Sequence[Turn]) -> str | None:
        """The output of the last turn's program; None after an answer, no program, or the last turn."""
        turns = [t for t in transcript if t.role == "assistant"]
        if not turns or transcript[-1].role != "assistant" or len(turns) >= self.max_turns:
            return None
        last = turns[-1].text
        calls = tag_contents(last, "python")
        if tag_contents(last, "answer") or not calls:
            return None
        return self.run_program(calls[-1])

    def gold_turns(self, task: Task) -> list[Turn]:
        """A correct episode: one program, its output, the answer (for tests and demonstrations)."""
        call = f"<python>{task.info['program']}</python>"
        return [
            Turn("assistant", call),
            Turn("tool", self.run_program(task.info["program"])),
            Turn("assistant", f"<answer>{task.answer}</answer>"),
        ]
