"""Trainer checkpoints and step-folder housekeeping in the run directory.

A checkpoint is ``checkpoints/step_N/`` holding ``model.safetensors`` (the full float32 master weights, whatever
``model.dtype`` says), ``optimizer.pt`` (full optimizer state keyed by parameter name, plus the torch RNG
state) and ``trainer_state.json`` (the step and the data position). Everything is written into ``step_N.tmp``,
renamed into place, and STABLE is written last: a folder without STABLE is not a checkpoint, whatever else it
holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from intellect.rl.layout import (
    CHECKPOINTS,
    OPTIMIZER_FILE,
    STABLE,
    TRAINER_STATE_FILE,
    WEIGHTS,
    WEIGHTS_FILE,
    fresh_tmp,
    replace_folder,
    step_folders,
)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of the run, or None."""
    found = step_folders(run_dir, CHECKPOINTS)
    return found[max(found)] if found else None


def save_checkpoint(
    folder: str | Path,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write a complete checkpoint (STABLE last). ``meta`` must be JSON and hold ``step``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = fresh_tmp(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(tmp / WEIGHTS_FILE))
    torch.save({"optimizer": optim_state, "torch_rng": torch.get_rng_state()}, tmp / OPTIMIZER_FILE)
    (tmp / TRAINER_STATE_FILE).write_text(json.dumps(meta))
    replace_folder(tmp, folder)
    return folder


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a complete checkpoint: (model state, optimizer state, meta). Restores the torch RNG state."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / STABLE).exists():
        raise FileNotFoundError(f"{folder}: no {STABLE} marker; the checkpoint is incomplete")
    model_state = load_file(str(folder / WEIGHTS_FILE))
    blob = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
    torch.set_rng_state(blob["torch_rng"])
    meta = json.loads((folder / TRAINER_STATE_FILE).read_text())
    return model_state, blob["optimizer"], meta


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[int]:
    """Delete all but the ``keep`` newest complete checkpoints, and leftovers older than the newest."""
    complete = list(step_folders(run_dir, CHECKPOINTS))
    if not complete:
        return []
    kept = set(complete[-keep:])
    removed = []
    for step, path in step_folders(run_dir, CHECKPOINTS, stable_only=False).items():
        if step not in kept and step < complete[-1]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(step)
    return removed


def prune_weights(run_dir: str | Path, latest: int, keep: int) -> list[int]:
    """Delete ``weights/step_M`` for M <= latest - keep (the ``keep`` newest steps stay)."""
    removed = []
    for step, path in step_folders(run_dir, WEIGHTS, stable_only=False).items():
        if step <= latest - keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(step)
    return removed
