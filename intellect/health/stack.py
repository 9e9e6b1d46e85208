"""A local Prometheus + Alertmanager on 127.0.0.1 (Debian's ``prometheus`` and ``prometheus-alertmanager``).

For tests, benches and the dev cluster: it writes a prometheus.yml with the given scrape targets (each with its
target labels: ``node``, and ``node_type`` where the test wants one) and every rule file of monitoring/rules/ (the
alerts and the Xid recording rules the verdicts read), starts both daemons on free ports, waits until every target
is up, and ``stop()`` ends exactly the processes it started, by PID. ``COUNTERS`` is the dcgm-exporter counters
file the monitoring role installs; in-process stand-ins serve the same counters.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import yaml

from intellect.errors import IntellectError
from intellect.procs import terminate_then_kill

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
COUNTERS = MONITORING / "dcgm" / "dcp-metrics-intellect.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_tools() -> list[str]:
    return [t for t in ("prometheus", "prometheus-alertmanager") if shutil.which(t) is None]


@dataclass
class Target:
    job: str
    address: str  # host:port
    labels: dict[str, str]


@dataclass
class MonitoringStack:
    root: Path
    targets: list[Target]
    webhook_url: str | None = None
    interval: str = "1s"
    rules_dir: Path = MONITORING / "rules"
    prom_port: int = 0
    am_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.prom_port, self.am_port = self.prom_port or free_port(), self.am_port or free_port()
        jobs: dict[str, list[Target]] = {}
        for t in self.targets:
            jobs.setdefault(t.job, []).append(t)
        prom = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(p) for p in sorted(self.rules_dir.glob("*.yml"))],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}]},
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": [t.address], "labels": t.labels} for t in ts],
                }
                for job, ts in jobs.items()
            ],
        }
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(prom, sort_keys=False))
        receiver: dict[str, object] = {"name": "watchdog"}
        if self.webhook_url:
            receiver["webhook_configs"] = [{"url": self.webhook_url, "send_resolved": True}]
        am = {
            "route": {"receiver": "watchdog", "group_by": ["alertname", "node"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [receiver],
        }  # fmt: skip
        (self.root / "alertmanager.yml").write_text(yaml.safe_dump(am, sort_keys=False))

    def start(self, timeout: float = 30.0) -> MonitoringStack:
        try:
            missing = missing_tools()
            if missing:
                raise IntellectError(f"missing {', '.join(missing)} (Debian packages prometheus, "
                                     "prometheus-alertmanager)")  # fmt: skip
            self.write_config()
            self._start_daemons()
            self.wait_targets_up(timeout)
            return self
        except BaseException:
            self.stop()
            raise

    def _start_daemons(self) -> None:
        r = self.root
        self._spawn("alertmanager", [
            "prometheus-alertmanager", f"--config.file={r}/alertmanager.yml", f"--storage.path={r}/am",
            f"--web.listen-address=127.0.0.1:{self.am_port}", "--cluster.listen-address=",
        ])  # fmt: skip
        self.start_prometheus()

    def start_prometheus(self) -> None:
        r = self.root
        self._spawn("prometheus", [
            "prometheus", f"--config.file={r}/prometheus.yml", f"--storage.tsdb.path={r}/tsdb",
            f"--web.listen-address=127.0.0.1:{self.prom_port}", "--web.enable-lifecycle",
        ])  # fmt: skip

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def wait_targets_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise IntellectError(f"{dead[0]} exited early; see {self.root}/{dead[0]}.log")
            try:
                active = httpx.get(f"{self.url}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
                if len(active) == len(self.targets) and all(t["health"] == "up" for t in active):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.25)
        raise IntellectError(f"Prometheus targets not all up after {timeout:.0f} s; see {self.root}")

    def stop_process(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            terminate_then_kill(proc)

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        for log in self._logs:
            log.close()
        self._logs.clear()
