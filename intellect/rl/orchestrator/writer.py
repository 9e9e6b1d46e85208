"""The run-directory side of the orchestrator (all blocking; callers go through ``asyncio.to_thread``).

rollouts/step_N/rollouts.jsonl is written to a temporary name and renamed, then STABLE is written last; a
complete step is never overwritten. Weights folders count only with their STABLE marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STABLE = "STABLE"
ROLLOUTS_FILE = "rollouts.jsonl"
_STEP = re.compile(r"^step_(\d+)$")


def rollouts_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "rollouts" / f"step_{step}"


def weights_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "weights" / f"step_{step}"


def stable_steps(folder: str | Path) -> list[int]:
    """Steps N of the complete ``step_N`` folders under ``folder``, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    steps = []
    for entry in os.scandir(folder):
        match = _STEP.match(entry.name)
        if match and entry.is_dir() and os.path.exists(os.path.join(entry.path, STABLE)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_weights(run_dir: str | Path) -> int | None:
    steps = stable_steps(Path(run_dir) / "weights")
    return steps[-1] if steps else None


def wait_newer_weights(run_dir: str | Path, after: int, poll_s: float, stop: threading.Event) -> int | None:
    """Block until complete weights newer than ``after`` exist; return the newest step (None once ``stop`` is set).

    Runs in a worker thread (one hop per new step, not one per poll). Each poll is a single stat of
    ``weights/step_{after+1}/STABLE``; the folder is listed when that appears and about once a second (a run
    that resumes, or a trainer that published several steps since, skips ahead)."""
    nxt = weights_dir(run_dir, after + 1) / STABLE
    list_every = max(1, round(1.0 / poll_s))
    polls = 0
    while not stop.is_set():
        if polls % list_every == 0 or nxt.exists():
            latest = latest_weights(run_dir)
            if latest is not None and latest > after:
                return latest
        polls += 1
        stop.wait(poll_s)
    return None


def last_complete_rollouts(run_dir: str | Path) -> int:
    """The last batch N such that rollouts/step_1..N are all complete (0 when none)."""
    done = set(stable_steps(Path(run_dir) / "rollouts"))
    n = 0
    while n + 1 in done:
        n += 1
    return n


def write_rollouts(run_dir: str | Path, step: int, samples: Iterable[dict[str, Any]]) -> Path:
    """Write batch ``step``: rollouts.jsonl (via a temporary file and a rename), then STABLE last."""
    folder = rollouts_dir(run_dir, step)
    if (folder / STABLE).exists():
        raise FileExistsError(f"{folder} is complete already; a complete batch is never rewritten")
    if folder.exists():
        shutil.rmtree(folder)  # an incomplete leftover of a killed orchestrator
    folder.mkdir(parents=True)
    tmp = folder / (ROLLOUTS_FILE + ".tmp")
    with tmp.open("w") as fh:
        for sample in samples:
            fh.write(json.dumps(sample, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / ROLLOUTS_FILE)
    (folder / STABLE).write_text("")
    return folder


def read_rollouts(run_dir: str | Path, step: int) -> list[dict[str, Any]]:
    folder = rollouts_dir(run_dir, step)
    with (folder / ROLLOUTS_FILE).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (one write call, so lines of concurrent writers do not interleave)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record, separators=(",", ":")) + "\n")


def read_jsonl(path: str | Path, role: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics file (optionally of one role); a torn last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (role is None or record.get("role") == role):
            out.append(record)
    return out


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
