"""HTTP client of the inference servers (the API in ``intellect.rl``'s docstring).

- Requests go to the ready server with the fewest sequences in flight whose weights satisfy the request's
  ``min_step`` (the async bound); with none ready at that step the request waits for a weight update.
- A transport error marks the server down and the request is retried, with backoff, on another server (or the
  same one once it is back). A server that comes back is probed on ``/health`` and brought to the current
  weights before it gets requests again (a restarted server may hold older weights). After ``retry_for_s``
  with no server up the request fails with ``InferenceError``.
- A server that stops answering without failing (its node lost power: no connection reset, only silence) is found
  by a liveness probe: while requests are in flight to it, ``/health`` is asked every ``liveness_every_s``; after
  ``liveness_misses`` unanswered probes it is marked down and its requests in flight are abandoned and rerouted
  (a generation may take minutes, so the request timeout cannot be what notices).
- Each request is stamped with the weight steps that produced it: ``first`` = the server's confirmed step when
  the (successful) attempt was sent, ``last`` = its step when the answer came, or the step of an update in
  flight to it (an upper bound: the update may have landed mid-generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from intellect.errors import RunError

log = logging.getLogger(__name__)


class InferenceError(RunError):
    """An inference request failed for good (after retries), or a server answered with a client error."""


class _Retryable(Exception):
    pass


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None
    text: str
    weight_steps: tuple[int, int] | None = None  # from servers that report it (the embedded one does)


@dataclass
class Stamp:
    """The weight steps and server of one request, filled in by the client."""

    first: int | None = None
    last: int | None = None
    server: str | None = None
    attempts: int = 0


@dataclass
class Server:
    url: str
    up: bool = False
    step: int | None = None
    pending: int | None = None
    inflight: int = 0
    failures: int = 0
    recovering: asyncio.Task[None] | None = field(default=None, repr=False)
    misses: int = 0  # liveness probes in a row that got no answer
    scopes: set[asyncio.Timeout] = field(default_factory=set, repr=False)  # of its requests in flight

    def ready_for(self, min_step: int) -> bool:
        return self.up and self.step is not None and self.step >= min_step


def parse_completions(data: dict[str, Any]) -> list[Completion]:
    """The choices of a /v1/completions answer, in index order."""
    out = []
    for choice in sorted(data["choices"], key=lambda c: c.get("index", 0)):
        ids = [int(t) for t in choice["token_ids"]]
        lps = [float(x) for x in (choice.get("logprobs") or {}).get("token_logprobs") or []]
        if len(lps) != len(ids):
            raise InferenceError(f"server answered {len(ids)} token ids but {len(lps)} logprobs")
        steps = choice.get("weight_steps")
        tagged = (int(steps[0]), int(steps[-1])) if steps else None
        out.append(Completion(ids, lps, choice.get("finish_reason"), choice.get("text", ""), tagged))
    return out


class InferenceClient:
    def __init__(
        self,
        urls: list[str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        request_timeout_s: float = 600.0,
        retry_for_s: float = 120.0,
        backoff_s: tuple[float, float] = (0.05, 2.0),
        probe_every_s: float = 0.25,
        liveness_every_s: float = 5.0,
        liveness_misses: int = 2,
    ) -> None:
        if not urls:
            raise InferenceError("no inference server given", hint="set INFERENCE_URLS=http://host:port,...")
        self.servers = [Server(u.rstrip("/")) for u in urls]
        self._transport, self._timeout = transport, request_timeout_s
        self._tls = httpx.create_ssl_context()  # built once: each client building its own costs about 20 ms
        self._http = self._new_http()  # health checks and weight pushes
        # Completions go through lanes: a small client per request in flight to a server (one connection),
        # reused most recently freed first. One pool holding as many connections as requests in flight costs
        # O(connections^2) per request in httpcore 1.0's bookkeeping: about 1.5 ms of CPU per request at 16 in
        # flight and 2.6 ms at 32, against 0.5 ms with lanes (bench/http_lanes.py).
        self._idle_lanes: dict[str, list[httpx.AsyncClient]] = {s.url: [] for s in self.servers}
        self._lanes: list[httpx.AsyncClient] = []
        self.retry_for_s = retry_for_s
        self.backoff_s = backoff_s
        self.probe_every_s = probe_every_s
        self.liveness_every_s, self.liveness_misses = liveness_every_s, liveness_misses
        self._liveness: asyncio.Task[None] | None = None
        self.lost = 0  # servers found silent by the liveness probe
        self.target: tuple[str, int] | None = None  # the weights every server should run
        self._changed = asyncio.Condition()
        self.retries = 0

    async def aclose(self) -> None:
        tasks = [s.recovering for s in self.servers if s.recovering is not None]
        if self._liveness is not None:
            tasks.append(self._liveness)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lanes, self._lanes = self._lanes, []
        for idle in self._idle_lanes.values():
            idle.clear()
        for lane in lanes:
            await lane.aclose()
        await self._http.aclose()

    # ------------------------------------------------------------------------------------------ health

    async def health(self, server: Server, timeout_s: float = 5.0) -> dict[str, Any]:
        try:  # asyncio's timeout, not only httpx's: it also bounds a transport that never answers
            async with asyncio.timeout(timeout_s):
                resp = await self._http.get(server.url + "/health", timeout=timeout_s)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"{server.url}/health: no answer in {timeout_s:.0f} s") from exc
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    async def wait_healthy(self, timeout_s: float = 600.0) -> None:
        """Wait until every server answers /health; record the weight step each one runs."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.servers)
        while pending:
            for server in list(pending):
                try:
                    data = await self.health(server)
                except (httpx.HTTPError, ValueError):
                    continue
                server.up, server.step = True, _as_step(data.get("weight_step"))
                pending.remove(server)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.url for s in pending)
                raise InferenceError(f"inference servers not healthy after {timeout_s:.0f} s: {names}")
            if pending:
                await asyncio.sleep(self.probe_every_s)
        await self._notify()

    # ------------------------------------------------------------------------------------------ weights

    async def update_weights(self, path: str, step: int) -> None:
        """Make ``step`` the target and push it to every server that is up (down ones get it on recovery)."""
        self.target = (path, step)
        await asyncio.gather(*(self._push(s, path, step) for s in self.servers if s.up))

    async def _push(self, server: Server, path: str, step: int) -> None:
        if server.step is not None and server.step >= step:
            return
        server.pending = step
        self._watch()
        try:
            async with asyncio.timeout(None) as scope:  # a server gone silent must not hold every update back
                server.scopes.add(scope)
                try:
                    resp = await self._http.post(
                        server.url + "/update_weights", json={"path": path, "step": step}
                    )
                finally:
                    server.scopes.discard(scope)
            resp.raise_for_status()
            got = _as_step(resp.json().get("step", step))
        except (httpx.HTTPError, TimeoutError) as exc:
            self._mark_down(server, exc)
            await self._notify()  # the oldest weights among the servers up may have moved (wait_all_at)
            return
        finally:
            server.pending = None
        server.step = got if server.step is None or got is None else max(server.step, got)
        await self._notify()

    def min_step(self) -> int | None:
        """The oldest weights a server that is up runs (None when none is up or one has no weights yet)."""
        steps = [s.step for s in self.servers if s.up]
        if not steps or any(x is None for x in steps):
            return None
        return min(x for x in steps if x is not None)

    async def wait_all_at(self, step: int) -> None:
        """Wait until every server that is up runs weights >= ``step`` and at least one is up."""
        async with self._changed:
            await self._changed.wait_for(lambda: (m := self.min_step()) is not None and m >= step)

    # ------------------------------------------------------------------------------------------ requests

    async def complete(
        self, payload: dict[str, Any], *, min_step: int = 0, stamp: Stamp | None = None
    ) -> list[Completion]:
        """POST /v1/completions on a server running weights >= ``min_step``; retried and rerouted on errors."""
        stamp = stamp if stamp is not None else Stamp()
        n = int(payload.get("n", 1))
        deadline = time.monotonic() + self.retry_for_s
        while True:
            server = await self._pick(min_step, deadline)
            stamp.first, stamp.server, stamp.attempts = server.step, server.url, stamp.attempts + 1
            server.inflight += n
            self._watch()
            try:
                async with asyncio.timeout(
                    None
                ) as scope:  # the liveness probe ends it if the server goes silent
                    server.scopes.add(scope)
                    try:
                        data = await self._post_completion(server, payload)
                    finally:
                        server.scopes.discard(scope)
            except (httpx.TransportError, _Retryable, TimeoutError) as exc:
                if isinstance(exc, httpx.TransportError):
                    self._mark_down(server, exc)
                self.retries += 1
                if time.monotonic() > deadline:
                    raise InferenceError(f"completion failed after {stamp.attempts} attempts: {exc}") from exc
                await asyncio.sleep(self._backoff(stamp.attempts))
                continue
            finally:
                server.inflight -= n
                # Wake the waiters only when readiness changed: a load change alone makes no group ready, and
                # waking every waiting group after every request cost 16 x 16 wake-ups a step at k=1.
                if not server.up:
                    await self._notify()
            stamp.last = max(x for x in (server.step, server.pending, stamp.first) if x is not None)
            return parse_completions(data)

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self._transport, timeout=self._timeout, verify=self._tls)

    @contextlib.asynccontextmanager
    async def _lane(self, server: Server) -> AsyncIterator[httpx.AsyncClient]:
        """A client that carries one request at a time to ``server`` (made on demand, returned after)."""
        idle = self._idle_lanes[server.url]
        if idle:
            lane = idle.pop()
        else:
            lane = self._new_http()
            self._lanes.append(lane)
        try:
            yield lane
        finally:
            idle.append(lane)

    async def _post_completion(self, server: Server, payload: dict[str, Any]) -> dict[str, Any]:
        async with self._lane(server) as lane:
            resp = await lane.post(server.url + "/v1/completions", json=payload)
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Retryable(f"{server.url} answered {resp.status_code}")
        if resp.status_code >= 400:
            raise InferenceError(f"{server.url} refused the request ({resp.status_code}): {resp.text[:200]}")
        data: dict[str, Any] = resp.json()
        return data

    def _backoff(self, attempt: int) -> float:
        low, high = self.backoff_s
        return float(min(high, low * 2 ** (attempt - 1)))

    async def _pick(self, min_step: int, deadline: float) -> Server:
        """The least-loaded server ready for ``min_step``; waits for one (forever while some server is up and
        only a weight update is missing; until ``deadline`` while none is up)."""
        async with self._changed:
            while True:
                ready = [s for s in self.servers if s.ready_for(min_step)]
                if ready:
                    return min(ready, key=lambda s: s.inflight)
                if not any(s.up for s in self.servers) and time.monotonic() > deadline:
                    raise InferenceError(f"no inference server up for {self.retry_for_s:.0f} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=self.probe_every_s)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------------------------------ liveness

    def _watch(self) -> None:
        if self._liveness is None or self._liveness.done():
            self._liveness = asyncio.create_task(self._probe_busy(), name="inference-liveness")

    async def _probe_busy(self) -> None:
        """Every ``liveness_every_s``: ask ``/health`` of each server that is up with requests in flight."""
        while True:
            await asyncio.sleep(self.liveness_every_s)
            busy = [s for s in self.servers if s.up and s.scopes]
            await asyncio.gather(*(self._probe(s) for s in busy))

    async def _probe(self, server: Server) -> None:
        try:
            await self.health(server, self.liveness_every_s)
            server.misses = 0
        except (httpx.HTTPError, ValueError):
            server.misses += 1
        if server.misses < self.liveness_misses or not server.up:
            return
        self.lost += 1
        self._mark_down(server, TimeoutError(f"{server.misses} liveness probes unanswered"))
        now = asyncio.get_running_loop().time()
        for scope in list(server.scopes):
            scope.reschedule(now)  # its request raises TimeoutError and is rerouted
        server.misses = 0

    # ------------------------------------------------------------------------------------------ recovery

    def _mark_down(self, server: Server, exc: BaseException) -> None:
        if server.up:
            log.warning("inference server %s is down (%s); rerouting its requests", server.url, exc)
        server.up = False
        server.failures += 1
        if server.recovering is None or server.recovering.done():
            server.recovering = asyncio.create_task(self._recover(server), name=f"recover-{server.url}")

    async def _recover(self, server: Server) -> None:
        """Probe a down server until it answers, bring it to the target weights, then put it back in use."""
        while True:
            await asyncio.sleep(self.probe_every_s)
            try:
                data = await self.health(server)
                server.step = _as_step(data.get("weight_step"))
                # the target may move while we push: loop until the server has the newest one
                while self.target is not None and (server.step is None or server.step < self.target[1]):
                    path, step = self.target
                    resp = await self._http.post(
                        server.url + "/update_weights", json={"path": path, "step": step}
                    )
                    resp.raise_for_status()
                    server.step = _as_step(resp.json().get("step", step))
            except (httpx.HTTPError, ValueError):
                continue
            server.up = True
            log.warning("inference server %s is back (weights step %s)", server.url, server.step)
            await self._notify()
            return


def _as_step(value: Any) -> int | None:
    return None if value is None else int(value)
