"""``intellect launch`` refuses a recipe whose environments, data or model cannot work, before anything is
written or submitted: one ``error: FILE:LINE: FIELD: message`` line per problem on stderr, exit 1, no run
directory, no launch recorded. Each case is recipes/debug-cpu.yaml with one thing broken."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RECIPES, run_cli

Recipe = dict[str, Any]
Edit = Callable[[Recipe, Path], None]
BASE: Recipe = yaml.safe_load((RECIPES / "debug-cpu.yaml").read_text())
MODES = {"dry-run": ["--dry-run"], "local": ["--executor", "local"]}


def train_env(**changes: Any) -> Edit:
    return lambda recipe, _: recipe["environments"][0].update(changes)


def train_args(**changes: Any) -> Edit:
    return lambda recipe, _: recipe["environments"][0]["args"].update(changes)


def eval_args(**changes: Any) -> Edit:
    return lambda recipe, _: recipe["evals"]["environments"][0]["args"].update(changes)


def math_env(**args: Any) -> Edit:
    def edit(recipe: Recipe, tmp: Path) -> None:
        filled = {k: str(v).format(tmp=tmp) for k, v in args.items()}
        recipe["environments"][0] = {"name": "math", "weight": 1.0, **({"args": filled} if filled else {})}

    return edit


def local_model(*files: str) -> Edit:
    """model.name: a folder under tmp holding ``files`` (no model.tiny: it only applies to the tiny model)."""

    def edit(recipe: Recipe, tmp: Path) -> None:
        folder = tmp / "model"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
        recipe["model"]["name"] = str(folder)
        del recipe["model"]["tiny"]

    return edit


def write_recipe(tmp: Path, *edits: Edit) -> tuple[Path, list[str]]:
    recipe = copy.deepcopy(BASE)
    for edit in edits:
        edit(recipe, tmp)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path, path.read_text().splitlines()


def line_no(lines: list[str], anchor: str) -> int:
    """The 1-based number of the first line reading ``anchor`` (indentation and a list dash aside)."""
    return next(i for i, line in enumerate(lines, 1) if line.strip().removeprefix("- ") == anchor)


def launch(tmp: Path, recipe: Path, mode: str, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["launch", str(recipe), *MODES[mode], "--run-dir", str(tmp / "run"), *extra]
    return run_cli(*args, env={"INTELLECT_STATE_DIR": str(tmp / "state")}, timeout=60)


def assert_nothing_left(tmp: Path, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert not (tmp / "run").exists()
    assert not (tmp / "state" / "launches.jsonl").exists()


# (edit, the text of the line the error names, field path, what the line must say to fix it)
CASES = [
    pytest.param(
        train_env(name="bogus-env"),
        "name: bogus-env",
        "environments[0].name",
        ["unknown environment 'bogus-env'", "known: ", "math", "reverse-digits"],
        id="unknown-name",
    ),
    pytest.param(
        train_env(name="reverse-digit"),
        "name: reverse-digit",
        "environments[0].name",
        ["did you mean 'reverse-digits'?"],
        id="close-name",
    ),
    pytest.param(
        train_args(lenght=4),
        "lenght: 4",
        "environments[0].args.lenght",
        ["unknown argument", "max_len"],
        id="unknown-arg",
    ),
    pytest.param(
        train_args(min_len=0), "min_len: 0", "environments[0].args.min_len", ["must be ≥ 1"], id="range"
    ),
    pytest.param(
        train_args(min_len="three"),
        "min_len: three",
        "environments[0].args.min_len",
        ["valid integer", "'three'"],
        id="type",
    ),
    pytest.param(
        train_args(max_len=2),
        "max_len: 2",
        "environments[0].args.max_len",
        ["must be ≥ min_len 3 (got 2)"],
        id="max-below-min",
    ),
    pytest.param(
        eval_args(split="aime25"),
        "split: aime25",
        "evals.environments[0].args.split",
        ["'aime25' is not a split", "'train' or 'eval'", "args.dataset"],
        id="eval-split",
    ),
    pytest.param(
        math_env(dataset="{tmp}/missing.jsonl"),
        "dataset: {tmp}/missing.jsonl",
        "environments[0].args.dataset",
        ["{tmp}/missing.jsonl", "no such file"],
        id="missing-dataset",
    ),
    pytest.param(
        local_model(),
        "name: {tmp}/model",
        "model.name",
        ["{tmp}/model holds no config.json"],
        id="model-no-config",
    ),
    pytest.param(
        local_model("config.json"),
        "name: {tmp}/model",
        "model.name",
        ["{tmp}/model holds no tokenizer", "tokenizer.json"],
        id="model-no-tokenizer",
    ),
    pytest.param(
        math_env(),
        "name: math",
        "environments[0]",
        ["-token prompt but model.max_seq_len is 32", "raise model.max_seq_len above"],
        id="tiny-prompt-too-long",
    ),
]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(("edit", "anchor", "field", "says"), CASES)
def test_refused_before_anything_is_written(
    tmp_path: Path, mode: str, edit: Edit, anchor: str, field: str, says: list[str]
) -> None:
    recipe, lines = write_recipe(tmp_path, edit)
    proc = launch(tmp_path, recipe, mode)
    assert_nothing_left(tmp_path, proc)
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    line = proc.stderr.rstrip("\n")
    where = f"error: {recipe}:{line_no(lines, anchor.format(tmp=tmp_path))}: {field}: "
    assert line.startswith(where), line
    for text in says:
        assert text.format(tmp=tmp_path) in line, line


@pytest.mark.parametrize("mode", list(MODES))
def test_every_problem_is_one_line(tmp_path: Path, mode: str) -> None:
    recipe, lines = write_recipe(tmp_path, train_env(name="bogus-env"), eval_args(split="aime25"))
    proc = launch(tmp_path, recipe, mode)
    assert_nothing_left(tmp_path, proc)
    assert proc.stderr.splitlines() == [
        f"error: {recipe}:{line_no(lines, 'name: bogus-env')}: environments[0].name: "
        "unknown environment 'bogus-env'; known: calculator, code, logic, math, python-tool, reverse-digits, science",
        f"error: {recipe}:{line_no(lines, 'split: aime25')}: evals.environments[0].args.split: "
        "'aime25' is not a split: use 'train' or 'eval'; a benchmark is a dataset of its own "
        "(args.dataset, with eval_fraction: 1)",
    ]


def offline_warnings(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("warning: not checked offline")]


def test_hub_ids_are_one_warning(tmp_path: Path) -> None:
    env = {"INTELLECT_STATE_DIR": str(tmp_path / "state")}
    base = ["launch", "recipes/intellect3.yaml", "--dry-run", "--run-dir", str(tmp_path / "run")]
    proc = run_cli(*base, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "error:" not in proc.stderr
    (warning,) = offline_warnings(proc.stderr.splitlines())
    assert "dataset PrimeIntellect/INTELLECT-3-RL (math, code, science, logic)" in warning
    assert "model zai-org/GLM-4.5-Air-Base" in warning
    assert not (tmp_path / "run").exists()

    proc = run_cli(*base, "--json", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (listed,) = json.loads(proc.stdout)["warnings"]
    assert f"warning: {listed}" == warning
    assert offline_warnings(proc.stderr.splitlines()) == [warning]
