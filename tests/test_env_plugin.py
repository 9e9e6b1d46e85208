"""An environment from an installed package: entry point group ``intellect.environments``.

A tiny plugin (``copy-digits``: prompt ``"123>"``, answer ``"123"``) is installed into a temporary site dir
(a package and its ``.dist-info``, no pip, no network) that reaches every subprocess through PYTHONPATH. The
dry run finds it, checks its typed arguments like a built-in's, and refuses it once the site dir is gone;
a short local launch runs it where environments are built: the orchestrator (rollouts, evals) and the
trainer (warm-up on the references); the inference server only serves completions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RECIPES, ROOT, run_cli

LAUNCH_TIMEOUT_S = 420

PLUGIN = """
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Annotated, Literal

from annotated_types import Ge

from intellect.rl.envs.base import Rubric, Task, Turn
from intellect.rl.envs.common import GeneratedEnv


def exact_match(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    return 1.0 if completion.strip() == task.answer else 0.0


def partial_match(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    pred = completion.strip()
    return sum(a == b for a, b in zip(pred, task.answer)) / max(len(pred), len(task.answer))


class CopyDigits(GeneratedEnv):
    name = "copy-digits"
    default_size = {"train": 2000, "eval": 200}
    correct_by = "exact_match"

    def __init__(
        self,
        length: Annotated[int, Ge(1)] = 3,
        split: Literal["train", "eval"] = "train",
        size: int | None = None,
        seed: int = 0,
        eval_fraction: float = 0.1,
    ) -> None:
        super().__init__(length=length, split=split, size=size, seed=seed, eval_fraction=eval_fraction)
        self.length = length
        # partial credit: an all-zero group teaches nothing and is dropped, so a barely warmed-up model
        # on exact match alone would never fill a batch
        self.rubric = Rubric([(exact_match, 1.0), (partial_match, 0.5)])

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        digits = "".join(rng.choice("0123456789") for _ in range(self.length))
        return digits, Task(id=f"cd-{digits}", prompt=digits + ">", answer=digits)

    def reference(self, task: Task) -> str:
        return str(task.answer)
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site dir holding the plugin package and its distribution metadata."""
    root = tmp_path / "site"
    (root / "intellect_demo_plugin").mkdir(parents=True)
    (root / "intellect_demo_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN).lstrip())
    info = root / "intellect_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: intellect-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[intellect.environments]\ncopy-digits = intellect_demo_plugin:CopyDigits\n"
    )
    return root


def _env(tmp_path: Path, site: Path | None) -> dict[str, str]:
    paths = [str(site)] if site else []
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(paths), "INTELLECT_STATE_DIR": str(tmp_path / "state")}


def _recipe(tmp_path: Path, name: str = "copy-digits", train_args: dict[str, Any] | None = None) -> Path:
    """recipes/debug-cpu.yaml training and evaluating on ``name``, on ports no other test uses."""
    data = yaml.safe_load((RECIPES / "debug-cpu.yaml").read_text())
    data["name"] = "env-plugin"
    data["roles"]["trainer"].update(port=29531, metrics_port=9431)
    data["roles"]["inference"]["port"] = 8031
    data["roles"]["orchestrator"]["metrics_port"] = 9430
    data["environments"] = [{"name": name, "weight": 1.0, "args": train_args or {"length": 3}}]
    data["evals"]["environments"] = [{"name": name, "args": {"length": 3, "split": "eval"}}]
    data["run_dir"] = str(tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_dry_run_finds_and_checks_the_plugin(tmp_path: Path, site: Path) -> None:
    found = run_cli("launch", str(_recipe(tmp_path)), "--dry-run", env=_env(tmp_path, site))
    assert found.returncode == 0, found.stderr

    missing = run_cli("launch", str(_recipe(tmp_path)), "--dry-run", env=_env(tmp_path, None))
    assert missing.returncode == 1, missing.stderr
    errors = _errors(missing.stderr)
    assert len(errors) == 2, missing.stderr  # environments[0] and evals.environments[0]
    assert all("unknown environment 'copy-digits'; known: " in e for e in errors), errors
    assert [e.split(": ")[2] for e in errors] == ["environments[0].name", "evals.environments[0].name"], (
        errors
    )

    typo = run_cli("launch", str(_recipe(tmp_path, "copy-digit")), "--dry-run", env=_env(tmp_path, site))
    assert typo.returncode == 1, typo.stderr
    assert "unknown environment 'copy-digit'; did you mean 'copy-digits'?" in _errors(typo.stderr)[0]

    bad = _recipe(tmp_path, train_args={"length": 0})
    refused = run_cli("launch", str(bad), "--dry-run", env=_env(tmp_path, site))
    assert refused.returncode == 1, refused.stderr
    [line] = _errors(refused.stderr)
    assert "environments[0].args.length" in line and "must be ≥ 1 (got 0)" in line, line


@pytest.mark.slow
def test_plugin_runs_in_every_role(tmp_path: Path, site: Path) -> None:
    recipe = _recipe(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    data["algorithm"]["steps"] = 4
    data["algorithm"]["pretrain"]["steps"] = 5
    data["evals"].update(every=0, samples=16)
    data["checkpoints"]["every"] = 1000
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    run_dir = tmp_path / "run"
    # not run_cli: its timeout kills only the CLI and would leave the roles running. The launch gets a
    # process group of its own (the roles stay in it) and the whole group is stopped afterwards.
    env = {k: v for k, v in os.environ.items() if k != "INTELLECT_DEBUG"} | _env(tmp_path, site)
    cmd = [sys.executable, "-m", "intellect.cli.main", "launch", str(recipe), "--executor", "local"]
    launch = subprocess.Popen(
        [*cmd, "--run-dir", str(run_dir)],
        cwd=ROOT,
        env=env | {"NO_COLOR": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = launch.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGTERM)
        _, stderr = launch.communicate(timeout=60)
        pytest.fail(f"the local launch took over {LAUNCH_TIMEOUT_S} s:\n{stderr[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.pid, signal.SIGTERM)
    assert launch.returncode == 0, stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"eval_before", "eval_after"} <= summary.keys(), summary
    assert "trainer: exit 0" in stderr and "orchestrator: exit 0" in stderr, stderr[-3000:]
    first = json.loads((run_dir / "rollouts" / "step_1" / "rollouts.jsonl").read_text().splitlines()[0])
    assert first["env"] == "copy-digits" and first["task_id"].startswith("cd-"), first
