"""Unit tests of the orchestrator's parts: the bound, pools, planner, advantages/drops, writer, client.

The verdicts of the async and off-policy bounds: ``test_staleness.py``; pool shares and the saved state:
``test_pools_state.py``."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from intellect.recipe import Difficulty, validate_recipe
from intellect.rl import layout
from intellect.rl.envs.base import Environment, Rubric, Task, Turn
from intellect.rl.orchestrator.bound import min_weight_step, off_policy_lag
from intellect.rl.orchestrator.client import InferenceClient, InferenceError, Stamp
from intellect.rl.orchestrator.fake import CoinFlipEnv, DigitTokenizer, FakeCluster, FakeServer, TcpFront
from intellect.rl.orchestrator.loop import Finished, Orchestrator
from intellect.rl.orchestrator.planner import BatchPlanner
from intellect.rl.orchestrator.pools import DifficultyPools, Draw, TaskSampler, classify
from intellect.rl.orchestrator.rollout import Roller, SampleResult, Sampling, finalize_group
from intellect.rl.orchestrator.summary import summarize
from intellect.rl.orchestrator.telemetry import Counts, step_record

# ------------------------------------------------------------------------------------------------ bound


def test_min_weight_step() -> None:
    assert [min_weight_step(n, 1) for n in (1, 2, 3, 10)] == [0, 0, 1, 8]
    assert [min_weight_step(n, 0) for n in (1, 2, 3)] == [0, 1, 2]  # k=0: batch N on weights N-1
    assert min_weight_step(3, 8) == 0


def test_off_policy_lag() -> None:
    assert off_policy_lag(7, 10) == 2 and off_policy_lag(9, 10) == 0


# ------------------------------------------------------------------------------------------------ pools


def test_classify_thresholds() -> None:
    assert classify(1.0, 0.9, 0.1) == "easy"
    assert classify(0.9, 0.9, 0.1) == "normal"  # strictly above
    assert classify(0.1, 0.9, 0.1) == "normal"  # strictly below
    assert classify(0.0, 0.9, 0.1) == "hard"


def _tasks(n: int) -> list[Task]:
    return [Task(id=f"t{i}", prompt=str(i), answer=None) for i in range(n)]


def test_pools_move_tasks_and_sampler_mixes_fractions() -> None:
    pools = DifficultyPools(Difficulty(easy_above=0.9, hard_below=0.1, easy_fraction=0.2, hard_fraction=0.3))
    for i in range(10):
        pools.record("a", i, 1.0)
    for i in range(10, 20):
        pools.record("a", i, 0.0)
    pools.record("a", 20, 0.5)
    pools.record("a", 10, 0.5)  # a hard task solved half the time becomes normal
    assert pools.counts() == {"easy": 10, "normal": 2, "hard": 9}
    assert 10 not in pools.members("a", "hard")
    sampler = TaskSampler([("a", _tasks(100), 1.0)], pools, random.Random(0))
    drawn = Counter(sampler.next().pool for _ in range(4000))
    assert 0.17 < drawn["easy"] / 4000 < 0.23
    assert 0.27 < drawn["hard"] / 4000 < 0.33
    assert drawn["normal"] > 1600  # unseen tasks count as normal


def test_sampler_environment_weights_and_reschedule() -> None:
    pools = DifficultyPools(Difficulty())
    sampler = TaskSampler([("a", _tasks(5), 3.0), ("b", _tasks(5), 1.0)], pools, random.Random(1))
    envs = Counter(sampler.next().env for _ in range(4000))
    assert 0.72 < envs["a"] / 4000 < 0.78
    again = Draw("b", 2, _tasks(5)[2], "normal")
    sampler.reschedule(again)
    assert sampler.next() == again


def test_sampler_without_easy_tasks_draws_normal() -> None:
    pools = DifficultyPools(Difficulty(easy_fraction=1.0, hard_fraction=0.0))
    sampler = TaskSampler([("a", _tasks(10), 1.0)], pools, random.Random(0))
    assert {sampler.next().pool for _ in range(50)} == {"normal"}


# ------------------------------------------------------------------------------------------------ planner


def test_planner_targets_earliest_batch_and_refills_drops() -> None:
    plan: BatchPlanner[str] = BatchPlanner(first=1, last=3, groups_per_batch=2)
    targets = []
    for _ in range(6):
        t = plan.next_target()
        assert t is not None
        plan.start(t)
        targets.append(t)
    assert targets == [1, 1, 2, 2, 3, 3] and plan.next_target() is None
    plan.finish(2, "a")
    plan.finish(1, None)  # dropped: batch 1 needs another group
    assert plan.next_target() == 1
    plan.start(1)
    plan.finish(1, "b")
    assert not plan.complete(1)
    with pytest.raises(ValueError):
        plan.take(1)
    plan.finish(1, "c")
    assert plan.take(1) == ["b", "c"]
    assert plan.assembling == 2 and plan.groups_in_flight == 3
    with pytest.raises(ValueError):
        plan.start(1)


# ------------------------------------------------------------------------------------------- advantages


def _result(reward: float, first: int = 3, error: str | None = None, correct: bool = False) -> SampleResult:
    r = SampleResult([1, 5], [6, 7, 2], [-0.1, -0.2, -0.3], [1, 1, 1], first=first, last=first + 1)
    r.reward, r.error, r.correct = reward, error, correct
    return r


def test_finalize_group_advantages_and_masked_failures() -> None:
    out = finalize_group(
        "g1", "env", "t1", [_result(1.0, correct=True), _result(0.0), _result(0.5, error="x")]
    )
    assert [s.id for s in out.samples] == ["g1-0", "g1-1", "g1-2"]
    advs = [s.advantage for s in out.samples]
    assert advs[0] == pytest.approx(1.0) and advs[1] == pytest.approx(-1.0) and advs[2] == 0.0
    assert out.samples[2].completion_mask == [0, 0, 0] and out.samples[2].reward == 0.0
    assert out.samples[0].completion_mask == [1, 1, 1]
    assert out.samples[0].weight_steps == (3, 4)
    assert out.failed == 1 and not out.degenerate and out.solve_rate == 0.5


def test_finalize_group_degenerate_and_all_failed() -> None:
    assert finalize_group("g", "e", "t", [_result(1.0), _result(1.0)]).degenerate
    assert finalize_group("g", "e", "t", [_result(1.0), _result(0.0, error="x")]).degenerate  # one scored
    gone = finalize_group("g", "e", "t", [_result(1.0, error="x")])
    assert gone.all_failed and gone.samples == []


def _orchestrator(tmp_path: Path, **alg: Any) -> Orchestrator:
    recipe = validate_recipe(
        {
            "name": "unit",
            "cluster": {"nodes": 2, "gpus_per_node": 0},
            "roles": {"trainer": {"nodes": 1}, "inference": {"nodes": 1, "backend": "embedded"}},
            "model": {"name": "tiny-char-llama", "max_seq_len": 32, "max_new_tokens": 6},
            "algorithm": {
                "steps": 5,
                "batch_size": 8,
                "rollouts_per_prompt": 4,
                "learning_rate": 1e-3,
                **alg,
            },
            "environments": [{"name": "coin-flip"}],
            "run_dir": str(tmp_path),
        }
    )
    orch = Orchestrator(recipe, ["http://x:1"], metrics_port=-1)
    orch.pools = DifficultyPools(recipe.algorithm.difficulty)
    orch.sampler = TaskSampler([("coin-flip", _tasks(4), 1.0)], orch.pools)
    return orch


def test_keep_drops_stale_and_zero_advantage_groups(tmp_path: Path) -> None:
    orch = _orchestrator(tmp_path, max_async_level=1, max_off_policy_steps=2)
    draw = Draw("coin-flip", 1, _tasks(4)[1], "normal")
    fresh = [_result(1.0, first=3), _result(0.0, first=3)]
    item = Finished("g1", 5, draw, fresh)
    assert orch.keep(item, finalize_group("g1", "e", "t", fresh)) is not None
    old = [_result(1.0, first=3), _result(0.0, first=2)]  # batch 5, k=1: weights >= 3 only
    assert orch.keep(Finished("g2", 5, draw, old), finalize_group("g2", "e", "t", old)) is None
    assert orch.counts.dropped_stale == 1 and orch.sampler.next() == draw  # rescheduled
    flat = [_result(1.0, first=4), _result(1.0, first=4)]
    assert orch.keep(Finished("g3", 5, draw, flat), finalize_group("g3", "e", "t", flat)) is None
    assert orch.counts.dropped_zero_adv == 1
    failed = [_result(1.0, error="boom")]
    assert orch.keep(Finished("g4", 5, draw, failed), finalize_group("g4", "e", "t", failed)) is None
    assert orch.counts.failed_groups == 1 and orch.counts.dropped_stale == 1


def test_a_run_of_groups_without_signal_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    orch = _orchestrator(tmp_path, max_async_level=1, max_off_policy_steps=2)  # 2 prompts per step
    draw = Draw("coin-flip", 1, _tasks(4)[1], "normal")
    flat = [_result(0.0, first=4), _result(0.0, first=4)]
    for i in range(8):
        orch.keep(Finished(f"f{i}", 5, draw, flat), finalize_group(f"f{i}", "e", "t", flat))
    warned = [r for r in caplog.records if "in a row had equal rewards" in r.getMessage()]
    assert [r.getMessage().split()[0] for r in warned] == ["8"]
    fresh = [_result(1.0, first=4), _result(0.0, first=4)]
    assert orch.keep(Finished("k", 5, draw, fresh), finalize_group("k", "e", "t", fresh)) is not None
    assert orch.degenerate_streak == 0


@pytest.mark.parametrize("mode", ["keep", "mask", "zero"])
def test_truncated_zero_sets_rewards_to_0_before_advantages(tmp_path: Path, mode: str) -> None:
    orch = _orchestrator(tmp_path, max_async_level=1, truncated=mode)
    orch.planner = BatchPlanner(first=5, last=5, groups_per_batch=2)
    orch.slots, orch.changed = asyncio.Semaphore(0), asyncio.Event()
    results = [_result(1.0, correct=True), _result(1.0, correct=True), _result(0.0), _result(0.5)]
    results[0].truncated = results[3].truncated = True
    orch.planner.start(5)
    orch.absorb(Finished("g1", 5, Draw("coin-flip", 1, _tasks(4)[1], "normal"), results))
    (kept,) = orch.planner.accepted[5]
    rewards = [s.reward for s in kept.outcome.samples]
    expected = [0.0, 1.0, 0.0, 0.0] if mode == "zero" else [1.0, 1.0, 0.0, 0.5]
    assert rewards == expected and kept.rewards == expected
    assert [s.truncated for s in kept.outcome.samples] == [True, False, False, True]
    mean = sum(expected) / 4
    std = (sum((r - mean) ** 2 for r in expected) / 4) ** 0.5
    advantages = [s.advantage for s in kept.outcome.samples]
    assert advantages == pytest.approx([(r - mean) / std for r in expected])
    assert kept.outcome.solve_rate == 0.5  # correctness is left alone: the pools still see what was solved


# ------------------------------------------------------------------------------------------------ writer


def test_writer_contract_format_stable_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real_replace = layout.os.replace

    def spy(src: Any, dst: Any) -> None:
        seen.append((Path(dst).parent / layout.STABLE).exists())
        real_replace(src, dst)

    monkeypatch.setattr(layout.os, "replace", spy)
    out = finalize_group("g1", "env", "t1", [_result(1.0), _result(0.0)])
    folder = layout.write_rollouts(tmp_path, 1, out.samples)
    assert seen == [False] and (folder / layout.STABLE).exists()
    lines = [json.loads(x) for x in (folder / layout.ROLLOUTS_FILE).read_text().splitlines()]
    keys = {
        "id",
        "group",
        "env",
        "task_id",
        "prompt_ids",
        "completion_ids",
        "completion_logprobs",
        "completion_mask",
        "reward",
        "advantage",
        "weight_steps",
        "truncated",
    }
    assert all(set(x) == keys for x in lines) and len(lines) == 2
    with pytest.raises(FileExistsError):
        layout.write_rollouts(tmp_path, 1, out.samples)


def test_writer_resume_points(tmp_path: Path) -> None:
    for n in (1, 2, 4):
        layout.write_rollouts(tmp_path, n, [])
    layout.rollouts_dir(tmp_path, 3).mkdir()  # incomplete: no STABLE
    assert layout.last_complete_rollouts(tmp_path) == 2
    layout.write_rollouts(tmp_path, 3, [])  # replaces the incomplete folder
    assert layout.last_complete_rollouts(tmp_path) == 4
    (tmp_path / "weights" / "step_0").mkdir(parents=True)
    assert layout.latest_step(tmp_path, layout.WEIGHTS) is None
    (tmp_path / "weights" / "step_0" / layout.STABLE).write_text("")
    (tmp_path / "weights" / "step_7").mkdir()
    assert layout.latest_step(tmp_path, layout.WEIGHTS) == 0


def test_summary_and_step_record() -> None:
    samples = finalize_group("g", "e", "t", [_result(1.0, first=2), _result(0.0, first=3)]).samples
    rec = step_record(4, samples, [1.0, 0.0], [0.5], Counts(dropped_zero_adv=2, tokens=60), 2.0, {"easy": 1})
    assert rec["off_policy_lag_max"] == 1 and rec["off_policy_lag_mean"] == 0.5
    assert rec["reward_mean"] == 0.5 and rec["tokens_per_s"] == 30.0 and rec["dropped_zero_adv"] == 2
    steps = [{"kind": "step", "step": i, "reward_mean": i / 10, "failed": 1} for i in range(1, 11)]
    evals = [{"kind": "eval", "step": 0, "eval_accuracy": 0.25}]
    out = summarize(steps + evals, 10, 0.75, 12.0)
    assert out["reward_first"] == pytest.approx(0.3) and out["reward_last"] == pytest.approx(0.8)
    assert out["eval_before"] == 0.25 and out["eval_after"] == 0.75 and out["failed"] == 10


# ------------------------------------------------------------------------------------------------ client


def _cluster(n: int = 2, **kw: Any) -> FakeCluster:
    return FakeCluster([FakeServer(f"http://s{i}:80", [3, 4], eos=2, **kw) for i in range(n)])


def _client(transport: httpx.AsyncBaseTransport | None, urls: list[str], **kw: Any) -> InferenceClient:
    opts = {"retry_for_s": 1.0, "probe_every_s": 0.01, "backoff_s": (0.001, 0.01), **kw}
    return InferenceClient(urls, transport=transport, **opts)


PAYLOAD = {"prompt": [1, 3], "max_tokens": 4, "temperature": 1.0, "n": 2, "logprobs": 1}


def test_client_retries_on_another_server_and_recovers_weights() -> None:
    async def go() -> None:
        cluster = _cluster(2, restart_step=0)
        client = _client(cluster.transport, cluster.urls)
        await client.wait_healthy(5)
        await client.update_weights("/w/step_3", 3)
        dead = cluster.servers["http://s0:80"]
        dead.kill()
        stamps = [Stamp() for _ in range(4)]
        outs = await asyncio.gather(*(client.complete(PAYLOAD, min_step=3, stamp=s) for s in stamps))
        assert all(len(o) == 2 and len(o[0].token_ids) == len(o[0].logprobs) for o in outs)
        assert all(s.server == "http://s1:80" and s.first == 3 for s in stamps)
        dead.restart()  # back on weights 0: the client pushes step 3 before using it again
        for _ in range(200):
            if client.servers[0].up:
                break
            await asyncio.sleep(0.01)
        assert client.servers[0].up and client.servers[0].step == 3 and dead.updates[-1] == 3
        await client.aclose()

    asyncio.run(go())


def test_a_server_gone_silent_is_found_by_the_liveness_probe_and_its_requests_rerouted() -> None:
    """A powered-off node neither answers nor resets: its requests in flight would wait for the 600 s request
    timeout. The probe asks /health while requests are in flight; two misses mark it down, its requests go to the
    other server, and a weight update does not wait on it."""

    async def go() -> None:
        cluster = _cluster(2, latency=lambda rng: 0.2, restart_step=0)
        client = _client(cluster.transport, cluster.urls, liveness_every_s=0.05, retry_for_s=5.0)
        await client.wait_healthy(5)
        await client.update_weights("/w/step_1", 1)
        gone = cluster.servers["http://s0:80"]
        stamps = [Stamp() for _ in range(6)]
        work = asyncio.gather(*(client.complete(PAYLOAD, min_step=1, stamp=s) for s in stamps))
        await asyncio.sleep(0.05)
        assert gone.inflight == 3  # spread over both servers
        gone.power_off()
        outs = await asyncio.wait_for(work, 10)
        assert all(len(o) == 2 for o in outs) and client.lost == 1 and not client.servers[0].up
        rerouted = [s for s in stamps if s.attempts == 2]
        assert len(rerouted) == 3 and all(s.server == "http://s1:80" for s in rerouted)
        await asyncio.wait_for(client.update_weights("/w/step_2", 2), 5)  # s0 is down: not waited on
        assert client.min_step() == 2
        gone.restart()  # power back on with weights 0: brought to step 2 before it is used again
        for _ in range(1000):  # (its recovery probe in flight while it was silent times out after 5 s)
            if client.servers[0].up:
                break
            await asyncio.sleep(0.01)
        assert client.servers[0].up and gone.updates[-1] == 2
        await client.aclose()

    asyncio.run(go())


def test_a_weight_push_to_a_server_that_goes_silent_does_not_hang() -> None:
    async def go() -> None:
        cluster = _cluster(2, update_delay_s=0.3)
        client = _client(cluster.transport, cluster.urls, liveness_every_s=0.05)
        await client.wait_healthy(5)
        push = asyncio.create_task(client.update_weights("/w/step_1", 1))
        await asyncio.sleep(0.05)
        cluster.servers["http://s0:80"].power_off()
        await asyncio.wait_for(push, 5)
        assert [s.up for s in client.servers] == [False, True] and client.min_step() == 1
        await client.aclose()

    asyncio.run(go())


def test_client_spreads_by_least_inflight() -> None:
    async def go() -> None:
        cluster = _cluster(2, latency=lambda rng: 0.02)
        client = _client(cluster.transport, cluster.urls)
        await client.wait_healthy(5)
        await client.update_weights("/w", 0)
        await asyncio.gather(*(client.complete(PAYLOAD) for _ in range(10)))
        assert [s.served for s in cluster.servers.values()] == [5, 5]
        await client.aclose()

    asyncio.run(go())


def test_client_lanes_hold_one_connection_per_request_in_flight_over_real_sockets() -> None:
    """Real loopback HTTP (TcpFront stands in for the inference server's uvicorn side): completions reuse
    one keep-alive connection per request in flight and per server, bursts after the first open none, and a
    server that drops its connections is used again through the same lanes once it is back."""

    async def go() -> None:
        fakes = [FakeServer(f"http://s{i}:80", [3, 4], eos=2, latency=lambda rng: 0.02) for i in range(2)]
        fronts = [TcpFront(f) for f in fakes]
        urls = [await front.start() for front in fronts]
        client = _client(None, urls, retry_for_s=5.0)
        await client.wait_healthy(5)
        await client.update_weights("/w", 0)  # health and weights: one control connection per server
        for _ in range(3):
            await asyncio.gather(*(client.complete(PAYLOAD) for _ in range(8)))
        assert [f.served for f in fakes] == [12, 12]
        assert len(client._lanes) == 8
        for front in fronts:  # 1 control + 4 lanes, each lane carried one request of each burst
            assert sorted(front.requests_per_connection) == [2, 3, 3, 3, 3]
        fakes[0].kill()  # refuses: the front drops the connection, the client reroutes to the other server
        outs = await asyncio.gather(*(client.complete(PAYLOAD) for _ in range(4)))
        assert len(outs) == 4 and fakes[1].served == 16 and not client.servers[0].up
        fakes[0].restart()
        for _ in range(300):
            if client.servers[0].up:
                break
            await asyncio.sleep(0.01)
        await asyncio.gather(*(client.complete(PAYLOAD) for _ in range(8)))
        assert fakes[0].served == 12 + 4 and len(client._lanes) == 8  # no lane added for the recovery
        await client.aclose()
        for front in fronts:
            await front.close()

    asyncio.run(go())


def test_client_gives_up_when_all_down_and_refuses_client_errors() -> None:
    calls = Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        calls[request.url.path] += 1
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "weight_step": 0})
        if request.url.host == "bad":
            return httpx.Response(400, json={"error": "bad request"})
        raise httpx.ConnectError("refused", request=request)

    async def go() -> None:
        transport = httpx.MockTransport(handler)
        client = _client(transport, ["http://down:1"], retry_for_s=0.2)
        await client.wait_healthy(5)
        with pytest.raises(InferenceError):
            await client.complete(PAYLOAD)
        assert calls["/v1/completions"] >= 1 and client.retries >= 1
        await client.aclose()
        calls.clear()
        client = _client(transport, ["http://bad:1"])
        await client.wait_healthy(5)
        with pytest.raises(InferenceError, match="400"):
            await client.complete(PAYLOAD)
        assert calls["/v1/completions"] == 1  # no retry of a client error
        await client.aclose()

    asyncio.run(go())


def test_client_retries_503_and_waits_for_min_step() -> None:
    state = {"fail": 2, "step": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "weight_step": state["step"]})
        if request.url.path == "/update_weights":
            await asyncio.sleep(0.05)
            state["step"] = json.loads(request.content)["step"]
            return httpx.Response(200, json={"step": state["step"]})
        if state["fail"]:
            state["fail"] -= 1
            return httpx.Response(503)
        await asyncio.sleep(0.02)
        ids = [3, 2]
        body = {"choices": [{"index": 0, "token_ids": ids, "logprobs": {"token_logprobs": [-1.0, -2.0]}}]}
        return httpx.Response(200, json=body)

    async def go() -> None:
        client = _client(httpx.MockTransport(handler), ["http://one:1"])
        await client.wait_healthy(5)
        stamp = Stamp()
        waiting = asyncio.create_task(client.complete({**PAYLOAD, "n": 1}, min_step=1, stamp=stamp))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no server on weights >= 1 yet
        await client.update_weights("/w/step_1", 1)
        out = await waiting
        assert out[0].token_ids == [3, 2] and stamp.first == 1 and stamp.attempts == 3
        # an update in flight while a request runs: last is the step being applied
        stamp2 = Stamp()
        req = asyncio.create_task(client.complete({**PAYLOAD, "n": 1}, stamp=stamp2))
        await asyncio.sleep(0.001)
        update = asyncio.create_task(client.update_weights("/w/step_2", 2))
        await req
        await update
        assert stamp2.first == 1 and stamp2.last == 2
        await client.aclose()

    asyncio.run(go())


# ------------------------------------------------------------------------------------------------ rollouts


def _boom(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    raise RuntimeError("broken rubric")


class Echo(Environment):
    """Two-turn: after the model's first turn the tool says '9>', then the model answers again."""

    name = "echo"
    max_turns = 2

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.rubric = Rubric([(_boom, 1.0)] if broken else [(lambda t, c, tr: float(len(tr)), 1.0)])

    def respond(self, task: Task, transcript: Sequence[Turn]) -> str | None:
        return "9>" if len(transcript) == 1 else None


def test_roller_multi_turn_masks_tool_tokens_and_rubric_errors_fail() -> None:
    async def go() -> None:
        cluster = _cluster(1)
        client = _client(cluster.transport, cluster.urls)
        await client.wait_healthy(5)
        await client.update_weights("/w", 0)
        roller = Roller(client, DigitTokenizer(), Sampling(max_new_tokens=4, max_seq_len=32, temperature=1.0))
        task = Task(id="t", prompt="12>", answer=None)
        good = await roller.group(Echo(), task, 3, min_step=0)
        for s in good:
            assert not s.failed and s.reward == 3.0  # assistant, tool, assistant
            tool_at = s.mask.index(0)
            assert s.completion_ids[tool_at : tool_at + 2] == DigitTokenizer().encode("9>")
            assert s.mask.count(0) == 2 and s.logprobs[tool_at] == 0.0
            assert len(s.completion_ids) == len(s.logprobs) == len(s.mask)
        bad = await roller.group(Echo(broken=True), task, 2, min_step=0)
        assert all(s.failed and "broken rubric" in (s.error or "") for s in bad)
        assert finalize_group("g", "echo", "t", bad).all_failed
        coin = await roller.group(CoinFlipEnv(), CoinFlipEnv().tasks()[0], 4, min_step=0)
        assert all(s.prompt_ids[0] == 1 and s.first == s.last == 0 for s in coin)
        await client.aclose()

    asyncio.run(go())


class Rendezvous(Environment):
    """Each sample's scoring blocks until every sample of the group is being scored at once (a barrier of
    ``workers`` parties): it finishes only if the group really runs ``workers`` scorers in parallel."""

    name = "rendezvous"

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.workers = parties
        self.barrier = threading.Barrier(parties, timeout=20)
        self.threads: set[str] = set()
        self.rubric = Rubric([(self._meet, 1.0)])

    def _meet(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
        self.threads.add(threading.current_thread().name)
        self.barrier.wait()
        return 1.0


def test_an_environment_with_workers_scores_that_many_samples_at_once() -> None:
    """More parties than asyncio's default pool holds (min(32, cores + 4)): with the default pool the barrier
    would break; with the environment's own threads all meet. (A sandbox pool of 8 on 2 cores was capped at 6.)"""
    parties = min(32, (os.cpu_count() or 1) + 4) + 1

    async def go() -> list[SampleResult]:
        cluster = _cluster(1)
        client = _client(cluster.transport, cluster.urls)
        await client.wait_healthy(5)
        await client.update_weights("/w", 0)
        roller = Roller(client, DigitTokenizer(), Sampling(max_new_tokens=4, max_seq_len=32, temperature=1.0))
        out = await roller.group(env, Task(id="t", prompt="12>", answer=None), parties, min_step=0)
        await client.aclose()
        return out

    env = Rendezvous(parties)
    samples = asyncio.run(go())
    assert [s.error for s in samples] == [None] * parties and all(s.reward == 1.0 for s in samples)
    assert len(env.threads) == parties and all(t.startswith("env-rendezvous") for t in env.threads)


def test_import_pulls_no_torch() -> None:
    code = "import sys, intellect.rl.orchestrator.loop; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_server_reported_weight_steps_win_over_the_client_stamp() -> None:
    from intellect.rl.orchestrator.client import parse_completions

    choice = {"index": 0, "token_ids": [3], "logprobs": {"token_logprobs": [-0.5]}, "weight_steps": [4, 5]}
    (comp,) = parse_completions({"choices": [choice]})
    assert comp.weight_steps == (4, 5)
    sample = SampleResult([1])
    sample.stamp(Stamp(first=3, last=3), comp.weight_steps)
    assert (sample.first, sample.last) == (4, 5)
    with pytest.raises(InferenceError):
        parse_completions({"choices": [{**choice, "logprobs": {"token_logprobs": []}}]})


def test_the_orchestrator_loads_the_tiny_tokenizer_without_torch() -> None:
    """The orchestrator needs no torch for the debug recipes: importing it cost seconds of start-up and memory."""
    probe = (
        "import sys\n"
        "from intellect.recipe import load_recipe\n"
        "from intellect.rl.envs import make_env\n"
        "from intellect.rl.orchestrator.loop import Orchestrator\n"
        "from intellect.rl.orchestrator.tokens import load_tokenizer\n"
        "recipe = load_recipe('recipes/debug-cpu.yaml')\n"
        "envs = [make_env(spec) for spec in recipe.environments]\n"
        "tok = load_tokenizer(recipe.model)\n"
        "assert tok.decode(tok.encode('123', bos=True)) == '123'\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
