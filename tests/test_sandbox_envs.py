"""The environments on the sandbox: the code harness's three kinds of tests judged outside the sandbox (stdio,
call, asserts, with the judge for asserts that are not ``observed == literal``), partial credit under a time
limit, and the python-tool environment whose tool runs in a sandbox of its own."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest

from intellect.recipe import EnvSpec
from intellect.rl.envs import make_env
from intellect.rl.envs.base import Turn
from intellect.rl.envs.code_env import normalise_tests
from intellect.rl.envs.python_tool import PythonTool
from intellect.sandbox import BwrapRunner, SandboxPool, SandboxUnavailable
from intellect.sandbox.harness import check_program


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    runner = BwrapRunner()
    try:
        runner.check()
    except SandboxUnavailable as exc:
        pytest.skip(f"this host cannot isolate: {exc}")
    yield SandboxPool(runner, size=4)


SUM = normalise_tests({"inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"]})


def test_stdio_cases_compare_tokens_and_ignore_debug_output(pool: SandboxPool) -> None:
    ok = "import sys\na, b = map(int, input().split())\nprint('debug', a, b, file=sys.stderr)\nprint(a + b)"
    assert check_program(pool, ok, SUM, 5.0).outcomes == ["pass"] * 3
    noisy = "import sys\nsys.stderr.write('x' * (8 << 20))\na, b = map(int, input().split())\nprint(a + b)"
    assert check_program(pool, noisy, SUM, 5.0).passed == 3  # megabytes of stderr do not stop the run
    partial = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"
    assert check_program(pool, partial, SUM, 5.0).outcomes == ["pass", "fail", "pass"]
    assert check_program(pool, "raise ValueError", SUM, 5.0).outcomes == ["error"] * 3
    assert check_program(pool, "def broken(:", SUM, 5.0).outcomes == ["error"] * 3


def test_call_cases_accept_a_function_or_a_solution_method(pool: SandboxPool) -> None:
    tests = normalise_tests(
        {"inputs": [[[2, 7, 11], 9], [[3, 2, 4], 6]], "outputs": [[0, 1], [1, 2]], "fn_name": "two"}
    )
    body = textwrap.dedent(
        """
        seen = {}
        for i, x in enumerate(nums):
            if t - x in seen:
                return (seen[t - x], i)
            seen[x] = i
        """
    )
    function = "def two(nums, t):\n" + textwrap.indent(body, "    ")
    method = "class Solution:\n    def two(self, nums, t):\n" + textwrap.indent(body, "        ")
    assert check_program(pool, function, tests, 5.0).passed == 2  # a tuple equals its list
    assert check_program(pool, method, tests, 5.0).passed == 2
    assert check_program(pool, "def other(): pass", tests, 5.0).outcomes == ["error"] * 2


def test_asserts_beyond_a_literal_go_to_a_judge_that_never_ran_the_candidate(pool: SandboxPool) -> None:
    tests = normalise_tests(
        [
            "assert abs(area(2) - 12.566) < 0.01",
            "assert sorted(keys()) == ['a', 'b']",
            "assert isinstance(area(1), float) and math.isclose(area(1), math.pi)",
            "assert area(0) == 0",
        ]
    )
    right = "import math\ndef area(r):\n    return math.pi * r * r\ndef keys():\n    return {'b': 1, 'a': 2}"
    verdict = check_program(pool, right, tests, 5.0)
    assert verdict.outcomes == ["pass"] * 4 and verdict.judged is not None and verdict.judged.ok
    liar = (
        "class Liar(float):\n    __lt__ = __eq__ = lambda s, o: True\n    __sub__ = lambda s, o: s\n"
        "    __abs__ = lambda s: s\n    __hash__ = float.__hash__\n"
        "def area(r):\n    return Liar(-1.0)\ndef keys():\n    return ['z']"
    )
    assert check_program(pool, liar, tests, 5.0).outcomes == ["fail"] * 4  # judged on the plain float -1.0


def test_a_slow_case_costs_only_itself_and_the_time_it_used(pool: SandboxPool) -> None:
    tests = normalise_tests(["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"])
    program = "def f(x):\n    while x == 2:\n        pass\n    return x"
    assert check_program(pool, program, tests, 1.0).outcomes == ["pass", "timeout", "timeout"]


# ------------------------------------------------------------------------------------------------ python-tool


@pytest.fixture(scope="module")
def tool(pool: SandboxPool) -> Iterator[PythonTool]:
    env = make_env(EnvSpec.model_validate({"name": "python-tool", "args": {"size": 20, "timeout_s": 2.0}}))
    assert isinstance(env, PythonTool)
    yield env
    env.pool.close()


def test_python_tool_episodes_run_their_programs_in_the_sandbox(tool: PythonTool) -> None:
    for task in tool.tasks()[:5]:
        turns = tool.gold_turns(task)
        assert turns[1].text == f"<output>{task.answer}\n</output>"
        score = tool.score(task, turns[-1].text, turns)
        assert score.correct and score.reward == 1.0
    task = tool.tasks()[0]
    wrong = [Turn("assistant", "<answer>-1</answer>")]
    assert tool.score(task, wrong[-1].text, wrong).reward == 0.0


def test_python_tool_replies_errors_and_keeps_the_host_out(tool: PythonTool) -> None:
    task = tool.tasks()[0]
    ask = [Turn("assistant", "<python>print(open('/etc/shadow').read())</python>")]
    reply = tool.respond(task, ask)
    assert (
        reply
        == "<output>error: FileNotFoundError: [Errno 2] No such file or directory: '/etc/shadow'</output>"
    )
    # an endless loop meets the wall limit or the CPU limit first, as the machine's load decides: either stops it
    assert tool.run_program("while True:\n    pass") in (
        "<output>error: stopped: timeout</output>",
        "<output>error: stopped: cpu</output>",
    )
    assert tool.run_program("print('x' * 5000)") == f"<output>{'x' * 1000}</output>"
    assert tool.respond(task, [Turn("assistant", "<answer>3</answer>")]) is None
    assert tool.respond(task, [Turn("assistant", "no tool call")]) is None
    call, out = Turn("assistant", "<python>print(1)</python>"), Turn("tool", "<output>1\n</output>")
    assert tool.respond(task, [call, out, call]) == "<output>1\n</output>"
    assert tool.respond(task, [call, out, call, out, call, out, call]) is None  # max_turns (4) reached
    failed = [
        Turn("assistant", "<python>1/0</python>"),
        Turn("tool", "<output>error: ZeroDivisionError</output>"),
    ]
    answer = [*failed, Turn("assistant", f"<answer>{task.answer}</answer>")]
    assert tool.score(task, answer[-1].text, answer).components == {"answer_correct": 1.0, "tool_clean": 0.0}
