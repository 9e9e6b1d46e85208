"""Dataset-backed environments on small offline files of the PrimeIntellect/INTELLECT-3-RL schema.

Every file is written in tmp_path; nothing is downloaded. The schema mirrors the dataset as of its Hugging Face
commit 3c1ecf6 ("Add avg@8_qwen3_4b_instruct_2507 to math"), read from PrimeIntellect's own loaders of its
subsets (research-environments: math/science ``question``/``answer``; code ``question`` + ``info`` JSON whose
``tests`` is JSON of inputs/outputs/fn_name; logic ``question`` + ``info`` JSON with ``task_name`` and
``game_data_str``; solve rates ``avg@8_qwen3_4b_instruct_2507``, logic ``avg@16_...``), not from our own code.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from intellect.recipe import EnvSpec
from intellect.rl.envs import Environment, SpecProblem, check_spec, data, make_env
from intellect.rl.envs.base import ArgProblem, Task
from intellect.rl.envs.common import split_of
from intellect.rl.envs.data import DataError, Source, check_source, read_rows
from intellect.rl.envs.logic_env import write_dataset
from intellect.rl.envs.math_env import Math

RATE8 = "avg@8_qwen3_4b_instruct_2507"
RATE16 = "avg@16_qwen3_4b_instruct_2507"


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as Parquet or JSONL, by the suffix of ``path``."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def env(name: str, **args: Any) -> Environment:
    return make_env(EnvSpec(name=name, args=args))


def questions(tasks: Any) -> set[str]:
    return {t.info["question"] for t in tasks}


def fenced(code: str) -> str:
    return f"Here is my program.\n```python\n{code}\n```"


def code_info(tests: dict[str, Any] | None, source: str = "taco") -> str:
    """An INTELLECT-3-RL ``info`` cell: JSON text whose ``tests`` is itself JSON text."""
    info: dict[str, Any] = {"source": source}
    if tests is not None:
        info["tests"] = json.dumps(tests)
    return json.dumps(info)


def logic_info(task_name: str, game: dict[str, Any], old: bool = False) -> str:
    if old:
        return json.dumps({"task": task_name, "game_data": game})
    return json.dumps({"task_name": task_name, "game_data_str": json.dumps(game)})


def math_file(tmp_path: Path, n: int = 40, rates: list[float | None] | None = None) -> Path:
    rates = rates if rates is not None else [(i % 9) / 8 for i in range(n)]
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i), RATE8: r} for i, r in enumerate(rates)]
    return write_rows(tmp_path / "math.parquet", rows)


# ------------------------------------------------------------------------------------------------ math


def test_math_parquet_splits_are_disjoint_by_hash(tmp_path: Path) -> None:
    path = math_file(tmp_path)
    math = env("math", dataset=str(path), eval_fraction=0.5)
    train, evals = questions(math.tasks("train")), questions(math.tasks("eval"))
    assert train and evals and not train & evals
    assert train | evals == {f"What is {i} + {i}?" for i in range(40)}
    assert all(split_of(q, "math", 0.5) == "train" for q in train)
    assert all(split_of(q, "math", 0.5) == "eval" for q in evals)
    again = env("math", dataset=str(path), eval_fraction=0.5)
    assert [t.id for t in again.tasks("eval")] == [t.id for t in math.tasks("eval")]


def test_math_eval_fraction_one_makes_every_row_eval_and_zero_every_row_train(tmp_path: Path) -> None:
    path = math_file(tmp_path)
    all_eval = env("math", dataset=str(path), eval_fraction=1.0)
    assert len(all_eval.tasks("eval")) == 40
    with pytest.raises(DataError, match="no train rows"):
        all_eval.tasks("train")
    all_train = env("math", dataset=str(path), eval_fraction=0.0)
    assert len(all_train.tasks("train")) == 40
    with pytest.raises(DataError, match="no eval rows"):
        all_train.tasks("eval")


def test_math_solve_rate_filter_keeps_rows_in_range_and_drops_missing_rates(tmp_path: Path) -> None:
    rates: list[float | None] = [k / 8 for k in range(9)] + [None, float("nan")]
    path = math_file(tmp_path, rates=rates)
    math = env(
        "math", dataset=str(path), solve_rate_column=RATE8, min_solve_rate=0.25, max_solve_rate=0.75,
        eval_fraction=0.0,
    )  # fmt: skip
    assert questions(math.tasks("train")) == {f"What is {k} + {k}?" for k in range(2, 7)}
    unfiltered = list(read_rows(Source(dataset=str(path), solve_rate_column=RATE8), Math.fields))
    assert len(unfiltered) == 9  # the None and NaN rates are dropped even with the full [0, 1] range
    assert len(list(read_rows(Source(dataset=str(path)), Math.fields))) == 11  # no filter: every row


def test_math_columns_map_an_aime_style_problem_column(tmp_path: Path) -> None:
    rows = [
        {"id": "2025-I-1", "problem": "Find the sum of all integer bases b>9 ...", "answer": "70"},
        {"id": "2025-I-2", "problem": "In triangle ABC points ...", "answer": "588"},
    ]
    path = write_rows(tmp_path / "aime25.jsonl", rows)
    math = env("math", dataset=str(path), columns={"question": "problem"}, eval_fraction=1.0)
    tasks = math.tasks("eval")
    assert [(t.info["question"], t.answer) for t in tasks] == [(r["problem"], r["answer"]) for r in rows]
    assert tasks[0].prompt.startswith("Find the sum") and tasks[0].prompt.endswith("\\boxed{}.")


def test_math_reference_answers_score_correct_and_a_wrong_box_does_not(tmp_path: Path) -> None:
    answers = ["42", "\\frac{3}{4}", "2\\sqrt{2}", "-7", "\\frac{\\pi}{2}", "x^2+1"]
    rows = [{"question": f"Problem {i}", "answer": a, RATE8: 0.5} for i, a in enumerate(answers)]
    math = env("math", dataset=str(write_rows(tmp_path / "m.parquet", rows)), eval_fraction=1.0)
    tasks = math.tasks("eval")
    assert sorted(t.answer for t in tasks) == sorted(answers)
    for task in tasks:
        ref = math.reference(task)
        assert ref is not None
        assert math.score(task, f"Working...\n{ref}").correct, task.answer
    by_answer = {t.answer: t for t in tasks}
    wrong = math.score(by_answer["42"], "so \\boxed{43}")
    assert not wrong.correct and wrong.components == {"boxed_correct": 0.0, "boxed_format": 1.0}
    assert math.score(by_answer["\\frac{3}{4}"], "\\boxed{0.75}").correct


# ------------------------------------------------------------------------------------------------ code

SUM_TESTS = {"inputs": ["1 2\n", "10 -3\n", "0 0\n", "5 5\n"], "outputs": ["3\n", "7\n", "0\n", "10\n"]}
SUM_OK = "a, b = map(int, input().split())\nprint(a + b)"
SUM_PARTIAL = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"


def code_env(tmp_path: Path, rows: list[dict[str, Any]], **args: Any) -> Environment:
    return env("code", dataset=str(write_rows(tmp_path / "code.jsonl", rows)), eval_fraction=1.0, **args)


def code_row(question: str, tests: dict[str, Any] | None) -> dict[str, Any]:
    return {"question": question, "info": code_info(tests), RATE8: 0.375}


def only_task(environment: Environment) -> Task:
    (task,) = environment.tasks("eval")
    return task


def test_code_stdin_stdout_problem(tmp_path: Path) -> None:
    code = code_env(tmp_path, [code_row("Read two integers and print their sum.", SUM_TESTS)])
    task = only_task(code)
    assert task.answer["kind"] == "stdio" and len(task.answer["cases"]) == 4
    assert code.score(task, fenced(SUM_OK)).components["tests_passed"] == 1.0
    assert code.score(task, fenced(SUM_OK)).correct
    partial = code.score(task, fenced(SUM_PARTIAL))
    assert partial.components["tests_passed"] == 0.5 and not partial.correct
    assert code.score(task, fenced("print(a - b)")).components["tests_passed"] == 0.0


@pytest.mark.parametrize(
    "inputs, outputs",
    [
        ([[[2, 7, 11, 15], 9], [[3, 2, 4], 6]], [[0, 1], [1, 2]]),
        (["[2,7,11,15]\n9", "[3,2,4]\n6"], ["[0, 1]", "[1, 2]"]),
    ],
    ids=["argument-lists", "json-lines"],
)
def test_code_fn_name_problem_accepts_a_function_and_a_solution_method(
    tmp_path: Path, inputs: list[Any], outputs: list[Any]
) -> None:
    tests = {"inputs": inputs, "outputs": outputs, "fn_name": "twoSum"}
    code = code_env(tmp_path, [code_row("Return the indices of two numbers adding to target.", tests)])
    task = only_task(code)
    assert task.answer["kind"] == "call" and task.answer["cases"][0] == [[[2, 7, 11, 15], 9], [0, 1]]
    body = "seen = {}\nfor i, x in enumerate(nums):\n    if target - x in seen:\n        return [seen[target - x], i]\n    seen[x] = i"
    function = "def twoSum(nums, target):\n" + "\n".join("    " + ln for ln in body.splitlines())
    method = "class Solution:\n    def twoSum(self, nums, target):\n" + "\n".join(
        "        " + ln for ln in body.splitlines()
    )
    for solution in (function, method):
        assert code.score(task, fenced(solution)).components["tests_passed"] == 1.0
    wrong = "def twoSum(nums, target):\n    return [0, 1]"
    assert code.score(task, fenced(wrong)).components["tests_passed"] == 0.5


def test_code_max_tests_truncates(tmp_path: Path) -> None:
    code = code_env(tmp_path, [code_row("Sum two ints.", SUM_TESTS)], max_tests=2)
    task = only_task(code)
    assert task.answer["cases"] == [["1 2\n", "3\n"], ["10 -3\n", "7\n"]]
    assert code.score(task, fenced(SUM_OK)).components["tests_passed"] == 1.0


def test_code_rows_without_tests_are_skipped_counted_and_fatal_only_when_none_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    no_tests = code_env(tmp_path, [code_row("Sum two ints.", SUM_TESTS), code_row("No tests here.", None)])
    assert [t.answer["kind"] for t in no_tests.tasks("eval")] == ["stdio"]
    assert (
        "skipped 1 rows that do not fit code (first: row 2: ValueError: tests need equally long"
        in caplog.text
    )
    only_bad = code_env(tmp_path, [code_row("No tests here.", None)])
    with pytest.raises(
        DataError, match="no eval rows for code .*1 rows do not fit it, first row 1: ValueError"
    ):
        only_bad.tasks("eval")
    empty = code_env(
        tmp_path, [code_row("Sum.", SUM_TESTS), code_row("Empty.", {"inputs": [], "outputs": []})]
    )
    assert [t.answer["kind"] for t in empty.tasks("eval")] == ["stdio"]


# --------------------------------------------------------------------------------------------- science


def science_env(tmp_path: Path, answers: dict[str, str]) -> tuple[Environment, dict[str, Task]]:
    rows = [{"question": q, "answer": a, RATE8: 0.25} for q, a in answers.items()]
    science = env("science", dataset=str(write_rows(tmp_path / "sci.parquet", rows)), eval_fraction=1.0)
    return science, {t.answer: t for t in science.tasks("eval")}


def test_science_numeric_and_choice_letter_answers(tmp_path: Path) -> None:
    letters = "\n(A) H2\n(B) O2\n(C) CO2\n(D) N2"
    science, by_answer = science_env(
        tmp_path,
        {
            "What fraction of a half-life's sample remains?": "0.5",
            "Which gas do plants take in?" + letters: "C",
        },
    )
    value, choice = by_answer["0.5"], by_answer["C"]
    assert science.score(value, "The ratio is \\boxed{1/2}").correct
    assert not science.score(value, "\\boxed{1/3}").correct
    assert science.score(choice, "Plants fix carbon, so \\boxed{C}").correct
    assert science.score(choice, "Carbon dioxide.\nAnswer: C").correct
    for wrong in ("\\boxed{B}", "Answer: D"):
        score = science.score(choice, wrong)
        assert score.components["science_correct"] == 0.0 and not score.correct


# ----------------------------------------------------------------------------------------------- logic


def test_logic_written_parquet_is_filtered_and_scored_by_reasoning_gym(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "logic.parquet", ["spell_backward"], size=20, seed=0)
    rows = pq.read_table(path).to_pylist()
    keep = {r["question"] for r in rows if 0.25 <= r[RATE16] <= 0.75}
    logic = env(
        "logic", dataset=str(path), solve_rate_column=RATE16, min_solve_rate=0.25, max_solve_rate=0.75,
        eval_fraction=0.0,
    )  # fmt: skip
    tasks = logic.tasks("train")
    assert {t.prompt for t in tasks} == keep and 0 < len(keep) < len(rows)
    for task in tasks:
        assert task.info["task_name"] == "spell_backward"
        ref = logic.reference(task)
        assert ref is not None and logic.score(task, f"<answer>{ref}</answer>").correct
    answer = str(tasks[0].answer)
    near = logic.score(tasks[0], f"<answer>{answer[:-1]}#</answer>")  # reasoning-gym gives partial credit
    assert 0.0 < near.reward < 1.0 and not near.correct


def test_logic_unknown_task_is_exact_match_and_old_keys_load(tmp_path: Path) -> None:
    import reasoning_gym

    (entry,) = list(reasoning_gym.create_dataset("spell_backward", size=1, seed=3))
    game = {k: entry[k] for k in ("question", "answer", "metadata")}
    game["metadata"] = {"source_dataset": "spell_backward"}
    maze = {"question": "Solve the arrow maze.", "answer": "abc", "metadata": {}}
    rows = [
        {"question": maze["question"], "info": logic_info("arrow_maze", maze), RATE16: 0.5},
        {"question": game["question"], "info": logic_info("spell_backward", game, old=True), RATE16: 0.5},
    ]
    logic = env("logic", dataset=str(write_rows(tmp_path / "logic.jsonl", rows)), eval_fraction=1.0)
    by_name = {t.info["task_name"]: t for t in logic.tasks("eval")}
    assert set(by_name) == {"arrow_maze", "spell_backward"}
    arrow = by_name["arrow_maze"]
    assert logic.score(arrow, "I think it is\n<answer>  ABC \n</answer>").correct
    for wrong in ("<answer>abd</answer>", "<answer>a b c</answer>", "<answer></answer>"):
        assert logic.score(arrow, wrong).reward == 0.0
    old = by_name["spell_backward"]
    assert old.answer == entry["answer"] and old.info["entry"]["question"] == entry["question"]
    assert logic.score(old, f"\\boxed{{{entry['answer']}}}").correct


# ------------------------------------------------------------------------------------------- refusals

ArgsOf = Callable[[dict[str, Path]], dict[str, Any]]
REFUSALS: list[tuple[str, str, ArgsOf, str, str]] = [
    ("missing-file", "math", lambda f: {"dataset": str(f["dir"] / "nope.jsonl")}, "train", "args.dataset"),
    ("unknown-column-key", "math", lambda f: {"dataset": str(f["math"]), "columns": {"solution": "s"}}, "train",
     "args.columns.solution"),
    ("absent-mapped-column", "math", lambda f: {"dataset": str(f["math"]), "columns": {"question": "problem"}},
     "train", "args.columns.question"),
    ("absent-solve-rate-column", "math", lambda f: {"dataset": str(f["math"]), "solve_rate_column": RATE16},
     "train", "args.solve_rate_column"),
    ("min-above-max", "math", lambda f: {"dataset": str(f["math"]), "min_solve_rate": 0.8, "max_solve_rate": 0.2},
     "train", "args.min_solve_rate"),
    ("subset-of-local-file", "math", lambda f: {"dataset": str(f["math"]), "subset": "math"}, "train",
     "args.subset"),
    ("split-of-local-file", "math", lambda f: {"dataset": str(f["math"]), "dataset_split": "test"}, "train",
     "args.dataset_split"),
    ("corrupt-parquet", "math", lambda f: {"dataset": str(f["corrupt"])}, "train", "args.dataset"),
    ("csv-file", "science", lambda f: {"dataset": str(f["csv"])}, "train", "args.dataset"),
    ("all-eval-for-train", "math", lambda f: {"dataset": str(f["math"]), "eval_fraction": 1.0}, "train",
     "args.eval_fraction"),
    ("no-eval-for-eval", "math", lambda f: {"dataset": str(f["math"]), "eval_fraction": 0.0}, "eval",
     "args.eval_fraction"),
    ("benchmark-as-split", "math", lambda f: {"split": "aime25"}, "eval", "args.split"),
    ("subset-without-dataset", "logic", lambda f: {"subset": "logic"}, "train", "args.subset"),
]  # fmt: skip


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"this is not a parquet file\n" * 8)
    csv = tmp_path / "science.csv"
    csv.write_text("question,answer\nWhat is 1+1?,2\n")
    return {"dir": tmp_path, "math": math_file(tmp_path), "corrupt": corrupt, "csv": csv}


@pytest.mark.parametrize("name, args, role, field", [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_check_spec_refuses_with_the_exact_field(
    files: dict[str, Path], name: str, args: ArgsOf, role: str, field: str
) -> None:
    with pytest.raises(SpecProblem) as info:
        check_spec(name, args(files), role)
    assert info.value.field == field, str(info.value)


def test_check_source_names_the_arg_and_a_corrupt_parquet_is_a_data_error(files: dict[str, Path]) -> None:
    with pytest.raises(ArgProblem) as info:
        check_source(Source(dataset=str(files["math"]), columns={"answer": "solution"}), Math.fields)
    assert info.value.arg == "columns.answer" and "'solution' is not in" in str(info.value)
    with pytest.raises(ArgProblem) as info:
        check_source(Source(dataset=str(files["corrupt"])), Math.fields)
    assert info.value.arg == "dataset"
    with pytest.raises(DataError, match="not a readable Parquet file"):
        env("math", dataset=str(files["corrupt"])).tasks("train")


def test_a_hub_id_passes_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a pre-submission check must not download")

    if importlib.util.find_spec("datasets") is None:
        pytest.skip("a hub id is refused without the 'datasets' library (the data extra)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "_hf_rows", no_download)  # the one path that calls datasets.load_dataset
    hub = "PrimeIntellect/INTELLECT-3-RL"
    for name, subset, rate in (("math", "math", RATE8), ("code", "code", RATE8), ("logic", "logic", RATE16)):
        args = {"dataset": hub, "subset": subset, "solve_rate_column": rate, "min_solve_rate": 0.1}
        assert isinstance(check_spec(name, args, "train"), list)
        assert isinstance(check_spec(name, {**args, "eval_fraction": 1.0}, "eval"), list)
        check_source(Source(dataset=hub, subset=subset, solve_rate_column=rate), {"question": "q"})
    env("math", dataset=hub, subset="math")  # building reads nothing; only tasks() would


# --------------------------------------------------------------------------------------------- review fixes


def test_stdio_programs_may_use_the_byte_streams_and_forged_output_scores_nothing() -> None:
    from intellect.rl.envs.code_env import normalise_tests, run_tests

    spec = normalise_tests({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})
    binary = "import sys\na, b = map(int, sys.stdin.buffer.read().split())\nsys.stdout.buffer.write(b'%d\\n' % (a + b))\n"
    assert run_tests(binary, spec) == 2
    # the old harness's result marker, and a forged harness report: the verdict is not made in the sandbox
    forged = "import os\nos.write(1, b'\\n@@intellect-tests@@999\\n')\nos._exit(0)\n"
    assert run_tests(forged, spec) == 0
    report = (
        'import os\nfor i in range(2): os.write(1, b\'{"i": %d, "status": "ok", "value": "x"}\\n\' % i)\n'
    )
    assert run_tests(report, spec) == 0


def test_a_bad_jsonl_line_is_named_by_its_own_number(tmp_path: Path) -> None:
    from intellect.rl.envs.data import DataError, Source, read_rows

    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": "2"}\n{oops\n')
    with pytest.raises(DataError, match=r"rows.jsonl:3: not JSON"):
        list(read_rows(Source(dataset=str(path)), {"question": "question", "answer": "answer"}))


def test_launch_makes_local_dataset_paths_absolute_for_the_roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from intellect.launch import prepare

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "rows.jsonl").write_text('{"question": "What is 1 + 1?", "answer": "2"}\n' * 3)
    data = yaml.safe_load((root / "recipes" / "debug-cpu.yaml").read_text())
    data["environments"] = [{"name": "reverse-digits"}]
    data["evals"]["environments"] = [
        {"name": "math", "args": {"dataset": "rows.jsonl", "eval_fraction": 1.0}}
    ]
    data["model"]["max_seq_len"] = 64
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    prep = prepare("r.yaml", str(tmp_path / "run"))
    assert prep.recipe.evals.environments[0].args["dataset"] == str(tmp_path / "rows.jsonl")


def test_a_cause_is_one_printable_line() -> None:
    from intellect.rl.failure import printable

    assert printable("bad\x1b[31m red\nsecond\tline\x07") == "bad [31m red second line"
