"""A scripted inference server behind ``httpx.MockTransport``, for tests and benchmarks (no model, no socket).

It speaks the inference HTTP API of ``intellect.rl``: completions are random tokens drawn from ``alphabet``
(then eos, or ``max_tokens`` tokens) with made-up logprobs, after a latency drawn from ``latency(rng)``.
``kill()`` makes the server refuse connections and breaks the requests it had in flight; ``restart()``
brings it back running ``restart_step`` weights, as a restarted process would. ``TcpFront`` puts one behind a
real loopback HTTP listener, for tests and benchmarks of the client's connections.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from intellect.rl.envs.base import Environment, Rubric, Task, Turn


@dataclass
class FakeServer:
    url: str
    alphabet: Sequence[int]
    eos: int
    latency: Callable[[random.Random], float] = lambda rng: 0.0
    update_delay_s: float = 0.0
    restart_step: int | None = None
    capacity: int | None = None  # most requests decoded at once (the rest queue), like a server's max batch
    step: int | None = None
    up: bool = True
    silent: bool = False  # powered off: requests neither answer nor fail (no RST from a dead host)
    epoch: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    inflight: int = 0
    max_inflight: int = 0
    served: int = 0
    broken: int = 0
    updates: list[int] = field(default_factory=list)
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    def kill(self) -> None:
        self.up = False
        self.epoch += 1

    def restart(self) -> None:
        self.step = self.restart_step
        self.up = True
        self.silent = False

    def power_off(self) -> None:
        """The node is gone: nothing answers, every request in flight and every new one hangs."""
        self.silent = True
        self.epoch += 1

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.silent:
            await asyncio.Event().wait()  # until the client gives up (its timeout or its cancel)
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "ok", "weight_step": self.step})
        body = json.loads(request.content or b"{}")
        if path == "/update_weights":
            await asyncio.sleep(self.update_delay_s)
            if self.silent:
                await asyncio.Event().wait()
            self.step = int(body["step"])
            self.updates.append(self.step)
            return httpx.Response(200, json={"step": self.step})
        if path == "/v1/completions":
            return await self._complete(request, body)
        return httpx.Response(404, json={"error": path})

    async def _complete(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        epoch = self.epoch
        if self.capacity is not None and self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self._slots is not None:
                async with self._slots:
                    await asyncio.sleep(self.latency(self.rng))
            else:
                await asyncio.sleep(self.latency(self.rng))
        finally:
            self.inflight -= 1
        if self.silent:
            await asyncio.Event().wait()
        if self.epoch != epoch or not self.up:
            self.broken += 1
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        self.served += 1
        greedy = float(body.get("temperature", 1.0)) == 0.0
        choices = [self._choice(i, body, greedy) for i in range(int(body.get("n", 1)))]
        return httpx.Response(200, json={"choices": choices, "usage": {}})

    def _choice(self, index: int, body: dict[str, Any], greedy: bool) -> dict[str, Any]:
        limit = int(body.get("max_tokens", 16))
        rng = random.Random(str(body["prompt"])) if greedy else self.rng
        length = rng.randint(1, max(1, limit))
        ids = [rng.choice(list(self.alphabet)) for _ in range(length)]
        finish = "length"
        if len(ids) < limit:
            ids.append(self.eos)
            finish = "stop"
        lps = [-rng.random() for _ in ids]
        return {
            "index": index,
            "text": "",
            "finish_reason": finish,
            "token_ids": ids,
            "prompt_token_ids": list(body["prompt"]),
            "logprobs": {"tokens": [str(i) for i in ids], "token_logprobs": lps},
        }


class FakeCluster:
    """Several fake servers behind one transport, addressed by their base URLs."""

    def __init__(self, servers: Sequence[FakeServer]) -> None:
        self.servers = {s.url.rstrip("/"): s for s in servers}
        self._by_addr = {_addr(httpx.URL(s.url)): s for s in servers}
        self.transport = httpx.MockTransport(self._route)

    @property
    def urls(self) -> list[str]:
        return list(self.servers)

    async def _route(self, request: httpx.Request) -> httpx.Response:
        server = self._by_addr.get(_addr(request.url))
        if server is None:
            raise httpx.ConnectError(f"no server at {request.url.host}", request=request)
        return await server.handle(request)


def _addr(url: httpx.URL) -> tuple[str, int]:
    return url.host, url.port or (443 if url.scheme == "https" else 80)


class TcpFront:
    """A fake server behind a real HTTP/1.1 listener on loopback, with keep-alive, counting connections.

    It stands in for the inference server's socket side (uvicorn) where a test or benchmark is about the
    client's connections and CPU rather than generation. Requests are parsed by Content-Length (what httpx
    sends), answered by ``FakeServer.handle``; a fake that refuses (killed) drops the connection.
    """

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.requests_per_connection: list[int] = []  # one entry per accepted connection
        self._listener: asyncio.Server | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._listener = await asyncio.start_server(self._serve, host, port)
        bound = self._listener.sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.requests_per_connection)
        self.requests_per_connection.append(0)
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, _ = head[0].split(" ", 2)
                fields = {
                    k.strip().lower(): v for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)
                }
                length = int(fields.get("content-length", 0))
                body = await reader.readexactly(length)
                try:
                    resp = await self.server.handle(
                        httpx.Request(method, self.server.url + target, content=body)
                    )
                except httpx.HTTPError:
                    return
                self.requests_per_connection[index] += 1
                status = f"HTTP/1.1 {resp.status_code} {resp.reason_phrase}\r\n"
                headers = f"content-type: application/json\r\ncontent-length: {len(resp.content)}\r\n\r\n"
                writer.write((status + headers).encode("latin-1") + resp.content)
                await writer.drain()
        finally:
            writer.close()


# ------------------------------------------------------------------------------ a tokenizer and environment

DIGITS = "0123456789>"


class DigitTokenizer:
    """pad 0, bos 1, eos 2, then the digits and '>' (ids 3..13): enough for ``CoinFlipEnv``."""

    eos_token_id = 2
    alphabet = tuple(range(3, 13))  # the digits

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = [3 + DIGITS.index(c) for c in text]
        return [1, *ids] if bos else ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        out = []
        for i in ids:
            if i == self.eos_token_id and skip_special:
                break
            if i >= 3:
                out.append(DIGITS[i - 3])
        return "".join(out)


def even_start(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    return 1.0 if completion[:1] in ("0", "2", "4", "6", "8") else 0.0


class CoinFlipEnv(Environment):
    """Reward 1 when the completion starts with an even digit: about half of the fake server's samples."""

    name = "coin-flip"

    def __init__(self, size: int = 200, **args: Any) -> None:
        super().__init__(size=size, **args)
        self.size = size
        self.rubric = Rubric([(even_start, 1.0)])

    def tasks(self, split: str = "train") -> Sequence[Task]:
        base = 0 if split == "train" else 500
        return [Task(id=f"c{base + i}", prompt=f"{base + i:03d}>", answer=None) for i in range(self.size)]
