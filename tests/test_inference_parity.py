"""The server's logprobs are the trainer's (``forward_logprobs``), before, during and after a weight update.

An update that lands mid-generation keeps the KV cache of the sequences in flight (the default): the tokens
sampled after it are what the new weights give over the old weights' keys/values, and the completion is tagged
with both weight steps. With ``kv_on_update="recompute"`` they are what the new weights give from scratch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F
import yaml

from intellect.recipe import Recipe, validate_recipe
from intellect.rl.inference.server import BackgroundServer
from intellect.rl.model import CharTokenizer, build_model, forward_cached, forward_logprobs, save_weights

pytest_plugins = ["tests.inference_fixtures"]  # the one_thread and server fixtures
pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "debug-cpu.yaml"
PAD = CharTokenizer.pad_token_id
ATOL = 1e-4


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    data = yaml.safe_load(RECIPE.read_text())
    data["run_dir"] = str(tmp_path_factory.mktemp("run"))
    data["model"].update(max_seq_len=96, max_new_tokens=24, dtype="float32")
    return validate_recipe(data)


async def post_all(url: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        resps = await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in resps), [r.text for r in resps]
    return [r.json()["choices"][0] for r in resps]


def trainer_logprobs(
    model: torch.nn.Module, choices: list[dict[str, Any]], temperature: float, side: str
) -> list[torch.Tensor]:
    """``forward_logprobs`` over one padded batch of prompt+completion; each row's completion part."""
    seqs = [c["prompt_token_ids"] + c["token_ids"] for c in choices]
    width = max(len(s) for s in seqs)
    rows, masks = [], []
    for s in seqs:
        pad = [PAD] * (width - len(s))
        ones, zeros = [1] * len(s), [0] * len(pad)
        rows.append(pad + s if side == "left" else s + pad)
        masks.append(zeros + ones if side == "left" else ones + zeros)
    ids, mask = torch.tensor(rows), torch.tensor(masks)
    with torch.no_grad():
        lp = forward_logprobs(model, ids, mask, temperature=temperature)
    out = []
    for row, (s, c) in enumerate(zip(seqs, choices, strict=True)):
        offset = width - len(s) if side == "left" else 0
        start = offset + len(c["prompt_token_ids"]) - 1
        out.append(lp[row, start : start + len(c["token_ids"])])
    return out


def test_logprobs_match_the_trainer_in_a_mixed_batch(server: BackgroundServer) -> None:
    prompts = ["1", "12+3=", "reverse 98765:", "a much longer prompt, to pad the others"]
    temps = [1.0, 0.7, 0.0]
    bodies = [
        {"prompt": p, "temperature": t, "seed": i, "max_tokens": 6 + 3 * (i % 5), "ignore_eos": True}
        for i, (p, t) in enumerate((p, t) for p in prompts for t in temps)
    ]
    choices = asyncio.run(post_all(server.url, bodies))
    model = server.app.state.engine.model
    for temp in temps:
        group = [c for c, b in zip(choices, bodies, strict=True) if b["temperature"] == temp]
        for side in ("left", "right"):
            ref = trainer_logprobs(model, group, temp or 1.0, side)
            for c, r in zip(group, ref, strict=True):
                got = torch.tensor(c["logprobs"]["token_logprobs"])
                assert torch.allclose(got, r, atol=ATOL), (temp, side, (got - r).abs().max())


def _split(got: torch.Tensor, old: torch.Tensor) -> int:
    """How many leading tokens the old weights explain."""
    close = (got - old).abs() <= ATOL
    return int(close.long().cumprod(0).sum())


def kept_cache_logprobs(
    old: torch.nn.Module, new: torch.nn.Module, choice: dict[str, Any], k: int
) -> torch.Tensor:
    """Logprobs of the completion's tokens k.. when the update landed after k sampled tokens: the cache of the
    prompt and the first k-1 tokens comes from the old weights, the rest is decoded by the new ones (T = 1)."""
    prompt, out = choice["prompt_token_ids"], choice["token_ids"]
    context = prompt + out[: k - 1]
    with torch.no_grad():
        _, cache = forward_cached(old, None, input_ids=torch.tensor([context]))
        rest = torch.tensor([out[k - 1 : -1]])
        pos = torch.arange(len(context), len(context) + rest.shape[1]).unsqueeze(0)
        logits = forward_cached(new, cache, input_ids=rest, position_ids=pos)[0][0]
    return F.log_softmax(logits.float(), -1).gather(-1, torch.tensor(out[k:]).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize(("mode", "step"), [("keep", 1), ("recompute", 2)])
def test_weight_update_mid_generation_drops_nothing(
    server: BackgroundServer, recipe: Recipe, mode: str, step: int
) -> None:
    engine = server.app.state.engine
    before = engine.weight_step
    old_model, _ = build_model(recipe.model)
    old_model.load_state_dict({k: v.clone() for k, v in engine.model.state_dict().items()})
    new_model, _ = build_model(recipe.model.model_copy(update={"seed": 100 + step}))
    step_dir = save_weights(new_model.state_dict(), Path(recipe.run_dir) / "weights" / f"step_{step}")
    bodies = [
        {"prompt": f"{i}: ", "temperature": 1.0, "seed": i, "max_tokens": 80, "ignore_eos": True}
        for i in range(32)
    ]

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        gen = asyncio.create_task(post_all(server.url, bodies))
        while engine.in_flight < 32 or engine.stats.tokens == tokens0:
            await asyncio.sleep(0.001)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            resp = await c.post("/update_weights", json={"path": str(step_dir), "step": step})
        return await gen, resp.json()

    engine.kv_on_update, tokens0, recomputes0 = mode, engine.stats.tokens, engine.stats.recomputes
    try:
        choices, answer = asyncio.run(scenario())
    finally:
        engine.kv_on_update = "keep"
    assert answer == {"step": step}
    assert httpx.get(f"{server.url}/health").json()["weight_step"] == step
    assert engine.stats.recomputes - recomputes0 == (1 if mode == "recompute" else 0)
    old_ref = trainer_logprobs(old_model, choices, 1.0, "left")
    fresh_ref = trainer_logprobs(new_model, choices, 1.0, "right")
    kept_differs = False
    for c, old, fresh in zip(choices, old_ref, fresh_ref, strict=True):
        assert len(c["token_ids"]) == 80 and c["weight_steps"] == [before, step]
        got = torch.tensor(c["logprobs"]["token_logprobs"])
        k = _split(got, old)
        assert 0 < k < 80, k
        ref = fresh if mode == "recompute" else kept_cache_logprobs(old_model, new_model, c, k)
        assert torch.allclose(got[k:], ref[k:] if mode == "recompute" else ref, atol=ATOL), mode
        kept_differs |= not torch.allclose(got[k:], fresh[k:], atol=ATOL)
    assert kept_differs == (mode == "keep")  # the two modes are told apart by this test
