"""The server's logprobs are the trainer's (``forward_logprobs``), before, during and after a weight update."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from intellect.recipe import Recipe, validate_recipe
from intellect.rl.inference.server import BackgroundServer, app_for
from intellect.rl.model import CharTokenizer, build_model, forward_logprobs, save_weights

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "debug-cpu.yaml"
PAD = CharTokenizer.pad_token_id
ATOL = 1e-4


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    data = yaml.safe_load(RECIPE.read_text())
    data["run_dir"] = str(tmp_path_factory.mktemp("run"))
    data["model"].update(max_seq_len=96, max_new_tokens=24, dtype="float32")
    return validate_recipe(data)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """As the server process does (``configure_threads``): small matmuls are fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server(recipe: Recipe) -> Iterator[BackgroundServer]:
    with BackgroundServer(app_for(recipe)) as srv:
        yield srv


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


def test_weight_update_mid_generation_drops_nothing(server: BackgroundServer, recipe: Recipe) -> None:
    engine = server.app.state.engine
    old_state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    new_model, _ = build_model(recipe.model.model_copy(update={"seed": 123}))
    step_dir = save_weights(new_model.state_dict(), Path(recipe.run_dir) / "weights" / "step_1")
    bodies = [
        {"prompt": f"{i}: ", "temperature": 1.0, "seed": i, "max_tokens": 80, "ignore_eos": True}
        for i in range(32)
    ]

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        gen = asyncio.create_task(post_all(server.url, bodies))
        while engine.in_flight < 32 or engine.stats.tokens == 0:
            await asyncio.sleep(0.001)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            resp = await c.post("/update_weights", json={"path": str(step_dir), "step": 1})
        return await gen, resp.json()

    choices, answer = asyncio.run(scenario())
    assert answer == {"step": 1}
    assert httpx.get(f"{server.url}/health").json()["weight_step"] == 1
    old_model, _ = build_model(recipe.model)
    old_model.load_state_dict(old_state)
    old_ref = trainer_logprobs(old_model, choices, 1.0, "left")
    new_ref = trainer_logprobs(new_model, choices, 1.0, "right")
    for c, old, new in zip(choices, old_ref, new_ref, strict=True):
        assert len(c["token_ids"]) == 80 and c["weight_steps"] == [-1, 1]
        got = torch.tensor(c["logprobs"]["token_logprobs"])
        k = _split(got, old)
        assert 0 < k < 80, k
        assert torch.allclose(got[k:], new[k:], atol=ATOL), (got[k:] - new[k:]).abs().max()
