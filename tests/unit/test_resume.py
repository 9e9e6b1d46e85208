"""Resume sets aside the crashed run's future (``intellect.rl.resume``): weights and rollouts above the newest
checkpoint move to set_aside/, everything at or below it stays, and the batch script runs it before any role."""

from __future__ import annotations

from pathlib import Path

import yaml

from intellect.rl import layout, resume
from tests.conftest import RECIPES


def _step(run_dir: Path, kind: str, n: int, stable: bool = True) -> Path:
    folder = layout.step_dir(run_dir, kind, n)
    folder.mkdir(parents=True)
    (folder / "payload").write_text(f"{kind} {n}")
    if stable:
        layout.mark_stable(folder)
    return folder


def test_steps_above_the_checkpoint_are_set_aside(tmp_path: Path) -> None:
    for n in range(0, 9):
        _step(tmp_path, layout.WEIGHTS, n)
    _step(tmp_path, layout.WEIGHTS, 9, stable=False)  # torn by the crash
    for n in range(1, 9):
        _step(tmp_path, layout.ROLLOUTS, n)
    for n in (3, 6):
        _step(tmp_path, layout.CHECKPOINTS, n)
    _step(tmp_path, layout.CHECKPOINTS, 9, stable=False)  # an incomplete checkpoint is not one

    result = resume.set_aside_future(tmp_path, now=0.0)

    assert result.checkpoint == 6
    assert result.moved == {"weights": [7, 8, 9], "rollouts": [7, 8]}
    assert layout.stable_steps(tmp_path, layout.WEIGHTS) == list(range(0, 7))
    assert layout.stable_steps(tmp_path, layout.ROLLOUTS) == list(range(1, 7))
    assert layout.latest_step(tmp_path, layout.WEIGHTS) == 6  # what a starting server would load
    assert result.folder == tmp_path / "set_aside" / "19700101T000000Z-after-6"
    kept = result.folder / "weights" / "step_8"
    assert (kept / "payload").read_text() == "weights 8" and layout.is_stable(kept)  # moved, not deleted
    assert (result.folder / "weights" / "step_9" / "payload").exists()
    assert "weights step_7..9 (3), rollouts step_7..8 (2)" in result.line()
    # a second pass finds nothing more, and a second set-aside at the same second gets its own folder
    assert resume.set_aside_future(tmp_path, now=0.0).moved == {}
    _step(tmp_path, layout.ROLLOUTS, 7)
    again = resume.set_aside_future(tmp_path, now=0.0)
    assert again.folder == tmp_path / "set_aside" / "19700101T000000Z-after-6.2" and again.moved == {
        "rollouts": [7]
    }


def test_without_a_checkpoint_everything_is_set_aside(tmp_path: Path) -> None:
    _step(tmp_path, layout.WEIGHTS, 0)
    _step(tmp_path, layout.ROLLOUTS, 1)
    result = resume.set_aside_future(tmp_path)
    assert result.checkpoint == -1 and result.moved == {"weights": [0], "rollouts": [1]}
    assert layout.step_folders(tmp_path, layout.WEIGHTS, stable_only=False) == {}


def test_a_fresh_run_is_left_alone(tmp_path: Path) -> None:
    result = resume.set_aside_future(tmp_path / "new")
    assert result.moved == {} and result.folder is None
    assert not (tmp_path / "new" / "set_aside").exists()
    assert result.line() == "resume: nothing past no checkpoint to set aside"


def test_entry_point(tmp_path: Path, capsys) -> None:
    data = yaml.safe_load((RECIPES / "debug-cpu.yaml").read_text())
    data["run_dir"] = str(tmp_path / "run")
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(data))
    _step(tmp_path / "run", layout.CHECKPOINTS, 2)
    _step(tmp_path / "run", layout.WEIGHTS, 3)
    assert resume.main(["--config", str(config)]) == 0
    assert "resume from checkpoint 2: set aside weights step_3" in capsys.readouterr().out
    assert resume.main(["--config", str(tmp_path / "missing.yaml")]) == 1
    assert "no such recipe file" in capsys.readouterr().err


def test_the_batch_script_sets_aside_before_any_role() -> None:
    from intellect.launch import prepare

    script = prepare(RECIPES / "debug-cpu.yaml").script
    assert script.index("-m intellect.rl.resume") < script.index('run_role "inference-$i"')
