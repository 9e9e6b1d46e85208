"""Sandbox benchmarks. Prints numbers; asserts nothing.

For the isolated runner (bubblewrap) and, in the same run, the unisolated runner (a plain subprocess with
rlimits, what the code environment used before):

1. latency of a trivial program (``python3 -I -S -c pass``), run after run: p50 and p99;
2. latency of a typical test run: a code-environment task (a templated function, 4 asserts) scored through the
   harness, cold (the sandbox starts on demand) and warm (one started ahead while "the model generates": a
   pause between runs), p50 and p99;
3. executions per second of the trivial program and of the typical test run, with 1, 8 and 32 running at once
   (threads through a ``SandboxPool`` of that size, for ``--seconds`` each).

4. scoring through the orchestrator's ``Roller``: groups of 8 whose programs each wait 0.2 s (a test run that
   sleeps or blocks, the case where threads, not cores, bound throughput), samples scored per second with the
   environment's own threads (``Environment.workers`` = ``sandbox_concurrency`` 8) and with asyncio's default
   pool (min(32, cores + 4) threads: 6 on 2 cores).

Goals on the project's 2 cores: p50 <= 50 ms for the trivial program, >= 40 executions/s at 8 concurrent.

    .venv/bin/python bench/sandbox.py [--runs 100] [--seconds 4] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from intellect.rl.envs.code_env import Code  # noqa: E402
from intellect.sandbox import BwrapRunner, Request, Runner, SandboxPool, UnisolatedRunner  # noqa: E402
from intellect.sandbox.harness import check_program, harness_limits, harness_request  # noqa: E402

TRIVIAL = Request(["python3", "-I", "-S", "-c", "pass"])
TIMEOUT_S = 5.0


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def timed(fn: Callable[[], object], runs: int, pause: float = 0.0) -> list[float]:
    out = []
    for _ in range(runs):
        if pause:
            time.sleep(pause)
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def throughput(fn: Callable[[], object], workers: int, seconds: float) -> float:
    count = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop() -> None:
        while time.perf_counter() < stop:
            fn()
            with lock:
                count[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0] / (time.perf_counter() - start)


def typical_task() -> tuple[dict[str, object], str]:
    env = Code(size=8, sandbox_warm=0)  # only to draw a task and its reference
    task = env.tasks()[0]
    env.pool.close()
    solution = task.info["solution"]
    assert isinstance(solution, str)
    return task.answer, solution


def bench_runner(runner: Runner, args: argparse.Namespace, concurrency: list[int]) -> dict[str, str]:
    spec, solution = typical_task()
    limits = harness_limits(TIMEOUT_S)
    cold = SandboxPool(runner, size=max(concurrency))
    warm = SandboxPool(runner, size=1, warm=1, template=harness_request(limits))

    def test_run(pool: SandboxPool) -> None:
        verdict = check_program(pool, solution, spec, TIMEOUT_S)
        if verdict.passed != verdict.total:
            raise SystemExit(f"{runner.name}: the reference solution failed: {verdict.outcomes}")

    runner.run(TRIVIAL)  # first use: interpreter facts, the probe
    row: dict[str, str] = {}
    p50, p99 = percentiles(timed(lambda: cold.run(TRIVIAL), args.runs))
    row["trivial p50/p99 ms"] = f"{p50:.1f} / {p99:.1f}"
    p50, p99 = percentiles(timed(lambda: test_run(cold), args.runs))
    row["test run cold p50/p99 ms"] = f"{p50:.1f} / {p99:.1f}"
    test_run(warm)
    p50, p99 = percentiles(timed(lambda: test_run(warm), args.runs, pause=0.1))
    row["test run warm p50/p99 ms"] = f"{p50:.1f} / {p99:.1f}"
    warm.close()
    for n in concurrency:
        pool = SandboxPool(runner, size=n)
        row[f"trivial exec/s @{n}"] = f"{throughput(lambda p=pool: p.run(TRIVIAL), n, args.seconds):.1f}"
    for n in concurrency:
        pool = SandboxPool(runner, size=n)
        row[f"test runs/s @{n}"] = f"{throughput(lambda p=pool: test_run(p), n, args.seconds):.1f}"
    return row


def bench_roller(groups: int) -> dict[str, float]:
    """Samples scored per second through ``Roller.group`` (code env, sandbox_concurrency 8), with the env's own
    threads and with the default pool."""
    import asyncio
    import random

    from intellect.rl.envs.base import Task
    from intellect.rl.envs.code_env import normalise_tests
    from intellect.rl.orchestrator.client import InferenceClient
    from intellect.rl.orchestrator.fake import DigitTokenizer, FakeCluster, FakeServer
    from intellect.rl.orchestrator.rollout import Roller, Sampling

    waits = "```python\nimport time\ntime.sleep(0.2)\ndef f(x):\n    return x + 1\n```"

    class Waiting(Code):
        name = "waiting-code"

        def score(self, task, completion, transcript=()):  # type: ignore[no-untyped-def]
            return super().score(task, waits, transcript)

    async def run(env: Code) -> float:
        server = FakeServer("http://inf:8000", DigitTokenizer.alphabet, eos=2, rng=random.Random(0), step=0)
        client = InferenceClient([server.url], transport=FakeCluster([server]).transport)
        await client.wait_healthy(5)
        roller = Roller(client, DigitTokenizer(), Sampling(max_new_tokens=4, max_seq_len=32, temperature=1.0))
        task = Task(
            id="wait", prompt="123>", answer=normalise_tests(["assert f(1) == 2"]), info={"timeout": 5.0}
        )
        await roller.group(env, task, 8, min_step=0)  # warm-up: the scoring mean and the sandboxes
        start = time.perf_counter()
        for _ in range(groups):
            samples = await roller.group(env, task, 8, min_step=0)
            assert all(s.reward == 1.0 for s in samples), [s.error for s in samples]
        took = time.perf_counter() - start
        await client.aclose()
        return groups * 8 / took

    out = {}
    for label, workers in (("env threads (8)", 8), ("default pool", 0)):
        env = Waiting(size=4, sandbox_warm=0, sandbox_concurrency=8)
        env.workers = workers
        out[label] = asyncio.run(run(env))
        env.pool.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="runs per latency figure")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per throughput figure")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of runs at once")
    parser.add_argument("--groups", type=int, default=6, help="groups of 8 per Roller figure")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    isolated = BwrapRunner()
    isolated.check()
    runners: list[Runner] = [isolated, UnisolatedRunner()]
    print(
        f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}, bwrap limits by: {isolated.limits_by}, "
        f"seccomp: {isolated.seccomp}, sandbox python: {isolated.python}, unisolated python: {sys.executable}"
    )
    rows = {r.name: bench_runner(r, args, concurrency) for r in runners}
    names = list(rows)
    width = max(len(k) for k in rows[names[0]])
    print(f"{'':{width}}  " + "  ".join(f"{n:>16}" for n in names))
    for key in rows[names[0]]:
        print(f"{key:{width}}  " + "  ".join(f"{rows[n][key]:>16}" for n in names))
    roller = bench_roller(args.groups)
    print("scored through Roller.group, groups of 8 programs that each wait 0.2 s (samples/s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in roller.items())
          + f"; ratio {roller['env threads (8)'] / roller['default pool']:.2f}x")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
