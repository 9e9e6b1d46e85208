"""The orchestrator's CPU per completion request: one shared httpx pool vs the client's lanes.

Before lanes, ``InferenceClient`` sent every completion through one ``httpx.AsyncClient`` with an unbounded
pool: as many keep-alive connections as requests in flight. httpcore 1.0 walks the whole pool on each request
start and end, with a quadratic idle count and a socket poll per idle connection, so each request costs more
as more run at once. The client now sends each request through a lane: a small client that carries one
request at a time to one server.

The server is a real HTTP/1.1 listener on loopback (``TcpFront`` over the scripted fake, 5 ms per request), in
its own process on core 1; the client runs on core 0 and sends bursts of N concurrent requests (N = groups in
flight: 16 per batch at k=0, up to 32 at k=1 in ``bench/async_vs_sync.py``). The figure is client CPU seconds
per request (``time.process_time``), both ways in the same run.

Run: .venv/bin/python bench/http_lanes.py [--rounds 60] [--inflight 16 32 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from intellect.rl.orchestrator.client import InferenceClient, parse_completions  # noqa: E402
from intellect.rl.orchestrator.fake import FakeServer, TcpFront  # noqa: E402

PAYLOAD = {"prompt": [1, 3, 4], "max_tokens": 8, "temperature": 1.0, "n": 8, "logprobs": 1}


async def serve(port: int) -> None:
    front = TcpFront(FakeServer("http://fake:80", [3, 4, 5], eos=2, latency=lambda rng: 0.005, step=0))
    await front.start(port=port)
    await asyncio.Event().wait()


async def shared_pool(url: str, inflight: int, rounds: int) -> float:
    """The former client: one AsyncClient, unbounded pool."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def one() -> None:
            resp = await http.post(url + "/v1/completions", json=PAYLOAD)
            parse_completions(resp.json())

        return await timed(one, inflight, rounds)


async def lanes(url: str, inflight: int, rounds: int) -> float:
    client = InferenceClient([url])
    await client.wait_healthy(10)

    async def one() -> None:
        await client.complete(PAYLOAD)

    try:
        return await timed(one, inflight, rounds)
    finally:
        await client.aclose()


async def make_lanes(url: str, n: int) -> None:
    client = InferenceClient([url])
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            await stack.enter_async_context(client._lane(client.servers[0]))
    await client.aclose()


async def timed(one: Callable[[], Awaitable[None]], inflight: int, rounds: int) -> float:
    async def burst() -> None:
        await asyncio.gather(*(one() for _ in range(inflight)))

    for _ in range(3):  # connections opened, caches warm
        await burst()
    start = time.process_time()
    for _ in range(rounds):
        await burst()
    return (time.process_time() - start) / (rounds * inflight)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--inflight", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return
    two = (os.cpu_count() or 1) > 1
    port = free_port()
    argv = [sys.executable, __file__, "--serve", str(port)]
    server = subprocess.Popen(["taskset", "-c", "1" if two else "0", *argv])
    try:
        os.sched_setaffinity(0, {0})
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        print(f"client CPU per request (n=8 choices each), {args.rounds} bursts; server on its own core")
        start = time.process_time()
        asyncio.run(make_lanes(url, 64))
        print(
            f"a client and its first 64 lanes: {(time.process_time() - start) * 1e3:.1f} ms of CPU (one TLS context)"
        )
        for n in args.inflight:
            old = asyncio.run(shared_pool(url, n, args.rounds))
            new = asyncio.run(lanes(url, n, args.rounds))
            print(
                f"{n:3d} in flight: shared pool {old * 1e3:.2f} ms, lanes {new * 1e3:.2f} ms: {old / new:.1f}x less"
            )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
