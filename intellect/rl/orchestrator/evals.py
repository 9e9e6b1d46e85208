"""Online evals on held-out tasks: k samples per prompt at the rollouts' sampling settings, optionally one greedy.

Each eval prompt gets one request with n = ``evals.k`` at ``algorithm.temperature`` and the pinned sampling
parameters ``Roller`` sends for rollouts. avg@k is the mean correctness (``Score.correct``) over every prompt's k
samples; pass@k the fraction of prompts with at least one correct sample; both overall and per environment. With
``evals.greedy`` each prompt also gets one greedy sample (temperature 0), reported as ``greedy``. The headline
``accuracy`` (``eval_accuracy`` in metrics.jsonl, read by the summary and the progress line) is the greedy score
when it was asked for, else avg@k. A failed sample counts as incorrect and is reported in ``failed``.
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
    from intellect.rl.orchestrator.rollout import Roller, SampleResult


@dataclass
class Scores:
    """avg@k, pass@k and the greedy score (None when not asked for) of a set of prompts."""

    avg_at_k: float
    pass_at_k: float
    greedy: float | None

    @property
    def accuracy(self) -> float:
        """The headline figure: greedy when it was asked for, else avg@k."""
        return self.greedy if self.greedy is not None else self.avg_at_k

    def to_json(self) -> dict[str, float | None]:
        return {
            "accuracy": self.accuracy,
            "avg_at_k": self.avg_at_k,
            "pass_at_k": self.pass_at_k,
            "greedy": self.greedy,
        }


@dataclass
class EvalResult:
    step: int
    k: int
    scores: Scores
    prompts: int
    samples: int  # completions scored: prompts x k, plus one per prompt when greedy
    failed: int
    weight_steps: list[int]
    per_env: dict[str, Scores] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.scores.accuracy

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl line of this eval."""
        return {
            "role": "orchestrator",
            "kind": "eval",
            "step": self.step,
            "eval_accuracy": self.accuracy,
            "eval_avg_at_k": self.scores.avg_at_k,
            "eval_pass_at_k": self.scores.pass_at_k,
            "eval_k": self.k,
            "eval_greedy": self.scores.greedy,
            "eval_prompts": self.prompts,
            "eval_samples": self.samples,
            "eval_failed": self.failed,
            "eval_weight_steps": self.weight_steps,
            "eval_per_env": {name: s.to_json() for name, s in self.per_env.items()},
            "eval_seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        """One line for stdout."""
        greedy = "" if self.scores.greedy is None else f", greedy {self.scores.greedy:.3f}"
        return (
            f"eval at weights {self.step}: accuracy {self.accuracy:.3f} (avg@{self.k} {self.scores.avg_at_k:.3f}, "
            f"pass@{self.k} {self.scores.pass_at_k:.3f}{greedy}; {self.prompts} prompts)"
        )


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


def correct(result: SampleResult) -> bool:
    return bool(result.correct) and not result.failed


def scores(sampled: Sequence[Sequence[SampleResult]], greedy: Sequence[SampleResult] | None) -> Scores:
    """avg@k, pass@k (and greedy) of prompts given their k samples each (pure)."""
    flat = [correct(r) for group in sampled for r in group]
    return Scores(
        avg_at_k=sum(flat) / len(flat) if flat else 0.0,
        pass_at_k=sum(any(correct(r) for r in g) for g in sampled) / len(sampled) if sampled else 0.0,
        greedy=None if greedy is None else (sum(map(correct, greedy)) / len(greedy) if greedy else 0.0),
    )


async def run_eval(
    roller: Roller,
    items: Sequence[tuple[str, Environment, Task]],
    step: int,
    k: int = 1,
    greedy: bool = False,
    concurrency: int = 64,
) -> EvalResult:
    """k samples (one request, n=k, at the roller's temperature) and, when ``greedy``, one greedy sample of every
    item, all on weights >= ``step``."""
    start = time.monotonic()
    gate = asyncio.Semaphore(concurrency)

    async def ask(env: Environment, task: Task, n: int, temperature: float | None) -> list[SampleResult]:
        async with gate:
            return await roller.group(env, task, n, min_step=step, temperature=temperature)

    asks = [ask(env, task, k, None) for _, env, task in items]
    if greedy:
        asks += [ask(env, task, 1, 0.0) for _, env, task in items]
    answers = await asyncio.gather(*asks)
    sampled = answers[: len(items)]
    firsts = [a[0] for a in answers[len(items) :]] if greedy else None
    by_env: dict[str, list[int]] = defaultdict(list)
    for i, (name, _, _) in enumerate(items):
        by_env[name].append(i)
    everything = [r for g in sampled for r in g] + (firsts or [])
    steps = [x for r in everything for x in (r.first, r.last) if x is not None]
    return EvalResult(
        step=step,
        k=k,
        scores=scores(sampled, firsts),
        prompts=len(items),
        samples=len(everything),
        failed=sum(r.failed for r in everything),
        weight_steps=[min(steps), max(steps)] if steps else [step, step],
        per_env={
            name: scores([sampled[i] for i in idx], None if firsts is None else [firsts[i] for i in idx])
            for name, idx in by_env.items()
        },
        seconds=time.monotonic() - start,
    )
