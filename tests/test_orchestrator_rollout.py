"""Thread hops of a rollout group: one to encode, then one to decode every completion and score the whole group
once the environment is known to score cheaply; while it is not, one to decode and one per sample to score (in
parallel)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest

from intellect.rl.envs.base import Task, Turn
from intellect.rl.orchestrator import rollout
from intellect.rl.orchestrator.client import InferenceClient
from intellect.rl.orchestrator.fake import CoinFlipEnv, DigitTokenizer, FakeCluster, FakeServer
from intellect.rl.orchestrator.rollout import CHEAP_SCORE_S, Roller, Sampling


class SlowCoinFlip(CoinFlipEnv):
    """Scores like ``CoinFlipEnv`` but takes longer than ``CHEAP_SCORE_S`` a sample."""

    name = "slow-coin-flip"

    def score(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> Any:
        time.sleep(2 * CHEAP_SCORE_S)
        return super().score(task, completion, transcript)


def test_hops_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    hops: list[str] = []
    real = asyncio.to_thread

    async def counting(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", "?"))
        return await real(func, *args, **kwargs)

    real_env = rollout._in_env_thread

    async def counting_env(env: Any, func: Any, *args: Any) -> Any:
        hops.append(getattr(func, "__name__", "?"))
        return await real_env(env, func, *args)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    monkeypatch.setattr(
        rollout, "_in_env_thread", counting_env
    )  # scoring: the environment's pool or the default

    async def go() -> dict[str, list[int]]:
        server = FakeServer("http://inf:8000", DigitTokenizer.alphabet, eos=2, rng=random.Random(0), step=0)
        client = InferenceClient([server.url], transport=FakeCluster([server]).transport)
        await client.wait_healthy(5)
        roller = Roller(client, DigitTokenizer(), Sampling(max_new_tokens=4, max_seq_len=32, temperature=1.0))
        counts: dict[str, list[int]] = {}
        for env in (CoinFlipEnv(), SlowCoinFlip()):
            for task in env.tasks()[:3]:
                hops.clear()
                samples = await roller.group(env, task, 8, min_step=0)
                assert all(not s.failed for s in samples)
                for s in samples:  # whichever path: decoded, stamped and scored like the reference
                    assert s.completion_ids and len(s.logprobs) == len(s.completion_ids) and s.first == 0
                    assert s.transcript[-1].role == "assistant"
                    expected = env.score(task, s.transcript[-1].text, s.transcript)
                    assert (s.reward, s.correct) == (expected.reward, expected.correct)
                counts.setdefault(env.name, []).append(len(hops))
        await client.aclose()
        return counts

    counts = asyncio.run(go())
    assert counts["coin-flip"] == [1 + 1 + 8, 1 + 1, 1 + 1]  # measured cheap after the first group
    assert counts["slow-coin-flip"] == [1 + 1 + 8] * 3
