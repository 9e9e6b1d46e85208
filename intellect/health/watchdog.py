"""``intellect watchdog``: drain nodes that turn bad; resume only what it drained, once repaired.

Each cycle is one sinfo + squeue (``query_nodes``), one Prometheus query (``evaluate``), a pure ``decide``, then
``scontrol update`` through ``ops``. A cycle runs every ``poll_s`` seconds, and at once when Alertmanager posts to
``/alerts`` (the webhook only wakes the loop: the decision always comes from a fresh query, so a stale or forged
alert cannot drain a node by itself).

Why it cannot do harm:

- **Ownership by token.** Every drain carries a fresh random token in its reason::

      [intellect] slurm 2026-01-01T00:00:00Z: watchdog: Xid 79 on GPU 3 (wd-token 3f9a0c1d2e4b)

  The state file records that exact reason, and, from the next cycle on, the user and time Slurm shows for it.
  A node is the watchdog's only while Slurm's reason is still exactly that, set by that user at that time. A
  person's drain or re-drain (any text, from any host, ``[intellect]`` or not) breaks the match: the watchdog
  lets go of the node for good ("released") and never resumes it. The ``[intellect]`` prefix alone means nothing.
- **Repair, not time.** A node it holds is resumed only after its verdict has been ok for ``hold_s`` seconds
  without a break. Degraded counts as ok only when no degraded reason comes from a rule it drained for; unknown
  never does. An Xid that only ages out of the window leaves the node degraded by rule ``xid``: still held.
- **One cap on every unavailable node.** Nodes drained by anyone, DOWN / FAIL / NOT_RESPONDING nodes and its own
  holds all count against ``max_drain_fraction`` of the cluster (and ``max_unavailable``); at most
  ``max_drains_per_cycle`` drains per cycle, bad nodes first. What the cap holds back is logged and exported.
- **Unknown is not healthy.** A node unknown for ``unknown_grace_s`` (an exporter down, no metrics) is drained as
  "exporter down", under the same cap; when more than ``unknown_outage_fraction`` of the nodes are unknown at once
  it is a monitoring outage, not dead exporters, and none is drained for it.
- **A failed cycle changes nothing.** A Slurm or Prometheus error means no drain, no resume and no timer moves; it
  is counted (``intellect_watchdog_cycle_errors_total{source}``), logged once per outage and once at recovery, and
  the next cycle retries. A gap in observation longer than ``max_gap_s`` restarts the ok and unknown timers.
- **Its state survives restarts**: ``<state dir>/watchdog-state.json`` (``WatchdogState``), written atomically.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import hostlist
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from intellect.errors import IntellectError
from intellect.health.prom import PrometheusClient, PrometheusError
from intellect.health.rules import BAD, DEGRADED, OK, UNKNOWN, Report, evaluate
from intellect.health.watchdog_policy import (
    CAUSES,
    EXPORTER_DOWN,
    HELD_BACK_KINDS,
    SOURCE,
    STATE_FILE,
    Decision,
    Drain,
    HeldBack,
    Hold,
    WatchdogConfig,
    WatchdogState,
    decide,
    load_state,
    not_ours,
    reason_text,
    save_state,
    token_of,
)
from intellect.slurm import ops
from intellect.slurm.nodes import query_nodes

__all__ = [
    "CAUSES", "EXPORTER_DOWN", "HELD_BACK_KINDS", "SOURCE", "Decision", "Drain", "HeldBack", "Hold", "Watchdog",
    "WatchdogConfig", "WatchdogMetrics", "WatchdogState", "alert_nodes", "decide", "load_state", "make_server",
    "save_state",
]  # fmt: skip
SOURCES = ("slurm", "prometheus")


# --------------------------------------------------------------------------------------------- metrics


class WatchdogMetrics:
    """The watchdog's own registry, served on its /metrics; monitoring/rules/watchdog.yml alerts on it."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "intellect_watchdog_"
        self.cycles = Counter(p + "cycles", "Evaluation cycles that ran (failed ones included).", registry=r)
        self.errors = Counter(
            p + "cycle_errors", "Cycles that failed, by what failed.", ["source"], registry=r
        )
        self.failing = Gauge(
            p + "failing", "1 while cycles fail because of this source.", ["source"], registry=r
        )
        self.failed_in_row = Gauge(p + "consecutive_failed_cycles", "Failed cycles since the last good one.",
                                   registry=r)  # fmt: skip
        self.webhooks = Counter(p + "webhooks", "Alertmanager webhook posts received.", registry=r)
        self.drains = Counter(p + "drains", "Nodes drained, by rule.", ["rule"], registry=r)
        self.resumes = Counter(p + "resumes", "Nodes resumed after being ok for the hold time.", registry=r)
        self.released = Counter(p + "released", "Holds let go of: someone else resumed or re-drained the node.",
                                registry=r)  # fmt: skip
        self.held_back = Gauge(p + "held_back_nodes", "Nodes that should drain but are held back, by why.",
                               ["why"], registry=r)  # fmt: skip
        self.unavailable = Gauge(p + "unavailable_nodes", "Nodes that run no jobs, by cause.", ["cause"],
                                 registry=r)  # fmt: skip
        self.limit = Gauge(p + "max_unavailable_nodes", "Unavailable nodes above which it drains no more.",
                           registry=r)  # fmt: skip
        self.cluster = Gauge(p + "cluster_nodes", "Nodes Slurm knows.", registry=r)
        self.nodes = Gauge(p + "nodes", "Nodes per verdict in the last good cycle.", ["verdict"], registry=r)
        self.held = Gauge(p + "drained_nodes", "Nodes drained by the watchdog and still held.", registry=r)
        self.last = Gauge(p + "last_cycle_timestamp_seconds", "End of the last cycle.", registry=r)
        self.last_ok = Gauge(p + "last_success_timestamp_seconds",
                             "End of the last good cycle (the start time until one succeeds).", registry=r)  # fmt: skip
        self.query_seconds = Gauge(p + "query_seconds", "Duration of the last Prometheus query.", registry=r)
        self.state_errors = Counter(p + "state_write_errors", "Failed writes of the state file.", registry=r)
        for source in SOURCES:
            self.errors.labels(source=source)
            self.failing.labels(source=source).set(0)
        for kind in HELD_BACK_KINDS:
            self.held_back.labels(why=kind).set(0)
        for cause in CAUSES:
            self.unavailable.labels(cause=cause).set(0)

    def export(self, d: Decision, report: Report, cluster: int, held: int) -> None:
        for status in (OK, DEGRADED, UNKNOWN, BAD):
            self.nodes.labels(verdict=status).set(sum(v.status == status for v in report.verdicts.values()))
        for kind in HELD_BACK_KINDS:
            self.held_back.labels(why=kind).set(sum(h.kind == kind for h in d.held_back.values()))
        for cause, n in d.unavailable.items():
            self.unavailable.labels(cause=cause).set(n)
        self.limit.set(d.limit)
        self.cluster.set(cluster)
        self.held.set(held)
        self.query_seconds.set(report.seconds)


# -------------------------------------------------------------------------------------------- the loop


@dataclass
class Outage:
    source: str
    message: str
    since: float
    failures: int = 1


class Watchdog:
    def __init__(
        self, cfg: WatchdogConfig, client: PrometheusClient | None = None, *,
        verdicts: Callable[[list[str]], Report] | None = None, clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.cfg, self.clock = cfg, clock
        self.client = client or PrometheusClient(cfg.prometheus_url)
        self.verdicts = verdicts or (lambda nodes: evaluate(self.client, cfg.thresholds, nodes))
        self.log = log or _stderr
        self.metrics = WatchdogMetrics()
        self.metrics.last_ok.set(clock())
        self.wake, self.stop = threading.Event(), threading.Event()
        self.state_path = cfg.state_path or ops.state_dir() / STATE_FILE
        self.state = load_state(self.state_path, self.log)
        self.held_now = tuple(sorted(self.state.held))  # what /healthz shows (read from the HTTP thread)
        self.outage: Outage | None = None
        self.state_failing = False
        self._held_back_logged: dict[str, str] = {}
        self.server: ThreadingHTTPServer | None = None

    def cycle(self) -> Decision | None:
        """One evaluation: query Slurm and Prometheus, decide, act. None when the cycle failed (nothing changed)."""
        self.metrics.cycles.inc()
        self.metrics.last.set(self.clock())
        try:
            slurm = query_nodes()
        except IntellectError as exc:
            self._failed("slurm", exc.message)
            return None
        report = self._report(sorted(slurm))
        if report.error is not None:
            self._failed("prometheus", report.error)
            return None
        now = self.clock()
        self._recovered(now)
        d = decide(report.verdicts, slurm, self.state, now, self.cfg)
        self._log_decision(d)
        try:
            self._drain_all(d, now)
            self._resume_all(d.resume)
        except IntellectError as exc:  # what was done is in the state; the rest is decided again next cycle
            self._failed("slurm", exc.message)
        else:
            self.metrics.last_ok.set(self.clock())
        self._save()
        self.metrics.export(d, report, len(slurm), len(self.state.held))
        self.held_now = tuple(sorted(self.state.held))
        return d

    def _report(self, nodes: list[str]) -> Report:
        try:
            return self.verdicts(nodes)
        except PrometheusError as exc:  # evaluate turns these into Report.error; a custom source may raise
            return Report({}, error=exc.message)

    def _failed(self, source: str, message: str) -> None:
        m = self.metrics
        m.errors.labels(source=source).inc()
        for s in SOURCES:
            m.failing.labels(source=s).set(int(s == source))
        if self.outage is None or self.outage.source != source:
            was = (
                f" (after {self.outage.failures} failed cycle(s) on {self.outage.source})"
                if self.outage
                else ""
            )
            self.outage = Outage(source, message, self.clock())
            self.log(f"cycle failed: {source}: {message}{was}; nothing drained or resumed; retrying every "
                     f"{self.cfg.poll_s:g} s, quiet until it recovers")  # fmt: skip
        else:
            self.outage.failures += 1
        m.failed_in_row.set(self.outage.failures)

    def _recovered(self, now: float) -> None:
        if self.outage is not None:
            o = self.outage
            self.log(
                f"{o.source} answers again after {o.failures} failed cycle(s) over {now - o.since:.0f} s"
            )
            self.outage = None
        for s in SOURCES:
            self.metrics.failing.labels(source=s).set(0)
        self.metrics.failed_in_row.set(0)

    def _log_decision(self, d: Decision) -> None:
        for name, why in d.released.items():
            self.metrics.released.inc()
            self.log(f"let go of {name}: {why}; it is no longer the watchdog's to resume")
        fresh = {n: h for n, h in d.held_back.items() if self._held_back_logged.get(n) != h.kind}
        for kind in HELD_BACK_KINDS:
            names = sorted(n for n, h in fresh.items() if h.kind == kind)
            if names:
                why = fresh[names[0]].why
                self.log(f"NOT draining {hostlist.collect_hostlist(names)} ({len(names)} node(s)): {why}")
        self._held_back_logged = {n: h.kind for n, h in d.held_back.items()}

    def _drain_all(self, d: Decision, now: float) -> None:
        for name, plan in d.drain.items():
            text = reason_text(plan.summary, secrets.token_hex(6))
            if self.cfg.dry_run:
                self.log(f"would drain {name}: {text}")
                continue
            token = token_of(text) or ""
            self.state.held[name] = Hold(token=token, text=text, drained_at=now, rules=list(plan.rules))
            self._save()  # the intent first: a crash after scontrol still finds its token
            result = ops.drain([name], text, source=SOURCE)
            if name in result.changed:
                self.state.held[name].reason = result.reason
                self.metrics.drains.labels(rule=plan.rules[0]).inc()
                self.log(f"drained {name}: {result.reason}")
            else:
                del self.state.held[name]
                self.log(f"left {name} alone: {result.skipped.get(name, 'skipped')}")
            self._save()

    def _resume_all(self, names: list[str]) -> None:
        if not names:
            return
        if self.cfg.dry_run:
            self.log(f"would resume {hostlist.collect_hostlist(names)}")
            return
        fresh = query_nodes()  # checked again just before: a re-drain since the cycle's query wins
        mine = [
            n for n in names if n in self.state.held and not_ours(fresh.get(n), self.state.held[n]) is None
        ]
        if not mine:
            return
        result = ops.resume(mine, source=SOURCE)
        for n in result.changed:
            hold = self.state.held.pop(n)
            self.metrics.resumes.inc()
            self.log(f"resumed {n}: ok for {self.cfg.hold_s:g} s (drained for: {hold.text})")

    def _save(self) -> None:
        if self.cfg.dry_run:
            return
        try:
            save_state(self.state_path, self.state)
        except OSError as exc:
            self.metrics.state_errors.inc()
            if not self.state_failing:
                self.log(f"cannot write {self.state_path}: {exc}; holds live in memory until it can")
            self.state_failing = True
            return
        if self.state_failing:
            self.log(f"state written to {self.state_path} again")
        self.state_failing = False

    def run(self) -> None:
        """Serve the webhook and /metrics, then cycle until ``stop`` is set."""
        self.server = make_server(self)
        threading.Thread(target=self.server.serve_forever, name="watchdog-http", daemon=True).start()
        where = f"http://{self.cfg.listen_host}:{self.server.server_address[1]}"
        held = hostlist.collect_hostlist(sorted(self.state.held)) or "none"
        self.log(f"watching via {self.cfg.prometheus_url}; webhook and /metrics on {where}; "
                 f"state {self.state_path}, holding {held}")  # fmt: skip
        try:
            while not self.stop.is_set():
                self.cycle()
                self.wake.wait(self.cfg.poll_s)
                self.wake.clear()
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.client.close()

    def health(self) -> dict[str, Any]:
        """What /healthz says: the process is up; ``failing`` names what its cycles are waiting for."""
        o = self.outage
        failing = {"source": o.source, "message": o.message, "failed_cycles": o.failures} if o else None
        return {"ok": o is None, "failing": failing, "held": list(self.held_now)}


def _stderr(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(f"{stamp} watchdog: {message}\n")
    sys.stderr.flush()


def alert_nodes(payload: Any) -> list[str]:
    """Node names in an Alertmanager webhook payload (labels ``node`` or ``Hostname``); junk gives []."""
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    out = []
    for alert in alerts if isinstance(alerts, list) else []:
        labels = alert.get("labels") if isinstance(alert, dict) else None
        if isinstance(labels, dict):
            name = labels.get("node") or labels.get("Hostname") or labels.get("hostname")
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
            elif self.path == "/healthz":  # 200 while the process runs; the body says whether cycles fail
                self._send(200, json.dumps(dog.health()).encode())
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
