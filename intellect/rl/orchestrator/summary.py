"""summary.json from the orchestrator's metrics records (so a resumed run summarises all its steps)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def summarize(
    records: Sequence[dict[str, Any]], steps: int, eval_after: float | None, wall_time: float, few: int = 5
) -> dict[str, Any]:
    """Rewards over the first/last ``few`` steps (at most half the steps each), evals, drop counts."""
    by_step = {r["step"]: r for r in records if r.get("kind") == "step"}
    ordered = [by_step[s] for s in sorted(by_step)]
    rewards = [float(r["reward_mean"]) for r in ordered]
    n = max(1, min(few, len(rewards) // 2))
    evals = [r for r in records if r.get("kind") == "eval"]
    before = next((r["eval_accuracy"] for r in evals if r.get("step") == 0), None)
    return {
        "steps": steps,
        "steps_recorded": len(ordered),
        "reward_first": sum(rewards[:n]) / n if rewards else None,
        "reward_last": sum(rewards[-n:]) / n if rewards else None,
        "eval_before": before,
        "eval_after": eval_after,
        "evals": [[r["step"], r["eval_accuracy"]] for r in evals],
        "dropped_stale": sum(int(r.get("dropped_stale", 0)) for r in ordered),
        "dropped_off_policy": sum(int(r.get("dropped_off_policy", 0)) for r in ordered),
        "dropped_zero_adv": sum(int(r.get("dropped_zero_adv", 0)) for r in ordered),
        "failed": sum(int(r.get("failed", 0)) for r in ordered),
        "wall_time": round(wall_time, 3),
    }
