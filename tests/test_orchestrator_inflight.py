"""The orchestrator against the real embedded server (in-process, loopback HTTP) and a stand-in trainer that
publishes real weight files while sequences are decoding: updates land mid-generation, no request is dropped or
retried, every batch keeps the async bound, and the samples an update hit carry both weight steps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from intellect.recipe import Recipe, validate_recipe
from intellect.rl import layout
from intellect.rl.envs.base import Environment, Rubric, Task, Turn
from intellect.rl.inference.engine import Engine
from intellect.rl.inference.server import BackgroundServer, app_for
from intellect.rl.model import build_model, save_weights
from intellect.rl.orchestrator.loop import Orchestrator

pytest_plugins = ["tests.inference_fixtures"]  # the one_thread fixture
pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "debug-cpu.yaml"

STEPS, K = 4, 1


def odd_first(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    return float(bool(completion) and ord(completion[0]) % 2 == 1)


class OddFirst(Environment):
    """Reward 1 when the completion starts with a character of odd code: about half of a random model's."""

    name = "odd-first"

    def __init__(self) -> None:
        super().__init__()
        self.rubric = Rubric([(odd_first, 1.0)])

    def tasks(self, split: str = "train") -> Sequence[Task]:
        base = 0 if split == "train" else 500
        return [Task(id=f"o{base + i}", prompt=f"{base + i:03d}>", answer=None) for i in range(100)]


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    data = yaml.safe_load(RECIPE.read_text())
    data["run_dir"] = str(tmp_path)
    data["model"].update(max_seq_len=64, max_new_tokens=48)
    data["algorithm"].update(
        steps=STEPS, batch_size=32, rollouts_per_prompt=8, max_async_level=K, max_off_policy_steps=2
    )
    data["algorithm"]["pretrain"] = {"steps": 0}
    data["evals"].update(every=0, samples=4)
    return validate_recipe(data)


async def stand_in_trainer(recipe: Recipe, engine: Engine) -> None:
    """weights/step_0, then weights/step_N once rollouts/step_N is complete, published while the server decodes
    (so that the update lands mid-generation); each step's weights differ (a random nudge)."""
    run_dir = Path(recipe.run_dir)
    model, _ = build_model(recipe.model)
    gen = torch.Generator().manual_seed(0)
    for step in range(STEPS + 1):
        if step > 0:
            while not (layout.rollouts_dir(run_dir, step) / layout.STABLE).exists():
                await asyncio.sleep(0.005)
            for _ in range(2000):  # up to 2 s: the last batch leaves nothing in flight
                if engine.in_flight:
                    break
                await asyncio.sleep(0.001)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        await asyncio.to_thread(save_weights, state, layout.weights_dir(run_dir, step))


def test_in_flight_updates_drop_nothing_and_tag_both_steps(recipe: Recipe) -> None:
    with BackgroundServer(app_for(recipe)) as server:
        engine = server.app.state.engine
        orch = Orchestrator(
            recipe, [server.url], env_factory=lambda spec: OddFirst(), metrics_port=-1, poll_s=0.01
        )

        async def both() -> tuple[dict[str, Any], None]:
            return await asyncio.gather(orch.run(), stand_in_trainer(recipe, engine))

        summary, _ = asyncio.run(both())
    assert summary["failed"] == 0 and orch.client.retries == 0
    assert engine.stats.updates == STEPS + 1 and engine.stats.recomputes == 0
    spans = []
    for n in range(1, STEPS + 1):
        samples = layout.read_batch(recipe.run_dir, n)
        assert len(samples) == recipe.algorithm.batch_size
        for s in samples:
            first, last = s.weight_steps
            assert n - 1 - K <= first <= last <= n - 1
            assert len(s.completion_ids) == len(s.completion_logprobs) >= 1
            spans.append(last - first)
    assert max(spans) >= 1, "no update landed mid-generation"
