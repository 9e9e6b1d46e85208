"""Continuous refill vs static batches, against a fake inference server with long-tailed latency.

Both runs use the real Orchestrator (async level 1, same servers, same instant fake trainer); only the refill
policy differs:
- continuous: ``prompts_per_step x (1 + k)`` groups in flight, a slot refilled the moment its group finishes;
- static: one batch of groups at a time, the next started only when the whole batch has finished.
Most requests take ``--short`` seconds and ``--tail`` of them 10x as long. The server decodes at most
``--capacity`` requests at once (its max batch); the rest queue.

    .venv/bin/python bench/continuous_batching.py            # prints the throughput ratio (goal >= 1.5x)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from intellect.recipe import Recipe, validate_recipe
from intellect.rl import layout
from intellect.rl.orchestrator.fake import CoinFlipEnv, DigitTokenizer, FakeCluster, FakeServer
from intellect.rl.orchestrator.loop import Orchestrator


class StaticBatches(Orchestrator):
    """The baseline: start one batch's groups, wait until every one has finished, then the next batch."""

    async def refill(self) -> None:
        while True:
            target = await self.next_target()
            for _ in range(self.planner.per_batch - self.planner.planned(target)):
                await self.slots.acquire()
                self.start_group(target)
            while self.planner.groups_in_flight:
                self.changed.clear()
                await self.changed.wait()


def recipe(run_dir: Path, steps: int, prompts: int, group: int) -> Recipe:
    return validate_recipe(
        {
            "name": "bench-continuous",
            "cluster": {"nodes": 2, "gpus_per_node": 0},
            "roles": {"trainer": {"nodes": 1}, "inference": {"nodes": 1, "backend": "embedded"}},
            "model": {"name": "tiny-char-llama", "max_seq_len": 32, "max_new_tokens": 6},
            "algorithm": {
                "steps": steps,
                "batch_size": prompts * group,
                "rollouts_per_prompt": group,
                "max_async_level": 1,
                "max_off_policy_steps": 2,
                "learning_rate": 1e-3,
            },
            "environments": [{"name": "coin-flip"}],
            "run_dir": str(run_dir),
        }
    )


async def trainer(run_dir: Path, steps: int) -> None:
    for step in range(steps + 1):
        if step:
            while not (layout.rollouts_dir(run_dir, step) / layout.STABLE).exists():
                await asyncio.sleep(0.005)
        folder = layout.weights_dir(run_dir, step)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / layout.STABLE).write_text("")


async def one_run(cls: type[Orchestrator], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    def latency(rng: random.Random) -> float:
        return args.short * (10 if rng.random() < args.tail else 1)

    server = FakeServer(
        "http://fake:8000",
        DigitTokenizer.alphabet,
        eos=2,
        latency=latency,
        capacity=args.capacity,
        rng=random.Random(seed),
    )
    cluster = FakeCluster([server])
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        orch = cls(
            recipe(run_dir, args.steps, args.prompts, args.group),
            cluster.urls,
            transport=cluster.transport,
            tokenizer=DigitTokenizer(),
            env_factory=lambda spec: CoinFlipEnv(size=1000),
            metrics_port=-1,
            poll_s=0.005,
        )
        start = time.perf_counter()
        await asyncio.gather(orch.run(), trainer(run_dir, args.steps))
        wall = time.perf_counter() - start
    samples = args.steps * args.prompts * args.group
    return {"wall": wall, "samples_per_s": samples / wall, "requests": server.served}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="rollouts per prompt")
    parser.add_argument("--short", type=float, default=0.02, help="latency of a usual request (s)")
    parser.add_argument("--tail", type=float, default=0.1, help="share of requests 10x as long")
    parser.add_argument("--capacity", type=int, default=16, help="requests the server decodes at once")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import contextlib
    import io

    results: dict[str, list[dict[str, Any]]] = {"static": [], "continuous": []}
    for seed in range(args.repeats):
        for name, cls in (("static", StaticBatches), ("continuous", Orchestrator)):
            with contextlib.redirect_stdout(io.StringIO()):  # the per-step progress lines
                results[name].append(asyncio.run(one_run(cls, args, seed)))
    best = {k: max(r["samples_per_s"] for r in v) for k, v in results.items()}
    for name, runs in results.items():
        walls = ", ".join(f"{r['wall']:.2f}" for r in runs)
        print(f"{name:>10}: {best[name]:7.1f} samples/s (best of {args.repeats}; wall s: {walls})")
    print(f"continuous / static throughput: {best['continuous'] / best['static']:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
