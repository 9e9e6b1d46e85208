"""The Orchestrator: supervised asyncio tasks around one readable main loop (``Orchestrator.run``).

Tasks: ``refill`` (producer: keeps ``prompts_per_step x (1 + max_async_level)`` groups in flight and starts a
new group the moment one is absorbed), ``weights`` (waits in a worker thread, polling every ~2 ms, for the next
weights/step_N/STABLE, pushes new weights to every server while requests are in flight, queues online evals on
an unbounded queue: an eval waits for the ones before it, none is dropped), ``evals`` (runs them, in order), and
one short task per group.
The main loop absorbs finished groups into the batch they were generated for (judged by ``bound``: beyond the
async bound or spanning too many updates, dropped and rescheduled) and hands complete batches over, each with the
orchestrator's state (``state``: pools, counters, sampler). A run that resumes after batch N restores the state
saved with it; the groups that were in flight then are drawn again first.
A background task that returns or raises stops the run (``Supervisor.watch``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from intellect.errors import EnvError, IntellectError, RunError
from intellect.rl import layout
from intellect.rl.orchestrator.bound import Verdict, judge_group, min_weight_step
from intellect.rl.orchestrator.client import InferenceClient
from intellect.rl.orchestrator.evals import EvalResult, eval_items, run_eval
from intellect.rl.orchestrator.planner import BatchPlanner
from intellect.rl.orchestrator.pools import DifficultyPools, Draw, TaskSampler
from intellect.rl.orchestrator.rollout import (
    GroupOutcome,
    Roller,
    SampleResult,
    Sampling,
    finalize_group,
    zero_truncated,
)
from intellect.rl.orchestrator.state import OrchestratorState, rng_state, rng_tuple
from intellect.rl.orchestrator.telemetry import Counts, Telemetry, progress_line, step_record

if TYPE_CHECKING:
    import httpx

    from intellect.recipe import EnvSpec, Recipe
    from intellect.rl.envs.base import Environment, Task
    from intellect.rl.orchestrator.tokens import Tokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Finished:
    gid: str
    target: int
    draw: Draw
    results: list[SampleResult] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class Kept:
    gid: str
    outcome: GroupOutcome
    rewards: list[float]


class Supervisor:
    """Named background tasks; ``watch`` runs a main coroutine and fails it as soon as one of them stops."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[Any]] = {}

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        self.tasks[name] = asyncio.create_task(coro, name=name)

    async def watch(self, coro: Awaitable[T]) -> T:
        main: asyncio.Task[T] = asyncio.ensure_future(coro)
        try:
            done, _ = await asyncio.wait({main, *self.tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            main.cancel()
            raise
        if main in done:
            return main.result()
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        crashed = next(iter(done))
        exc = None if crashed.cancelled() else crashed.exception()
        raise RunError(
            f"orchestrator task {crashed.get_name()!r} stopped: {exc!r}"
            if exc
            else f"orchestrator task {crashed.get_name()!r} returned; it must run until the end"
        ) from exc

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Orchestrator:
    def __init__(
        self,
        recipe: Recipe,
        urls: list[str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        tokenizer: Tokenizer | None = None,
        env_factory: Callable[[EnvSpec], Environment] | None = None,
        metrics_port: int | None = None,  # None: the recipe's; 0: any free port; -1: no /metrics
        metrics_addr: str = "0.0.0.0",
        poll_s: float = 0.002,  # weights polls: at k >= 1 new weights gate the next batch's generation
        client_options: dict[str, Any] | None = None,
        health_timeout_s: float = 600.0,
        on_ready: Callable[[], object] | None = None,  # once start-up is over (the entry point: freeze_heap)
    ) -> None:
        self.recipe, self.urls, self.transport = recipe, urls, transport
        self.on_ready = on_ready
        self.alg = recipe.algorithm
        self.run_dir = Path(recipe.run_dir)
        self.metrics_path = layout.metrics_path(self.run_dir)
        self.steps = self.alg.steps
        self.slots_n = self.alg.prompts_per_step * (1 + self.alg.max_async_level)
        self._tokenizer, self._env_factory = tokenizer, env_factory
        self.metrics_port = recipe.roles.orchestrator.metrics_port if metrics_port is None else metrics_port
        self.metrics_addr, self.poll_s = metrics_addr, poll_s
        self.client_options, self.health_timeout_s = client_options or {}, health_timeout_s
        self.counts, self.last_counts = Counts(), Counts()
        self.degenerate_streak = 0  # groups dropped in a row for equal rewards (no signal): warned about
        self.pushed = -1
        self.closing = threading.Event()  # stops the worker threads that poll the run directory
        self.pending_eval: float | None = None
        self.groups: set[asyncio.Task[None]] = set()
        self.open_draws: dict[str, Draw] = {}  # groups started and in no batch written yet, in start order
        self.telemetry = Telemetry()
        self.bound_port: int | None = None
        self.control_rng = random.Random(recipe.model.seed)

    # ------------------------------------------------------------------------------------------ main loop

    async def run(self) -> dict[str, Any]:
        """Weights 0 and the eval before; batches handed over one by one; final weights, eval and summary."""
        started = time.monotonic()
        await self.open()
        sup = Supervisor()
        try:
            await self.sync_weights(0)
            await self.eval_before()
            if self.on_ready is not None:
                self.on_ready()
            sup.spawn("refill", self.refill())
            sup.spawn("weights", self.follow_weights())
            sup.spawn("evals", self.eval_worker())
            for step in range(self.planner.assembling, self.steps + 1):
                groups = await sup.watch(self.assemble(step))
                await self.hand_over(step, groups)
            await sup.watch(self.client.wait_all_at(self.steps))
            await sup.watch(self.eval_q.join())
            await sup.close()
            final = await self.evaluate(self.steps)
            return await self.write_summary(final, time.monotonic() - started)
        finally:
            await sup.close()
            await self.close()

    # ------------------------------------------------------------------------------------------ set-up

    async def open(self) -> None:
        from intellect.rl.envs import make_env
        from intellect.rl.orchestrator.tokens import load_tokenizer

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # environments and their data first: a dataset that cannot load fails the run before any waiting
        factory = self._env_factory or make_env
        self.envs: dict[str, Environment] = {}
        train = []
        for i, spec in enumerate(self.recipe.environments):
            name = spec.name if spec.name not in self.envs else f"{spec.name}#{i}"
            self.envs[name] = env = await asyncio.to_thread(factory, spec)
            train.append((name, await _tasks(env, name, "train"), spec.weight))
        held_out: list[tuple[str, Environment, Sequence[Task]]] = []
        for i, spec in enumerate(self.recipe.evals.environments):
            name = spec.name if all(spec.name != n for n, _, _ in held_out) else f"{spec.name}#{i}"
            env = await asyncio.to_thread(factory, spec)
            held_out.append((name, env, await _tasks(env, name, "eval")))
        self.eval_set = eval_items(held_out, self.recipe.evals.samples)
        self.client = InferenceClient(self.urls, transport=self.transport, **self.client_options)
        await self.client.wait_healthy(self.health_timeout_s)
        tok = self._tokenizer
        if tok is None:
            tok = await asyncio.to_thread(load_tokenizer, self.recipe.model)
        m = self.recipe.model
        self.roller = Roller(
            self.client, tok, Sampling(m.max_new_tokens, m.max_seq_len, self.alg.temperature)
        )
        # evals sample at the rollouts' settings (greedy ones pass temperature 0); own counters and timings
        self.eval_roller = Roller(
            self.client, tok, Sampling(m.max_new_tokens, m.max_seq_len, self.alg.temperature)
        )
        first = await asyncio.to_thread(layout.last_complete_rollouts, self.run_dir) + 1
        self.first_batch = first
        self.prefix = f"b{first}"  # sample ids of this session: never those of a complete batch before
        self.pools = DifficultyPools(self.alg.difficulty)
        self.sampler = TaskSampler(train, self.pools, random.Random(f"{m.seed}:{first}"))
        self.planner: BatchPlanner[Kept] = BatchPlanner(first, self.steps, self.alg.prompts_per_step)
        self.results: asyncio.Queue[Finished] = asyncio.Queue(maxsize=self.slots_n)
        # unbounded: a slow eval delays the next one, drops none (a put never blocks the weights task)
        self.eval_q: asyncio.Queue[int] = asyncio.Queue()
        self.slots = asyncio.Semaphore(self.slots_n)
        self.changed = asyncio.Event()
        self.seq, self.last_time = 0, time.monotonic()
        if self.metrics_port is not None and self.metrics_port >= 0:
            self.bound_port = self.telemetry.serve(self.metrics_port, self.metrics_addr)
        if first > 1:
            log.info("resuming after complete batch %d", first - 1)
            await self.resume_state(first - 1)

    async def resume_state(self, batch: int) -> None:
        """Restore the pools, counters and sampler saved with complete batch ``batch``."""
        data = await asyncio.to_thread(layout.read_orchestrator_state, self.run_dir, batch)
        if data is None:
            log.warning(
                "batch %d has no orchestrator state: difficulty pools and counters start afresh", batch
            )
            return
        where = str(layout.rollouts_dir(self.run_dir, batch) / layout.ORCHESTRATOR_STATE_FILE)
        self.restore(OrchestratorState.from_json(data, where))

    def restore(self, saved: OrchestratorState) -> None:
        same = self.sampler.restore(saved.sampler)
        changed = sorted(set(self.sampler.tasks) - set(same))
        if changed:
            log.warning(
                "environments %s have another task count than when saved: their pools start afresh", changed
            )
        self.pools.restore(saved.pools, envs=same)
        self.counts = Counts.from_json(saved.counts)
        self.last_counts = copy.copy(self.counts)
        self.roller.tokens = self.counts.tokens
        self.seq = saved.seq
        self.control_rng.setstate(rng_tuple(saved.control_rng))

    def snapshot(self, batch: int) -> OrchestratorState:
        """The state to save with ``batch``: the groups not in a written batch are to be drawn again."""
        return OrchestratorState(
            batch=batch,
            seq=self.seq,
            counts=self.counts.to_json(),
            pools=self.pools.state(),
            sampler=self.sampler.state(also_again=list(self.open_draws.values())),
            control_rng=rng_state(self.control_rng.getstate()),
        )

    async def close(self) -> None:
        self.closing.set()
        for task in list(self.groups):
            task.cancel()
        await asyncio.gather(*self.groups, return_exceptions=True)
        while hasattr(self, "results") and not self.results.empty():
            self.results.get_nowait()
        if hasattr(self, "client"):
            await self.client.aclose()
        self.telemetry.stop()

    # ------------------------------------------------------------------------------------------ weights

    async def newer_weights(self) -> int | None:
        """The newest complete weights above those pushed, once there are some (None when closing)."""
        return await asyncio.to_thread(
            layout.wait_newer_weights, self.run_dir, self.pushed, self.poll_s, self.closing
        )

    async def push(self, step: int) -> None:
        """Push weights/step_N to the servers (they apply it between two decode steps, requests in flight)."""
        await self.client.update_weights(str(layout.weights_dir(self.run_dir, step)), step)
        old, self.pushed = self.pushed, step
        self.queue_evals(old, step)

    async def sync_weights(self, step: int) -> None:
        """Wait for weights/step_{>=step}/STABLE, push them, wait until the servers run them."""
        while self.pushed < step:
            latest = await self.newer_weights()
            if latest is None:
                raise RunError("the orchestrator was closed while waiting for weights")
            await self.push(latest)
        await self.client.wait_all_at(step)

    async def follow_weights(self) -> None:
        """Background: new weights go to the servers as soon as they are complete (in-flight updates)."""
        while (latest := await self.newer_weights()) is not None:
            await self.push(latest)

    # ------------------------------------------------------------------------------------------ groups

    async def refill(self) -> None:
        """Producer: a free slot starts a group for the earliest batch that still needs one."""
        while True:
            await self.slots.acquire()
            self.start_group(await self.next_target())

    async def next_target(self) -> int:
        """The earliest batch that needs a group (waits while every batch up to the last is planned)."""
        while (target := self.planner.next_target()) is None:
            self.changed.clear()
            await self.changed.wait()
        return target

    def start_group(self, target: int) -> None:
        """Draw a task and start its group, generated for batch ``target`` (the caller holds a slot)."""
        draw = self.sampler.next()
        self.planner.start(target)
        self.seq += 1
        self.counts.groups_started += 1
        gid = f"{self.prefix}-g{self.seq}"
        self.open_draws[gid] = draw
        task = asyncio.create_task(self.run_group(gid, target, draw), name=f"group-{gid}")
        self.groups.add(task)
        task.add_done_callback(self.groups.discard)

    async def run_group(self, gid: str, target: int, draw: Draw) -> None:
        item = Finished(gid, target, draw)
        try:
            env = self.envs[draw.env]
            min_step = min_weight_step(target, self.alg.max_async_level)
            item.results = await self.roller.group(env, draw.task, self.alg.rollouts_per_prompt, min_step)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - forwarded to the main loop, which stops the run
            item.error = exc
        await self.results.put(item)

    async def assemble(self, step: int) -> list[Kept]:
        while not self.planner.complete(step):
            self.absorb(await self.results.get())
        return self.planner.take(step)

    def absorb(self, item: Finished) -> None:
        """Score bookkeeping of one finished group, then free its slot."""
        if item.error is not None:
            raise RunError(f"rollout group {item.gid} crashed: {item.error!r}") from item.error
        if self.alg.truncated == "zero":
            zero_truncated(item.results)
        if self.alg.shuffle_rewards:
            self.shuffle_rewards(item.results)
        outcome = finalize_group(item.gid, item.draw.env, item.draw.task.id, item.results)
        self.counts.failed += outcome.failed
        if outcome.solve_rate is not None:
            self.pools.record(item.draw.env, item.draw.index, outcome.solve_rate)
        kept = self.keep(item, outcome)
        if kept is None:
            self.open_draws.pop(item.gid, None)
        self.planner.finish(item.target, kept)
        self.slots.release()
        self.changed.set()

    def shuffle_rewards(self, results: list[SampleResult]) -> None:
        """Control experiment: rewards permuted within the group, so they no longer follow the completions."""
        scored = [r for r in results if not r.failed]
        rewards = [r.reward for r in scored]
        self.control_rng.shuffle(rewards)
        for r, reward in zip(scored, rewards, strict=True):
            r.reward = reward

    def keep(self, item: Finished, outcome: GroupOutcome) -> Kept | None:
        if outcome.all_failed:
            self.counts.failed_groups += 1
            return None
        steps = [s.weight_steps for s in outcome.samples]
        verdict = judge_group(steps, item.target, self.alg.max_async_level, self.alg.max_off_policy_steps)
        if verdict is not Verdict.ACCEPT:
            if verdict is Verdict.BEYOND_ASYNC:
                self.counts.dropped_stale += 1
            else:
                self.counts.dropped_off_policy += 1
            self.sampler.reschedule(item.draw)
            log.info(
                "group %s (weights %d..%d) is %s for batch %d",
                item.gid,
                min(f for f, _ in steps),
                max(last for _, last in steps),
                verdict.value,
                item.target,
            )
            return None
        if outcome.degenerate:
            self.counts.dropped_zero_adv += 1
            self.degenerate_streak += 1
            if self.degenerate_streak % (4 * self.alg.prompts_per_step) == 0:
                log.warning(
                    "%d groups in a row had equal rewards in every rollout and were dropped (no learning signal); "
                    "batch %d waits: the task may be too hard or too easy for the model (a longer warm-up, a "
                    "partial-credit reward, or the difficulty filter)",
                    self.degenerate_streak,
                    item.target,
                )
            return None
        self.degenerate_streak = 0
        return Kept(item.gid, outcome, [r.reward for r in item.results if not r.failed])

    # ------------------------------------------------------------------------------------------ hand-over

    async def hand_over(self, step: int, kept: list[Kept]) -> None:
        """Write rollouts/step_N and the state after it (STABLE last), then the metrics and progress lines."""
        samples = [s for g in kept for s in g.outcome.samples]
        for group in kept:
            self.open_draws.pop(group.gid, None)
        self.counts.tokens = self.roller.tokens
        delta, self.last_counts = self.counts.minus(self.last_counts), copy.copy(self.counts)
        state = self.snapshot(step).to_json()  # on the event loop: nothing moves while it is taken
        await asyncio.to_thread(layout.write_rollouts, self.run_dir, step, samples, state)
        now = time.monotonic()
        rewards = [r for g in kept for r in g.rewards]
        solve = [g.outcome.solve_rate for g in kept if g.outcome.solve_rate is not None]
        record = step_record(step, samples, rewards, solve, delta, now - self.last_time, self.pools.counts())
        self.last_time = now
        if self.pending_eval is not None:
            record["eval_accuracy"], self.pending_eval = self.pending_eval, None
        await asyncio.to_thread(layout.append_jsonl, self.metrics_path, record)
        self.telemetry.observe(record, self.planner.groups_in_flight)
        print(progress_line(record, self.steps), flush=True)

    # ------------------------------------------------------------------------------------------ evals

    def queue_evals(self, old: int, new: int) -> None:
        """Ask for an eval at weights ``new`` when the update old -> new crossed a multiple of ``evals.every``
        (weights that jumped several steps get one eval, at the newest; the final eval runs after the loop)."""
        every = self.recipe.evals.every
        if not self.eval_set or not every or new >= self.steps or old < 0:
            return
        if any(s % every == 0 for s in range(old + 1, new + 1)):
            self.eval_q.put_nowait(new)  # unbounded: never full, never blocks the weights task

    async def eval_worker(self) -> None:
        while True:
            step = await self.eval_q.get()
            try:
                await self.evaluate(step)
            finally:
                self.eval_q.task_done()

    async def evaluate(self, step: int) -> EvalResult | None:
        if not self.eval_set:
            return None
        evals = self.recipe.evals
        result = await run_eval(self.eval_roller, self.eval_set, step, k=evals.k, greedy=evals.greedy)
        record = result.record()
        await asyncio.to_thread(layout.append_jsonl, self.metrics_path, record)
        self.telemetry.observe_eval(record)
        self.pending_eval = result.accuracy
        print(result.line(), flush=True)
        return result

    async def eval_before(self) -> None:
        done = await asyncio.to_thread(layout.read_jsonl, self.metrics_path, "orchestrator")
        if not any(r.get("kind") == "eval" and r.get("step") == 0 for r in done):
            await self.evaluate(0)

    async def write_summary(self, final: EvalResult | None, wall: float) -> dict[str, Any]:
        from intellect.rl.orchestrator.summary import summarize

        records = await asyncio.to_thread(layout.read_jsonl, self.metrics_path, "orchestrator")
        summary = summarize(records, self.steps, final.accuracy if final else None, wall)
        summary["first_batch_this_session"] = self.first_batch
        await asyncio.to_thread(layout.write_json, layout.summary_path(self.run_dir), summary)
        return summary


async def _tasks(env: Environment, name: str, split: str) -> Sequence[Task]:
    """The environment's tasks of ``split``; any failure to build them is one line (EnvError)."""
    try:
        return await asyncio.to_thread(env.tasks, split)
    except IntellectError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
        raise EnvError(
            f"environment {name!r}: cannot build its {split} tasks: {type(exc).__name__}: {exc}"
        ) from exc
