"""Environments: datasets, parsers, rubrics, the calculator tool, the registry."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from fractions import Fraction

import pytest

from intellect.recipe import EnvSpec
from intellect.rl.envs import SpecProblem, available, make_env, register
from intellect.rl.envs.base import Rubric, Task, Turn
from intellect.rl.envs.calculator import Calculator
from intellect.rl.envs.code_env import Code, run_tests
from intellect.rl.envs.common import tag_contents
from intellect.rl.envs.data import DataError
from intellect.rl.envs.math_env import Math, equivalent, last_boxed
from intellect.rl.envs.reverse_digits import ReverseDigits
from intellect.rl.envs.safe_calc import CalcError, evaluate, format_number


def spec(name: str, args: dict[str, object] | None = None) -> EnvSpec:
    return EnvSpec.model_validate({"name": name, "args": args or {}})


# ------------------------------------------------------------------------------------------------ registry


def test_registry_builds_each_env_from_a_spec() -> None:
    assert {"reverse-digits", "math", "calculator", "code", "science", "logic"} <= set(available())
    env = make_env(spec("reverse-digits", {"min_len": 3, "max_len": 5, "split": "eval"}))
    assert isinstance(env, ReverseDigits)
    assert env.tasks() is env.tasks("eval")


def test_registry_rejects_unknown_name_and_args() -> None:
    with pytest.raises(SpecProblem, match=r"unknown environment 'nope'; known: .*reverse-digits") as exc:
        make_env(spec("nope"))
    assert exc.value.field == "name"
    with pytest.raises(SpecProblem, match=r"unknown environment 'maths'; did you mean 'math'\?"):
        make_env(spec("maths"))
    with pytest.raises(SpecProblem, match=r"unknown argument; allowed: .*min_len") as exc:
        make_env(spec("reverse-digits", {"lenght": 3}))
    assert exc.value.field == "args.lenght"
    with pytest.raises(SpecProblem, match=r"must be ≥ 1 \(got 0\)") as exc:
        make_env(spec("reverse-digits", {"min_len": 0}))
    assert exc.value.field == "args.min_len"
    with pytest.raises(ValueError, match="already registered"):
        register("math", Math)


def test_envs_package_does_not_import_torch_or_sympy() -> None:
    code = (
        "import sys, intellect.rl.envs; print(json.dumps(['torch' in sys.modules, 'sympy' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [False, False]


# ------------------------------------------------------------------------------------------ datasets


@pytest.mark.parametrize("name", ["reverse-digits", "math", "calculator", "code", "science", "logic"])
def test_datasets_are_deterministic_and_disjoint(name: str) -> None:
    a, b = make_env(spec(name)), make_env(spec(name))
    train, evals = a.tasks("train"), a.tasks("eval")
    assert [t.prompt for t in train] == [t.prompt for t in b.tasks("train")]
    assert len(train) > len(evals) > 0
    assert len({t.id for t in train}) == len(train)
    assert not {t.prompt for t in train} & {t.prompt for t in evals}
    assert not {t.id for t in train} & {t.id for t in evals}
    with pytest.raises(ValueError, match="split"):
        a.tasks("test")


def test_reverse_digits_split_holds_across_seeds_and_fits_the_char_tokenizer() -> None:
    from intellect.rl.model import CharTokenizer

    env = ReverseDigits(min_len=3, max_len=5)
    train = env.tasks("train")
    assert len(train) >= 3000
    other_eval = ReverseDigits(min_len=3, max_len=5, seed=7).tasks("eval")
    assert not {t.info["digits"] for t in train} & {t.info["digits"] for t in other_eval}
    tok = CharTokenizer()
    for task in train[:200]:
        assert 3 <= len(task.info["digits"]) <= 5
        assert task.prompt == task.info["digits"] + ">" and task.answer == task.info["digits"][::-1]
        tok.encode(task.prompt + str(env.reference(task)))
    calc = Calculator()
    for task in calc.tasks()[:50]:
        tok.encode(task.prompt + "".join(t.text for t in calc.gold_turns(task)))


def test_reverse_digits_rubric_right_wrong_partial() -> None:
    env = ReverseDigits()
    task = Task(id="t", prompt="3917>", answer="7193")
    right, partial, wrong, longer = (env.score(task, c) for c in ("7193", "7199", "0000", "71934"))
    assert right.reward == 1.0 and right.correct
    assert partial.components == {"exact_match": 0.0, "partial_match": 0.75}
    assert partial.reward == pytest.approx(0.5 * 0.75 / 1.5) and not partial.correct
    assert wrong.reward == 0.0 and not wrong.correct
    assert longer.components["partial_match"] == pytest.approx(0.8) and not longer.correct


# ------------------------------------------------------------------------------------------ math


@pytest.mark.parametrize(
    ("gold", "pred", "same"),
    [("1/2", "0.5", True), ("1/2", "\\frac{1}{2}", True), ("5/6", "\\frac{10}{12}", True), ("12", "12.0", True),
     ("-3/4", "-0.75", True), ("1024", "2^{10}", True), ("3", "4", False), ("1/2", "1/3", False)],
)  # fmt: skip
def test_math_verify_equivalences(gold: str, pred: str, same: bool) -> None:
    assert equivalent(gold, pred) is same


def test_last_boxed_takes_the_last_box_with_nested_braces() -> None:
    assert last_boxed("first \\boxed{1} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed") is None


def test_math_rubric_format_and_correctness() -> None:
    env = Math()
    task = Task(id="m", prompt="q", answer="5/6")
    right = env.score(task, "so it is \\boxed{\\frac{5}{6}}")
    boxed_wrong = env.score(task, "\\boxed{1/6}")
    unboxed = env.score(task, "5/6")
    assert right.correct and right.reward == pytest.approx(1.0)
    assert boxed_wrong.components == {"boxed_correct": 0.0, "boxed_format": 1.0} and not boxed_wrong.correct
    assert unboxed.reward == 0.0
    for t in env.tasks("eval")[:20]:
        assert env.score(t, f"Answer: {env.reference(t)}").correct, t


def test_math_scores_off_the_main_thread() -> None:
    env, task, out = Math(), Task(id="m", prompt="q", answer="1/2"), []
    worker = threading.Thread(target=lambda: out.append(env.score(task, "\\boxed{0.5}")))
    worker.start()
    worker.join()
    assert out[0].correct and not out[0].errors


def test_math_loads_a_local_jsonl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "data.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(200)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    env = Math(dataset=str(path))
    train, evals = env.tasks("train"), env.tasks("eval")
    assert len(train) + len(evals) == 200 and evals
    assert env.score(train[0], env.reference(train[0])).correct
    path.write_text('{"question": "no answer"}\n')
    with pytest.raises(DataError, match="row 1 has no column 'answer'"):
        Math(dataset=str(path)).tasks()


# ------------------------------------------------------------------------------------------ rubric errors


def test_a_raising_reward_function_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(task: Task, completion: str, transcript: object) -> float:
        raise RuntimeError("boom")

    def one(task: Task, completion: str, transcript: object) -> float:
        return 1.0

    rubric = Rubric([(one, 1.0), (broken, 1.0)])
    with caplog.at_level(logging.WARNING):
        score = rubric.score(Task(id="t", prompt="p", answer=None), "x")
    assert score.failed and rubric.error_count == 1
    assert score.errors == ["broken: RuntimeError: boom"] and "broken" not in score.components
    assert "boom" in caplog.text

    env = ReverseDigits()
    env.rubric = Rubric([(one, 1.0), (broken, 1.0)])
    assert not env.score(Task(id="t", prompt="1>", answer="1"), "1").correct


# ------------------------------------------------------------------------------------------ calculator


def test_safe_calc_evaluates_arithmetic_exactly() -> None:
    assert evaluate("12*(3+4)") == 84
    assert evaluate("-2**3 + 10/4") == Fraction(-11, 2)
    assert evaluate("2^10") == 1024
    assert evaluate("1.5*4") == 6
    assert format_number(evaluate("1/3")) == "0.333333333333"
    assert format_number(evaluate("7*6")) == "42"


@pytest.mark.parametrize(
    "expr",
    ["__import__('os')", "().__class__", "open('x')", "x + 1", "'a' * 3", "9**9**9", "2**100000", "10**99 * 10**99",
     "1/0", "0**-1", "2**0.5", "True + 1", "1e999", "[1, 2]", "1 if 1 else 2", "(" * 300 + "1" + ")" * 300, "",
     "1 % 2", "1 // 2", "lambda: 1"],
)  # fmt: skip
def test_safe_calc_rejects_anything_else(expr: str) -> None:
    with pytest.raises(CalcError):
        evaluate(expr)


def test_calculator_multi_turn_episode_with_scripted_turns() -> None:
    env = make_env(spec("calculator", {"max_turns": 3}))
    task = Task(id="c", prompt="What is 12*(3+4)?", answer="84", info={"expression": "12*(3+4)"})
    transcript = [Turn("assistant", "Let me compute. <calc>12*(3+4)</calc>")]
    reply = env.respond(task, transcript)
    assert reply == "<result>84</result>"
    transcript += [Turn("tool", reply), Turn("assistant", "<calc>__import__('os')")]  # stop string dropped
    reply = env.respond(task, transcript)
    assert reply is not None and reply.startswith("<result>error:")
    transcript += [Turn("tool", reply), Turn("assistant", "<answer>84</answer>")]
    assert env.respond(task, transcript) is None
    score = env.score(task, transcript[-1].text, transcript)
    assert score.correct and score.components == {"answer_correct": 1.0, "tool_format": 0.0}

    good = [transcript[0], Turn("tool", "<result>84</result>"), Turn("assistant", "<answer>84")]
    assert env.score(task, good[-1].text, good).reward == pytest.approx(1.0)


def test_calculator_episode_ends_on_no_call_or_turn_limit() -> None:
    env = Calculator(max_turns=2)
    task = env.tasks()[0]
    assert env.respond(task, [Turn("assistant", "I think it is 5")]) is None
    two = [
        Turn("assistant", "<calc>1+1</calc>"),
        Turn("tool", "<result>2</result>"),
        Turn("assistant", "<calc>2</calc>"),
    ]
    assert env.respond(task, two) is None
    wrong = env.score(task, "<answer>-1</answer>", [Turn("assistant", "<answer>-1</answer>")])
    assert wrong.reward == 0.0 and not wrong.correct
    only_tool = env.score(task, "", [Turn("assistant", "<calc>1+1</calc>")])
    assert only_tool.reward == pytest.approx(0.2 / 1.2) and not only_tool.correct


def test_tag_contents_handles_closed_and_trailing_unclosed_tags() -> None:
    assert tag_contents("<calc>1</calc> x <calc>2</calc>", "calc") == ["1", "2"]
    assert tag_contents("<calc>1</calc> <calc>3*4", "calc") == ["1", "3*4"]
    assert tag_contents("<calc>3*4", "calc", allow_unclosed=False) == []


# ------------------------------------------------------------------------------------------ code


def test_code_runs_asserts_in_a_subprocess() -> None:
    env = Code(size=20)
    task = env.tasks()[0]
    assert env.score(task, str(env.reference(task))).correct
    name = task.info["function"]
    wrong = env.score(task, f"```python\ndef {name}(*a):\n    return None\n```")
    assert wrong.components == {"tests_passed": 0.0, "defines_function": 1.0}
    assert run_tests("import sys; sys.exit(3)", ["assert True"]) == 0
    assert run_tests("while True: pass", ["assert True"], timeout=1.0) == 0
    assert run_tests("def g(): return 2", ["assert g() == 2", "assert g() == 3"]) == 1
