"""Online evals: avg@k and pass@k on a scripted server whose correctness is known, the greedy score when asked,
the headline ``eval_accuracy``, and evals asked for faster than they run (delayed, never dropped)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from intellect.rl import layout
from intellect.rl.envs.base import Task
from intellect.rl.orchestrator.client import InferenceClient
from intellect.rl.orchestrator.evals import run_eval
from intellect.rl.orchestrator.fake import CoinFlipEnv, DigitTokenizer
from intellect.rl.orchestrator.rollout import Roller, Sampling
from tests.test_orchestrator import fake_trainer, make_recipe, orchestrator, read_metrics, servers

TOK = DigitTokenizer()
RIGHT, WRONG = TOK.encode("4")[0], TOK.encode("7")[0]  # CoinFlipEnv: a completion starting even is correct
# per prompt: the first token of each of the k=4 sampled completions, and of the greedy one
SCRIPT = {
    "500>": ([RIGHT, RIGHT, RIGHT, RIGHT], RIGHT),
    "501>": ([RIGHT, WRONG, WRONG, WRONG], WRONG),
    "502>": ([WRONG, WRONG, WRONG, WRONG], RIGHT),
}


class Scripted:
    """An inference server answering from ``SCRIPT`` (greedy at temperature 0); it keeps every request body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "weight_step": 3})
        body = json.loads(request.content)
        self.bodies.append(body)
        sampled, greedy = SCRIPT[TOK.decode(body["prompt"])]
        firsts = [greedy] if body["temperature"] == 0.0 else sampled[: body["n"]]
        choices = [
            {
                "index": i,
                "text": "",
                "finish_reason": "stop",
                "token_ids": [first, TOK.eos_token_id],
                "logprobs": {"token_logprobs": [-0.5, -0.1]},
            }
            for i, first in enumerate(firsts)
        ]
        return httpx.Response(200, json={"choices": choices})


def _items() -> list[tuple[str, CoinFlipEnv, Task]]:
    env = CoinFlipEnv()
    task = {t.prompt: t for t in env.tasks("eval")[:3]}
    return [("a", env, task["500>"]), ("a", env, task["501>"]), ("b", env, task["502>"])]


@pytest.mark.parametrize("greedy", [False, True])
def test_avg_and_pass_at_k_on_a_scripted_server(greedy: bool) -> None:
    server = Scripted()

    async def go() -> Any:
        client = InferenceClient(["http://s:1"], transport=httpx.MockTransport(server))
        await client.wait_healthy(5)
        roller = Roller(client, TOK, Sampling(max_new_tokens=4, max_seq_len=32, temperature=0.7))
        try:
            return await run_eval(roller, _items(), step=3, k=4, greedy=greedy)
        finally:
            await client.aclose()

    result = asyncio.run(go())
    record = result.record()
    # sampled: 4 + 1 + 0 correct of 12; prompts with one correct: 2 of 3; greedy: right, wrong, right
    assert record["eval_avg_at_k"] == pytest.approx(5 / 12)
    assert record["eval_pass_at_k"] == pytest.approx(2 / 3)
    assert record["eval_k"] == 4 and record["eval_prompts"] == 3
    per_env = record["eval_per_env"]
    assert per_env["a"]["avg_at_k"] == pytest.approx(5 / 8) and per_env["a"]["pass_at_k"] == 1.0
    assert per_env["b"]["avg_at_k"] == 0.0 and per_env["b"]["pass_at_k"] == 0.0
    sampled = [b for b in server.bodies if b["temperature"] != 0.0]
    assert len(sampled) == 3 and all(b["n"] == 4 and b["temperature"] == 0.7 for b in sampled)
    assert all(b["top_p"] == 1.0 and b["top_k"] == -1 and b["min_p"] == 0.0 for b in sampled)
    greedy_bodies = [b for b in server.bodies if b["temperature"] == 0.0]
    if greedy:
        assert [b["n"] for b in greedy_bodies] == [1, 1, 1]
        assert record["eval_greedy"] == pytest.approx(2 / 3)
        assert per_env["a"]["greedy"] == 0.5 and per_env["b"]["greedy"] == 1.0
        assert record["eval_accuracy"] == record["eval_greedy"]  # the headline is greedy when asked for
        assert record["eval_samples"] == 12 + 3
    else:
        assert greedy_bodies == [] and record["eval_greedy"] is None
        assert record["eval_accuracy"] == pytest.approx(5 / 12)  # else avg@k
        assert per_env["a"]["greedy"] is None and record["eval_samples"] == 12
    assert record["eval_weight_steps"] == [3, 3] and record["eval_failed"] == 0


def test_evals_asked_for_faster_than_they_run_are_delayed_never_dropped(tmp_path: Path) -> None:
    """Ten weight pushes while the first eval is still running: the pushes are not held up, and every eval
    asked for runs once, in order, after the one before it."""
    recipe = make_recipe(tmp_path, steps=20, every=1)
    orch = orchestrator(recipe, servers(1, latency=lambda rng: 0.0))
    started: list[int] = []
    finished: list[int] = []
    gate = asyncio.Event()

    async def slow_eval(step: int) -> None:
        started.append(step)
        await gate.wait()
        finished.append(step)

    async def go() -> None:
        await orch.open()
        orch.evaluate = slow_eval  # type: ignore[method-assign]
        worker = asyncio.create_task(orch.eval_worker())
        try:
            for step in range(11):  # 0 is the first push (the eval before runs apart): 1..10 are asked for
                await orch.push(step)
                await asyncio.sleep(0)  # the worker takes what it can
            assert started == [1] and finished == []  # the first eval still runs; the pushes went through
            gate.set()
            await asyncio.wait_for(orch.eval_q.join(), timeout=30)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            await orch.close()

    asyncio.run(go())
    assert finished == started == list(range(1, 11))


def test_orchestrator_reports_k_samples_and_greedy(tmp_path: Path) -> None:
    steps = 4
    recipe = make_recipe(tmp_path, steps=steps, every=2, evals={"k": 3, "greedy": True})
    cluster = servers(1, latency=lambda rng: 0.002)
    bodies: list[dict[str, Any]] = []

    async def spy(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            bodies.append(json.loads(request.content))
        return await cluster.transport.handle_async_request(request)

    orch = orchestrator(recipe, cluster)
    orch.transport = httpx.MockTransport(spy)

    async def both() -> tuple[dict[str, Any], list[int]]:
        return await asyncio.gather(orch.run(), fake_trainer(tmp_path, steps))

    summary, _ = asyncio.run(both())
    evals = [r for r in read_metrics(tmp_path) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == sorted({r["step"] for r in evals}) and evals[0]["step"] == 0
    assert evals[-1]["step"] == steps
    for r in evals:
        assert r["eval_k"] == 3 and r["eval_prompts"] == 8 and r["eval_samples"] == 8 * 3 + 8
        assert r["eval_greedy"] is not None and r["eval_accuracy"] == r["eval_greedy"]
        assert 0.0 <= r["eval_avg_at_k"] <= r["eval_pass_at_k"] <= 1.0
    assert summary["eval_after"] == evals[-1]["eval_greedy"]
    eval_prompts = {tuple(TOK.encode(t.prompt, True)) for t in CoinFlipEnv().tasks("eval")[:8]}
    asked = [b for b in bodies if tuple(b["prompt"]) in eval_prompts]
    temperature = recipe.algorithm.temperature
    assert {(b["n"], b["temperature"]) for b in asked} == {(3, temperature), (1, 0.0)}
    assert sum(b["n"] == 3 for b in asked) == 8 * len(evals)
    assert layout.summary_path(tmp_path).exists()
