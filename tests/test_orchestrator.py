"""The orchestrator end to end against fake inference servers (httpx.MockTransport) and a fake trainer that
writes weights/step_N/STABLE when rollouts/step_N appear. No model, no torch."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from intellect.recipe import Recipe, validate_recipe
from intellect.rl import layout
from intellect.rl.orchestrator.__main__ import main as cli_main
from intellect.rl.orchestrator.fake import CoinFlipEnv, DigitTokenizer, FakeCluster, FakeServer
from intellect.rl.orchestrator.loop import Orchestrator


def make_recipe(
    run_dir: Path,
    steps: int = 6,
    k: int = 1,
    every: int = 2,
    off: int | None = None,
    evals: dict[str, Any] | None = None,
) -> Recipe:
    return validate_recipe(
        {
            "name": "orch-test",
            "cluster": {"nodes": 2, "gpus_per_node": 0},
            "roles": {"trainer": {"nodes": 1}, "inference": {"nodes": 1, "backend": "embedded"}},
            "model": {"name": "tiny-char-llama", "max_seq_len": 32, "max_new_tokens": 6},
            "algorithm": {
                "steps": steps,
                "batch_size": 16,
                "rollouts_per_prompt": 4,
                "max_async_level": k,
                "max_off_policy_steps": max(k, 2) if off is None else off,
                "learning_rate": 1e-3,
            },
            "environments": [{"name": "coin-flip"}],
            "evals": {"every": every, "samples": 8, "environments": [{"name": "coin-flip"}], **(evals or {})},
            "run_dir": str(run_dir),
        }
    )


def servers(n: int, latency: Any, restart_step: int | None = 0) -> FakeCluster:
    alphabet = [3 + i for i in range(10)]
    return FakeCluster(
        [
            FakeServer(
                f"http://inf-{i}:8000",
                alphabet,
                eos=2,
                latency=latency,
                restart_step=restart_step,
                rng=random.Random(i),
            )
            for i in range(n)
        ]
    )


async def until_busy(cluster: FakeCluster, tries: int = 200) -> None:
    """Until a server has requests in flight (at most ``tries`` ms)."""
    for _ in range(tries):
        if any(s.inflight for s in cluster.servers.values()):
            return
        await asyncio.sleep(0.001)


async def fake_trainer(
    run_dir: Path, steps: int, train_s: float = 0.02, start: int = 0, busy: FakeCluster | None = None
) -> list[int]:
    """Writes weights/step_0, then weights/step_N after rollouts/step_N is complete; returns batch sizes. With
    ``busy``, each step's weights are published while a server has requests in flight, so that the update lands
    mid-generation (after 0.2 s without, anyway: then every group waits for these weights)."""
    sizes = []
    for step in range(start, steps + 1):
        if step > 0:
            while not (layout.rollouts_dir(run_dir, step) / layout.STABLE).exists():
                await asyncio.sleep(0.01)
            sizes.append(len(layout.read_batch(run_dir, step)))
            await asyncio.sleep(train_s)
            if busy is not None:
                await until_busy(busy)
        folder = layout.weights_dir(run_dir, step)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / layout.STABLE).write_text("")
    return sizes


def orchestrator(recipe: Recipe, cluster: FakeCluster, **kw: Any) -> Orchestrator:
    return Orchestrator(
        recipe,
        cluster.urls,
        transport=cluster.transport,
        tokenizer=DigitTokenizer(),
        env_factory=lambda spec: CoinFlipEnv(),
        metrics_port=kw.pop("metrics_port", -1),
        metrics_addr="127.0.0.1",
        poll_s=0.01,
        client_options={"retry_for_s": 20.0, "probe_every_s": 0.02, "backoff_s": (0.01, 0.1)},
        **kw,
    )


def all_samples(run_dir: Path, steps: int) -> dict[int, list[layout.RolloutSample]]:
    return {n: layout.read_batch(run_dir, n) for n in range(1, steps + 1)}


def check_batches(
    batches: dict[int, list[layout.RolloutSample]], k: int, batch_size: int = 16, group: int = 4
) -> None:
    ids = [s.id for b in batches.values() for s in b]
    assert len(ids) == len(set(ids)), "a sample id appears twice"
    for n, samples in batches.items():
        assert len(samples) == batch_size
        for s in samples:
            first, last = s.weight_steps
            assert first >= n - 1 - k, f"batch {n} holds a sample from weights {first} (bound {n - 1 - k})"
            assert first <= last <= n - 1
            assert len(s.completion_ids) == len(s.completion_logprobs) == len(s.completion_mask)
        groups: dict[str, list[layout.RolloutSample]] = {}
        for s in samples:
            groups.setdefault(s.group, []).append(s)
        assert all(len(g) == group for g in groups.values())
        for g in groups.values():
            assert abs(sum(s.advantage for s in g)) < 1e-6
            assert any(abs(s.advantage) > 0 for s in g), "a zero-advantage group was handed over"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return layout.read_jsonl(run_dir / "metrics.jsonl", "orchestrator")


@pytest.mark.parametrize("k", [0, 1])
def test_async_bound_refill_evals_summary(tmp_path: Path, k: int) -> None:
    steps = 6
    recipe = make_recipe(tmp_path, steps=steps, k=k)
    cluster = servers(2, latency=lambda rng: rng.choice([0.005, 0.01, 0.05]))
    orch = orchestrator(recipe, cluster, metrics_port=0)
    scraped: list[str] = []

    async def scrape() -> None:
        while not (layout.rollouts_dir(tmp_path, 2) / layout.STABLE).exists():
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as http:
            scraped.append((await http.get(f"http://127.0.0.1:{orch.bound_port}/metrics")).text)

    async def both() -> tuple[dict[str, Any], list[int], None]:
        return await asyncio.gather(orch.run(), fake_trainer(tmp_path, steps), scrape())

    summary, sizes, _ = asyncio.run(both())
    assert sizes == [16] * steps
    check_batches(all_samples(tmp_path, steps), k)
    records = read_metrics(tmp_path)
    step_lines = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in step_lines] == list(range(1, steps + 1))
    # continuous batching: groups for later batches start before the first batch is complete
    assert step_lines[0]["groups_started"] > recipe.algorithm.prompts_per_step
    assert all(r["off_policy_lag_max"] <= k for r in step_lines)
    if k == 0:
        assert all(r["off_policy_lag_max"] == 0 for r in step_lines)
    evals = [r["step"] for r in records if r["kind"] == "eval"]
    assert evals[0] == 0 and evals[-1] == steps and 2 in evals
    assert "intellect_orchestrator_reward_mean" in scraped[0]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    assert saved["steps"] == steps and saved["eval_before"] is not None and saved["eval_after"] is not None
    assert saved["dropped_zero_adv"] == sum(r["dropped_zero_adv"] for r in step_lines)


def test_server_killed_and_restarted_loses_no_rollout(tmp_path: Path) -> None:
    steps = 6
    recipe = make_recipe(tmp_path, steps=steps, every=0)
    cluster = servers(2, latency=lambda rng: rng.uniform(0.02, 0.08), restart_step=0)
    victim = cluster.servers["http://inf-0:8000"]
    orch = orchestrator(recipe, cluster)

    async def chaos() -> None:
        while not (layout.rollouts_dir(tmp_path, 2) / layout.STABLE).exists():
            await asyncio.sleep(0.005)
        while victim.inflight == 0:
            await asyncio.sleep(0.001)
        victim.kill()
        await asyncio.sleep(0.3)
        victim.restart()  # comes back on weights 0: the client must bring it up to date before using it

    async def run() -> dict[str, Any]:
        summary, _, _ = await asyncio.gather(orch.run(), fake_trainer(tmp_path, steps), chaos())
        return summary

    summary = asyncio.run(run())
    assert victim.broken > 0, "the kill should have cut requests in flight"
    assert orch.client.retries > 0
    assert victim.updates[-1] == steps and victim.updates.count(0) >= 1
    check_batches(all_samples(tmp_path, steps), k=1)
    assert summary["failed"] == 0


def test_resume_continues_after_last_complete_batch(tmp_path: Path) -> None:
    cluster = servers(1, latency=lambda rng: 0.002)

    async def run(steps: int, start: int) -> None:
        orch = orchestrator(make_recipe(tmp_path, steps=steps, every=0), cluster)
        await asyncio.gather(orch.run(), fake_trainer(tmp_path, steps, start=start))

    asyncio.run(run(3, 0))
    first = all_samples(tmp_path, 3)
    (layout.rollouts_dir(tmp_path, 4)).mkdir(parents=True)  # a batch cut short by a crash: no STABLE
    (layout.rollouts_dir(tmp_path, 4) / layout.ROLLOUTS_FILE).write_text("torn")
    asyncio.run(run(5, 4))
    batches = all_samples(tmp_path, 5)
    assert {n: batches[n] for n in (1, 2, 3)} == first  # complete batches untouched
    check_batches(batches, k=1)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 3, 5]  # no second eval before


@pytest.mark.parametrize("off", [0, 1])
def test_rollouts_spanning_too_many_updates_are_never_trained(tmp_path: Path, off: int) -> None:
    """k=1 with updates landing mid-generation: max_off_policy_steps 0 drops (and redraws) every group an update
    hit, so no trained sample spans an update; at 1 (= k) it never binds."""
    steps = 6
    recipe = make_recipe(tmp_path, steps=steps, k=1, every=0, off=off)
    cluster = servers(2, latency=lambda rng: rng.uniform(0.02, 0.06))
    orch = orchestrator(recipe, cluster)

    async def both() -> tuple[dict[str, Any], list[int]]:
        return await asyncio.gather(orch.run(), fake_trainer(tmp_path, steps, busy=cluster))

    summary, sizes = asyncio.run(both())
    assert sizes == [16] * steps
    batches = all_samples(tmp_path, steps)
    check_batches(batches, k=1)
    spans = [s.weight_steps[1] - s.weight_steps[0] for b in batches.values() for s in b]
    step_lines = [r for r in read_metrics(tmp_path) if r["kind"] == "step"]
    dropped = sum(r["dropped_off_policy"] for r in step_lines)
    assert summary["dropped_off_policy"] == dropped and summary["dropped_stale"] == 0
    if off == 0:
        assert max(spans) == 0, "a sample that spans an update was trained"
        assert dropped > 0, "no update landed mid-generation: the test did not test anything"
    else:
        assert dropped == 0 and max(spans) <= 1


def test_resume_restores_pools_counters_and_redraws_groups_in_flight(tmp_path: Path) -> None:
    """A run stopped right after batch 3 (groups for batch 4 in flight, waiting for weights 2), started again:
    the pools, counters and group numbering continue from the state saved with batch 3, and the groups that
    were in flight are drawn first."""
    cluster = servers(1, latency=lambda rng: 0.002)

    async def stopped_after_batch_3() -> None:
        orch = orchestrator(make_recipe(tmp_path, steps=5, every=0), cluster)
        run = asyncio.create_task(orch.run())
        await fake_trainer(tmp_path, 1)  # weights 0 and 1: batches 1..3 can be made, batch 4 cannot
        # batch 3 and its metrics line (written just after it: a stop in between loses the line, not the batch)
        while not any(r.get("step") == 3 and r["kind"] == "step" for r in read_metrics(tmp_path)):
            await asyncio.sleep(0.005)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(stopped_after_batch_3())
    saved = layout.read_orchestrator_state(tmp_path, 3)
    assert saved is not None and saved["version"] == 1 and saved["batch"] == 3
    in_flight = saved["sampler"]["again"]
    assert in_flight, "groups for batch 4 were in flight when batch 3 was saved"
    trained = {s.group for n in (1, 2, 3) for s in layout.read_batch(tmp_path, n)}
    assert saved["seq"] >= len(trained) + len(in_flight)

    async def opened() -> Orchestrator:
        orch = orchestrator(make_recipe(tmp_path, steps=5, every=0), cluster)
        await orch.open()
        await orch.close()
        return orch

    reopened = asyncio.run(opened())
    assert [[d.env, d.index, d.pool] for d in (reopened.sampler.next() for _ in in_flight)] == in_flight
    assert reopened.pools.state() == saved["pools"]
    assert reopened.counts.to_json() == saved["counts"] and reopened.seq == saved["seq"]

    async def resumed() -> None:
        orch = orchestrator(make_recipe(tmp_path, steps=5, every=0), cluster)
        await asyncio.gather(orch.run(), fake_trainer(tmp_path, 5, start=2))

    asyncio.run(resumed())
    check_batches(all_samples(tmp_path, 5), k=1)
    records = {r["step"]: r for r in read_metrics(tmp_path) if r["kind"] == "step"}
    assert sorted(records) == [1, 2, 3, 4, 5]
    seen = {env: {i for pool in pools.values() for i in pool} for env, pools in saved["pools"].items()}
    after = layout.read_orchestrator_state(tmp_path, 4)
    assert after is not None
    for env, tasks in seen.items():  # every task seen before the stop is still in a pool
        assert tasks <= {i for pool in after["pools"][env].values() for i in pool}
    assert (
        sum(records[4]["pools"].values()) >= sum(records[3]["pools"].values()) == sum(map(len, seen.values()))
    )
    assert all(after["counts"][k] >= v for k, v in saved["counts"].items())
    numbers = [int(s.group.rsplit("-g", 1)[1]) for s in layout.read_batch(tmp_path, 4)]
    assert min(numbers) > saved["seq"]  # group numbering continues


def test_cli_needs_inference_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    recipe = make_recipe(tmp_path)
    config = tmp_path / "recipe.resolved.yaml"
    config.write_text(json.dumps(recipe.model_dump()))
    monkeypatch.delenv("INFERENCE_URLS", raising=False)
    assert cli_main(["--config", str(config)]) == 2
    assert "INFERENCE_URLS" in capsys.readouterr().err
