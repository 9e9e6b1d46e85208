"""Our launches: an index (state dir ``launches.jsonl``) joined with Slurm's view and the run directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from intellect.errors import IntellectError, SlurmError
from intellect.rl import layout
from intellect.rl.failure import read_causes
from intellect.slurm import run as slurm
from intellect.slurm.nodes import query_jobs
from intellect.slurm.ops import state_dir

INDEX = "launches.jsonl"


def remember(record: dict[str, Any], run_dir: str) -> None:
    entry = {k: record[k] for k in ("job_id", "executor", "name", "user", "submitted_at")}
    entry["run_dir"] = run_dir
    with (state_dir() / INDEX).open("a") as fh:
        fh.write(json.dumps(entry) + "\n")


def launches() -> list[dict[str, Any]]:
    path = state_dir() / INDEX
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def find(job_id: str) -> dict[str, Any]:
    for entry in reversed(launches()):
        if entry["job_id"] == job_id:
            return entry
    raise IntellectError(f"job {job_id} is not one of our launches", hint="intellect jobs --all")


def placement(run_dir: str) -> dict[str, list[str]]:
    """Which nodes held which role, as the batch script recorded it (``status/placement``)."""
    path = layout.status_dir(run_dir) / "placement"
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("trainer", "inference", "orchestrator"):
            out[key] = value.split()
    return out


def list_jobs(user: str | None = None, all_jobs: bool = False) -> list[dict[str, Any]]:
    """Our launches with Slurm state and the role split. Active ones only unless ``all_jobs``."""
    ours = [e for e in launches() if not user or e.get("user") == user]
    slurm_ids = [e["job_id"] for e in ours if e["executor"] == "slurm"]
    live = {j.job_id: j for j in query_jobs(all_users=True)} if slurm_ids else {}
    rows = []
    for entry in ours:
        job = live.get(entry["job_id"]) if entry["executor"] == "slurm" else None
        state = job.state if job else _final_state(entry["run_dir"])
        if not all_jobs and job is None:
            continue
        rows.append(
            {
                **entry,
                "state": state,
                "nodelist": job.nodelist if job else [],
                "elapsed": job.elapsed if job else None,
                "roles": placement(entry["run_dir"]),
                "causes": read_causes(entry["run_dir"]),
            }
        )
    return rows


def _final_state(run_dir: str) -> str:
    path = layout.status_dir(run_dir) / "run.exit"
    try:
        code = path.read_text().strip()
    except OSError:
        return "UNKNOWN"
    return "COMPLETED" if code == "0" else f"FAILED({code})"


def log_path(job_id: str, role: str, rank: int) -> Path:
    entry = find(job_id)
    path = Path(entry["run_dir"]) / "logs" / f"{role}-{rank}.log"
    if not path.exists():
        raise IntellectError(f"no log {path} (yet)", hint=f"ls {Path(entry['run_dir']) / 'logs'}")
    return path


def cancel(job_id: str) -> dict[str, Any]:
    entry = find(job_id)
    if entry["executor"] != "slurm":
        raise IntellectError(f"job {job_id} ran on the local executor; it stops with its launch (Ctrl-C)")
    try:
        slurm.run(["scancel", job_id])
    except SlurmError as exc:
        raise SlurmError(f"scancel {job_id}: {exc.message}") from exc
    return entry


def requeue_on(nodes: list[str]) -> list[str]:
    """Requeue our running launches that hold any of ``nodes``; they restart on healthy nodes and resume
    from their last checkpoint. One squeue call, then one scontrol call per affected job."""
    ours = {e["job_id"] for e in launches() if e["executor"] == "slurm"}
    hit = [
        j.job_id
        for j in query_jobs(all_users=True)
        if j.job_id in ours and j.state == "RUNNING" and set(j.nodelist) & set(nodes)
    ]
    for job_id in hit:
        slurm.run(["scontrol", "requeue", job_id])
    return hit
