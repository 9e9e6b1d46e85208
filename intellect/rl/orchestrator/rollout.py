"""One rollout group: G samples of one task (single- or multi-turn), scored, turned into contract samples.

Tokenization and scoring run in threads (tokenization in asyncio's default pool, scoring and tool replies in the
environment's own pool when it has one: ``Environment.workers``), never on the event loop, a group at a time: one
hop encodes the prompt; once the environment's scoring has been measured cheap (under ``CHEAP_SCORE_S`` a sample),
one more hop decodes all G completions and scores them (single-turn), else one hop decodes them and scoring takes
one hop per sample (in parallel). Each hop costs a thread wake-up and a return through the event loop: the 17
hops of a group of 8 used to cost more CPU than the decoding and scoring they carried. An inference failure (after
the client's retries) or a rubric error (``Score.failed``) makes a failed sample: it stays in the batch with an
all-zero completion mask and advantage 0, and is counted.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from intellect.rl.advantages import group_advantages, is_degenerate
from intellect.rl.envs.base import Turn
from intellect.rl.layout import RolloutSample
from intellect.rl.orchestrator.client import Completion, InferenceClient, InferenceError, Stamp

if TYPE_CHECKING:
    from intellect.rl.envs.base import Environment, Task
    from intellect.rl.orchestrator.tokens import Tokenizer

T = TypeVar("T")
CHEAP_SCORE_S = 0.002  # mean seconds per sample under which a group is scored in one thread hop


@dataclass
class SampleResult:
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    transcript: list[Turn] = field(default_factory=list)
    first: int | None = None
    last: int | None = None
    reward: float = 0.0
    correct: bool = False
    error: str | None = None
    truncated: bool = False  # a turn stopped at its token budget (finish_reason "length")

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def sampled_tokens(self) -> int:
        return sum(self.mask)

    def add(self, ids: list[int], lps: list[float], sampled: bool) -> None:
        self.completion_ids += ids
        self.logprobs += lps if sampled else [0.0] * len(ids)
        self.mask += [1 if sampled else 0] * len(ids)

    def stamp(self, stamp: Stamp, reported: tuple[int, int] | None = None) -> None:
        """Record the weight steps of one turn: the server's own report when it gives one, else the client's."""
        if reported is not None:
            stamp = Stamp(first=reported[0], last=reported[1])
        if stamp.first is not None:
            self.first = stamp.first if self.first is None else min(self.first, stamp.first)
        if stamp.last is not None:
            self.last = stamp.last if self.last is None else max(self.last, stamp.last)


@dataclass
class Sampling:
    max_new_tokens: int
    max_seq_len: int
    temperature: float


class Roller:
    """Generates and scores groups through one client and tokenizer."""

    def __init__(self, client: InferenceClient, tokenizer: Tokenizer, sampling: Sampling) -> None:
        self.client = client
        self.tok = tokenizer
        self.sampling = sampling
        self.tokens = 0  # completion tokens sampled so far (for tokens/s)
        self.score_s: dict[str, float] = {}  # per environment: running mean of seconds per scored sample

    def _payload(
        self, ids: list[int], n: int, budget: int, env: Environment, temperature: float
    ) -> dict[str, Any]:
        return {
            "prompt": ids,
            "max_tokens": budget,
            "temperature": temperature,
            # pinned: the sampled distribution is softmax(logits / T) over the whole vocabulary, the one the
            # trainer scores; nothing is left to a server's or a checkpoint's defaults
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "n": n,
            "logprobs": 1,
            "stop": env.stop,
            "seed": None,
            "return_token_ids": True,
        }

    def _budget(self, used: int) -> int:
        return min(self.sampling.max_new_tokens, self.sampling.max_seq_len - used)

    async def group(
        self, env: Environment, task: Task, n: int, min_step: int, temperature: float | None = None
    ) -> list[SampleResult]:
        """``n`` scored samples of ``task`` on weights >= ``min_step`` (one request with n, then turns)."""
        temp = self.sampling.temperature if temperature is None else temperature
        prompt = await asyncio.to_thread(self.tok.encode, task.prompt, True)
        samples = [SampleResult(list(prompt)) for _ in range(n)]
        budget = self._budget(len(prompt))
        if budget <= 0:
            return _fail(samples, f"prompt of {len(prompt)} tokens leaves no room under max_seq_len")
        stamp = Stamp()
        try:
            comps = await self.client.complete(
                self._payload(prompt, n, budget, env, temp), min_step=min_step, stamp=stamp
            )
        except InferenceError as exc:
            return _fail(samples, f"inference: {exc}")
        if len(comps) != n:
            return _fail(samples, f"inference: asked n={n}, got {len(comps)} choices")
        self.tokens += sum(len(c.token_ids) for c in comps)
        if env.max_turns == 1 and self._cheap(env):  # decode and score in one hop
            await _in_env_thread(env, self._take_and_score, env, task, samples, comps, stamp)
            return samples
        texts = await asyncio.to_thread(lambda: [self.tok.decode(c.token_ids) for c in comps])
        _take(samples, comps, texts, stamp)
        if env.max_turns > 1:
            await asyncio.gather(*(self._more_turns(env, task, s, min_step, temp) for s in samples))
        await self._score_all(env, task, [s for s in samples if not s.failed])
        return samples

    def _cheap(self, env: Environment) -> bool:
        """Has this environment's scoring been measured under ``CHEAP_SCORE_S`` a sample?"""
        mean = self.score_s.get(env.name)
        return mean is not None and mean < CHEAP_SCORE_S

    def _take_and_score(
        self, env: Environment, task: Task, samples: list[SampleResult], comps: list[Completion], stamp: Stamp
    ) -> None:
        """In a worker thread: decode the completions into the samples, then score them one after the other."""
        _take(samples, comps, [self.tok.decode(c.token_ids) for c in comps], stamp)
        self._score_each(env, task, [s for s in samples if not s.failed])

    async def _more_turns(
        self, env: Environment, task: Task, sample: SampleResult, min_step: int, temp: float
    ) -> None:
        """Tool reply (mask 0) then the model again, until the environment says the episode is over."""
        for _ in range(1, env.max_turns):
            reply = await _in_env_thread(env, env.respond, task, list(sample.transcript))
            if reply is None:
                return
            tool_ids = await asyncio.to_thread(self.tok.encode, reply, False)
            context = sample.prompt_ids + sample.completion_ids + tool_ids
            budget = self._budget(len(context))
            if budget <= 0:
                sample.truncated = True  # the episode wanted another turn; max_seq_len ended it
                return
            sample.add(tool_ids, [], sampled=False)
            sample.transcript.append(Turn("tool", reply))
            stamp = Stamp()
            try:
                comps = await self.client.complete(
                    self._payload(context, 1, budget, env, temp), min_step=min_step, stamp=stamp
                )
            except InferenceError as exc:
                sample.error = f"inference: {exc}"
                return
            sample.add(comps[0].token_ids, comps[0].logprobs, sampled=True)
            sample.stamp(stamp, comps[0].weight_steps)
            sample.truncated |= comps[0].finish_reason == "length"
            self.tokens += len(comps[0].token_ids)
            sample.transcript.append(
                Turn("assistant", await asyncio.to_thread(self.tok.decode, comps[0].token_ids))
            )

    async def _score_all(self, env: Environment, task: Task, samples: list[SampleResult]) -> None:
        """Score the group in one thread hop when the environment is known to score cheaply, else in parallel."""
        if self._cheap(env):
            await _in_env_thread(env, self._score_each, env, task, samples)
        else:
            await asyncio.gather(*(_in_env_thread(env, self._score_each, env, task, [s]) for s in samples))

    def _score_each(self, env: Environment, task: Task, samples: list[SampleResult]) -> None:
        """In a worker thread: score ``samples`` one after the other and update the environment's mean."""
        for sample in samples:
            start = time.perf_counter()
            _score(env, task, sample)
            took = time.perf_counter() - start
            mean = self.score_s.get(env.name)
            self.score_s[env.name] = took if mean is None else 0.9 * mean + 0.1 * took


async def _in_env_thread(env: Environment, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the environment's own threads (``Environment.workers``), else in the default pool: a sandbox
    pool of 8 must not wait behind the default pool's 6 threads on 2 cores."""
    return await asyncio.get_running_loop().run_in_executor(env.executor(), functools.partial(fn, *args))


def _take(samples: list[SampleResult], comps: list[Completion], texts: list[str], stamp: Stamp) -> None:
    """The first turn's completions into their samples (tokens, logprobs, weight steps, transcript)."""
    for sample, comp, text in zip(samples, comps, texts, strict=True):
        sample.add(comp.token_ids, comp.logprobs, sampled=True)
        sample.stamp(stamp, comp.weight_steps)
        sample.truncated |= comp.finish_reason == "length"
        sample.transcript.append(Turn("assistant", text))


def _score(env: Environment, task: Task, sample: SampleResult) -> None:
    completion = next((t.text for t in reversed(sample.transcript) if t.role == "assistant"), "")
    try:
        score = env.score(task, completion, list(sample.transcript))
    except Exception as exc:  # noqa: BLE001 - a scoring crash is a failed sample, not a crashed run
        sample.error = f"score: {type(exc).__name__}: {exc}"
        return
    if score.failed:
        sample.error = "rubric: " + "; ".join(score.errors)
        return
    sample.reward, sample.correct = float(score.reward), bool(score.correct)


def _fail(samples: list[SampleResult], error: str) -> list[SampleResult]:
    for s in samples:
        s.error = error
    return samples


# ---------------------------------------------------------------------------------------- contract samples


@dataclass
class GroupOutcome:
    """What a finished group amounts to: its contract samples, or why it is dropped."""

    samples: list[RolloutSample]
    failed: int
    degenerate: bool
    all_failed: bool
    solve_rate: float | None


def zero_truncated(results: Sequence[SampleResult]) -> None:
    """``algorithm.truncated: zero``: a scored sample that hit the token budget gets reward 0, before the group's
    advantages are computed (its ``correct``, which the difficulty pools read, is left alone). "keep" and "mask"
    leave rewards as scored (the trainer masks truncated samples under "mask")."""
    for r in results:
        if r.truncated and not r.failed:
            r.reward = 0.0


def finalize_group(
    group_id: str, env: str, task_id: str, results: Sequence[SampleResult], normalize_std: bool = True
) -> GroupOutcome:
    """Advantages over the scored samples; failed samples masked with advantage 0 (pure)."""
    scored = [r for r in results if not r.failed]
    failed = len(results) - len(scored)
    if not scored:
        return GroupOutcome([], failed, degenerate=False, all_failed=True, solve_rate=None)
    real = group_advantages([r.reward for r in scored], normalize_std=normalize_std)
    advs = iter(real)
    fallback = (
        min(r.first for r in scored if r.first is not None) if any(r.first is not None for r in scored) else 0
    )
    samples: list[RolloutSample] = []
    for i, r in enumerate(results):
        first = r.first if r.first is not None else fallback
        last = r.last if r.last is not None else first
        samples.append(
            RolloutSample(
                id=f"{group_id}-{i}",
                group=group_id,
                env=env,
                task_id=task_id,
                prompt_ids=r.prompt_ids,
                completion_ids=r.completion_ids,
                completion_logprobs=r.logprobs,
                completion_mask=[0] * len(r.mask) if r.failed else r.mask,
                reward=0.0 if r.failed else r.reward,
                advantage=0.0 if r.failed else next(advs),
                weight_steps=(first, last),
                truncated=r.truncated,
            )
        )
    degenerate = len(scored) < 2 or is_degenerate(real)
    solve = sum(r.correct for r in scored) / len(scored)
    return GroupOutcome(samples, failed, degenerate=degenerate, all_failed=False, solve_rate=solve)
