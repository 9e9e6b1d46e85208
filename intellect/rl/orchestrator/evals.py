"""Online evals: greedy (temperature 0) on held-out tasks, accuracy = mean(Score.correct).

A failed sample counts as incorrect and is reported in ``failed``.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from intellect.rl.envs.base import Environment, Task
    from intellect.rl.orchestrator.rollout import Roller


@dataclass
class EvalResult:
    step: int
    accuracy: float
    samples: int
    failed: int
    weight_steps: list[int]
    per_env: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "role": "orchestrator",
            "kind": "eval",
            "step": self.step,
            "eval_accuracy": self.accuracy,
            "eval_samples": self.samples,
            "eval_failed": self.failed,
            "eval_weight_steps": self.weight_steps,
            "eval_per_env": self.per_env,
            "eval_seconds": round(self.seconds, 3),
        }


def eval_items(
    envs: Sequence[tuple[str, Environment, Sequence[Task]]], samples: int
) -> list[tuple[str, Environment, Task]]:
    """Up to ``samples`` held-out tasks, taken round-robin over the eval environments (deterministic)."""
    out: list[tuple[str, Environment, Task]] = []
    depth = 0
    while len(out) < samples:
        added = False
        for name, env, tasks in envs:
            if depth < len(tasks) and len(out) < samples:
                out.append((name, env, tasks[depth]))
                added = True
        if not added:
            break
        depth += 1
    return out


async def run_eval(
    roller: Roller, items: Sequence[tuple[str, Environment, Task]], step: int, concurrency: int = 64
) -> EvalResult:
    """Greedy samples of every item on weights >= ``step``."""
    start = time.monotonic()
    gate = asyncio.Semaphore(concurrency)

    async def one(env: Environment, task: Task) -> Any:
        async with gate:
            return (await roller.group(env, task, 1, min_step=step, temperature=0.0))[0]

    results = await asyncio.gather(*(one(env, task) for _, env, task in items))
    by_env: dict[str, list[bool]] = defaultdict(list)
    steps: list[int] = []
    for (name, _, _), r in zip(items, results, strict=True):
        by_env[name].append(bool(r.correct) and not r.failed)
        steps += [x for x in (r.first, r.last) if x is not None]
    flat = [c for v in by_env.values() for c in v]
    return EvalResult(
        step=step,
        accuracy=sum(flat) / len(flat) if flat else 0.0,
        samples=len(flat),
        failed=sum(r.failed for r in results),
        weight_steps=[min(steps), max(steps)] if steps else [step, step],
        per_env={k: sum(v) / len(v) for k, v in by_env.items()},
        seconds=time.monotonic() - start,
    )
