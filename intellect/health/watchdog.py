"""``intellect watchdog``: drain nodes as soon as they turn bad; resume only what it drained, after a hold.

Each cycle is one Prometheus query (all nodes) plus one sinfo/squeue (``query_nodes``). A cycle runs every
``poll_s`` seconds, and at once when Alertmanager posts to ``/alerts`` (the webhook only wakes the loop: the
decision always comes from a fresh query, so a stale or forged alert cannot drain a node by itself).

Safety: only ``bad`` drains (``unknown`` never does); a node a person drained is never touched (``ops.drain``
keeps their reason, and we resume only nodes the journal says the watchdog drained and whose reason still
carries our prefix); at most ``max_drain_fraction`` of the nodes are held drained by the watchdog at once.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from intellect.errors import IntellectError
from intellect.health.config import Thresholds
from intellect.health.prom import PrometheusClient
from intellect.health.rules import BAD, DEGRADED, OK, Verdict, evaluate
from intellect.slurm import ops
from intellect.slurm.nodes import Node, query_nodes

SOURCE = "watchdog"
HEALTHY = (OK, DEGRADED)


@dataclass
class Decision:
    drain: dict[str, str] = field(default_factory=dict)  # node → reason text
    resume: list[str] = field(default_factory=list)
    held_back: dict[str, str] = field(default_factory=dict)  # bad nodes not drained, and why


def decide(
    verdicts: dict[str, Verdict],
    slurm: dict[str, Node],
    ours: set[str],
    healthy_since: dict[str, float],
    now: float,
    hold_s: float,
    max_drain_fraction: float = 0.25,
) -> Decision:
    """Pure: what to drain and what to resume. Updates ``healthy_since`` for nodes the watchdog holds."""
    d = Decision()
    held = {n for n in ours if n in slurm and slurm[n].drained and slurm[n].drained_by_us}
    budget = max(1, int(max_drain_fraction * len(slurm))) - len(held)
    for name in sorted(slurm):
        node, verdict = slurm[name], verdicts.get(name)
        status = verdict.status if verdict else "unknown"
        if name in held:
            if status in HEALTHY:
                since = healthy_since.setdefault(name, now)
                if now - since >= hold_s:
                    d.resume.append(name)
            else:
                healthy_since.pop(name, None)
            continue
        healthy_since.pop(name, None)
        if status != BAD or verdict is None or node.drained:
            continue
        if budget <= 0:
            d.held_back[name] = f"already {len(held)} node(s) drained by the watchdog (max_drain_fraction)"
            continue
        d.drain[name] = f"{SOURCE}: {verdict.summary}"[: ops.MAX_REASON - 10]
        budget -= 1
    return d


class WatchdogMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "intellect_watchdog_"
        self.cycles = Counter(p + "cycles", "Evaluation cycles run.", registry=r)
        self.errors = Counter(p + "cycle_errors", "Cycles that failed (Slurm or Prometheus).", registry=r)
        self.webhooks = Counter(p + "webhooks", "Alertmanager webhook posts received.", registry=r)
        self.drains = Counter(p + "drains", "Nodes drained, by rule.", ["rule"], registry=r)
        self.resumes = Counter(p + "resumes", "Nodes resumed after the hold time.", registry=r)
        self.nodes = Gauge(p + "nodes", "Nodes per verdict in the last cycle.", ["verdict"], registry=r)
        self.held = Gauge(p + "drained_nodes", "Nodes currently drained by the watchdog.", registry=r)
        self.last = Gauge(p + "last_cycle_timestamp_seconds", "End of the last cycle.", registry=r)
        self.query_seconds = Gauge(p + "query_seconds", "Duration of the last Prometheus query.", registry=r)


@dataclass
class WatchdogConfig:
    prometheus_url: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    hold_s: float = 300.0
    poll_s: float = 15.0
    listen_host: str = "127.0.0.1"
    listen_port: int = 9419
    max_drain_fraction: float = 0.25
    dry_run: bool = False


class Watchdog:
    def __init__(self, cfg: WatchdogConfig, client: PrometheusClient | None = None) -> None:
        self.cfg = cfg
        self.client = client or PrometheusClient(cfg.prometheus_url)
        self.metrics = WatchdogMetrics()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.healthy_since: dict[str, float] = {}
        self.server: ThreadingHTTPServer | None = None

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        sys.stderr.write(f"{stamp} watchdog: {message}\n")
        sys.stderr.flush()

    def cycle(self) -> Decision:
        """One evaluation: query, decide, act."""
        slurm = query_nodes()
        report = evaluate(self.client, self.cfg.thresholds, sorted(slurm))
        m = self.metrics
        m.query_seconds.set(report.seconds)
        for status in ("ok", "degraded", "unknown", "bad"):
            m.nodes.labels(verdict=status).set(sum(v.status == status for v in report.verdicts.values()))
        ours = ops.drained_by(SOURCE)
        d = decide(
            report.verdicts, slurm, ours, self.healthy_since, time.monotonic(), self.cfg.hold_s,
            self.cfg.max_drain_fraction,
        )  # fmt: skip
        self._act(d, report.verdicts)
        m.held.set(len(ops.drained_by(SOURCE)) if d.drain or d.resume else len(ours))
        m.cycles.inc()
        m.last.set(time.time())
        return d

    def _act(self, d: Decision, verdicts: dict[str, Verdict]) -> None:
        for name, why in d.held_back.items():
            self.log(f"NOT draining {name} ({verdicts[name].summary}): {why}")
        for name, text in d.drain.items():
            if self.cfg.dry_run:
                self.log(f"would drain {name}: {text}")
                continue
            result = ops.drain([name], text, source=SOURCE)
            for n in result.changed:
                rule = next((r.rule for r in verdicts[n].reasons if r.status == BAD), "unknown")
                self.metrics.drains.labels(rule=rule).inc()
                self.log(f"drained {n}: {text}")
            for n, why in result.skipped.items():
                self.log(f"left {n} alone: {why}")
        if d.resume and not self.cfg.dry_run:
            result = ops.resume(d.resume, source=SOURCE)
            for n in result.changed:
                self.healthy_since.pop(n, None)
                self.metrics.resumes.inc()
                self.log(f"resumed {n}: healthy for {self.cfg.hold_s:g} s")

    def run(self) -> None:
        """Serve the webhook and /metrics, then cycle until ``stop`` is set."""
        self.server = make_server(self)
        threading.Thread(target=self.server.serve_forever, name="watchdog-http", daemon=True).start()
        port = self.server.server_address[1]
        where = f"http://{self.cfg.listen_host}:{port}"
        self.log(f"watching via {self.cfg.prometheus_url}; webhook and /metrics on {where}")
        try:
            while not self.stop.is_set():
                try:
                    self.cycle()
                except IntellectError as exc:
                    self.metrics.errors.inc()
                    self.log(f"cycle failed: {exc.message}")
                self.wake.wait(self.cfg.poll_s)
                self.wake.clear()
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.client.close()


def alert_nodes(payload: Any) -> list[str]:
    """Node names in an Alertmanager webhook payload (labels ``node`` or ``Hostname``); junk gives []."""
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    out = []
    for alert in alerts if isinstance(alerts, list) else []:
        labels = alert.get("labels") if isinstance(alert, dict) else None
        if isinstance(labels, dict):
            name = labels.get("node") or labels.get("Hostname")
            if isinstance(name, str):
                out.append(name)
    return out


def make_server(dog: Watchdog) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(dog.metrics.registry), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                self._send(200, b'{"ok": true}')
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            if self.path != "/alerts":
                self._send(404, b'{"error": "not found"}')
                return
            length = min(int(self.headers.get("Content-Length") or 0), 1 << 22)
            try:
                payload = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, b'{"error": "not JSON"}')
                return
            dog.metrics.webhooks.inc()
            nodes = alert_nodes(payload)
            if nodes:
                dog.log(f"alert for {', '.join(sorted(set(nodes)))[:200]}: re-evaluating now")
            dog.wake.set()
            self._send(200, b'{"ok": true}')

    server = ThreadingHTTPServer((dog.cfg.listen_host, dog.cfg.listen_port), Handler)
    server.daemon_threads = True
    return server
