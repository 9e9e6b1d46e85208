"""Health benchmarks. Prints numbers; asserts nothing.

1. verdicts for 4,096 synthetic H200 nodes (8 GPUs, 8 InfiniBand ports + 1 RoCE port, 2 network mounts each) through
   ONE query answer: JSON parse + rules (httpx.MockTransport serves a Prometheus-shaped answer, so this is our code's
   cost, not Prometheus').
2. detect-to-drain per fault class: a fault injected into node-2's stand-in exporters (intellect/health/fakedcgm.py:
   dcgm-exporter 4.5.3-4.8.2 with the counters file the monitoring role installs, 8 GPUs; fakenode.py: node_exporter
   v1.12.1's infiniband/filesystem series of an H200 node) → Slurm shows node-2 drained, with the real Prometheus +
   Alertmanager (1 s scrapes, monitoring/rules/ loaded), the real loopback Slurm and ``intellect watchdog`` (--poll 1;
   Alertmanager's webhook wakes it earlier). After each injection the fault is repaired (a GPU reset, the mount back)
   and the watchdog resumes the node. Windowed classes use short bench windows (clock events 3 s, exporter down 3 s,
   PCIe replays 5 s); their figure includes that window. Goal: median <= 5 s. Needs root, Slurm, prometheus,
   prometheus-alertmanager.

    .venv/bin/python bench/health.py [--injections 3] [--nodes 4096] [--skip-drain] [--classes xid79,nfs_hung]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from intellect.devcluster.loopback import LoopbackCluster  # noqa: E402
from intellect.health.config import Thresholds  # noqa: E402
from intellect.health.fakedcgm import FakeGpus, make_json_server, read_counters  # noqa: E402
from intellect.health.fakenode import FakeNode  # noqa: E402
from intellect.health.prom import PrometheusClient  # noqa: E402
from intellect.health.rules import build_query, evaluate  # noqa: E402
from intellect.health.stack import COUNTERS, MonitoringStack, Target, free_port  # noqa: E402

BENCH_THRESHOLDS = "exporter_down_grace: 3s\nclock_events_window: 3s\npcie_replay_window: 5s\n"


def _sample(check: str, value: str, **labels: str) -> dict[str, Any]:
    return {"metric": {"check": check, **labels}, "value": [0, value]}


def synthetic_answer(nodes: int, gpus: int = 8) -> bytes:
    result = [_sample("rules", "1", xid_drain=",".join(map(str, Thresholds().xid_drain)))]
    for n in range(nodes):
        node = f"gpu-{n:04d}"
        t = {"node": node, "node_type": "h200"}
        for job, port in (("node", 9100), ("dcgm", 9400)):
            lab = {**t, "job": job, "instance": f"10.1.{n // 256}.{n % 256}:{port}"}
            result += [_sample("up", "1", **lab), _sample("up_max", "1", **lab)]
        for c in ("infiniband", "filesystem"):
            result.append(_sample("collector", "1", **t, collector=c))
        for d in range(9):
            port = {**t, "device": f"mlx5_{d}", "port": "1"}
            rate = "2.5e+10" if d == 8 else "5e+10"
            result += [_sample("ib_state", "4", **port), _sample("ib_phys_state", "5", **port),
                       _sample("ib_rate", rate, **port)]  # fmt: skip
        for mp, fstype in (("/home", "nfs4"), ("/lustre", "lustre")):
            result.append(_sample("mount", "0", **t, mountpoint=mp, fstype=fstype))
        for g in range(gpus):
            lab = {
                **t,
                "job": "dcgm",
                "instance": f"10.1.{n // 256}.{n % 256}:9400",
                "Hostname": node,
                "gpu": str(g),
            }
            xid = "79" if (n, g) == (17, 3) else "0"
            for check, value in (("xid_last", xid), ("gpu_temp", "45"), ("memory_temp", "50"), ("ecc_dbe", "0"),
                                 ("row_remap_failure", "0"), ("row_remap_pending", "0"), ("clock_events", "0")):  # fmt: skip
                result.append(_sample(check, value, **lab))
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def bench_verdicts(nodes: int) -> None:
    body = synthetic_answer(nodes)
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=body)

    client = PrometheusClient("http://prom.bench:9090", transport=httpx.MockTransport(handler))
    names = [f"gpu-{n:04d}" for n in range(nodes)]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        report = evaluate(client, Thresholds(), names)
        times.append(time.perf_counter() - t0)
    bad = [n for n, v in report.verdicts.items() if v.status == "bad"]
    ok = sum(v.status == "ok" for v in report.verdicts.values())
    print(f"verdicts for {nodes} nodes: {len(calls) // 5} query per evaluation, answer {len(body) / 1e6:.1f} MB, "
          f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; ok={ok} bad={bad}")  # fmt: skip
    print(f"query length: {len(build_query(Thresholds()))} characters")


class Exporters:
    """node-2's stand-ins; ``down`` makes its dcgm-exporter answer 503 (a dead exporter)."""

    def __init__(self, name: str) -> None:
        self.gpus = FakeGpus(name, 8, read_counters(str(COUNTERS)))
        self.node = FakeNode("h200")
        self.down = False

    def render_gpus(self) -> str:
        if self.down:
            raise OSError("exporter down")
        return self.gpus.render()

    def repair(self) -> None:
        self.gpus.clear()
        self.node.clear()
        self.down = False


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[Exporters, int], None]


def _twice(e: Exporters, i: int) -> None:
    e.gpus.fault({"gpu": i % 8, "xid": 48})
    e.gpus.fault({"gpu": i % 8, "xid": 13})  # within one scrape: the gauge shows 13, the count field both


FAULTS = [
    Fault("xid79", lambda e, i: e.gpus.fault({"gpu": i % 8, "xid": 79})),
    Fault("xid48_then_13", _twice),
    Fault("ecc_dbe", lambda e, i: e.gpus.fault({"gpu": i % 8, "ecc_dbe": 2})),
    Fault("row_remap_failure", lambda e, i: e.gpus.fault({"gpu": i % 8, "row_remap_failure": 1})),
    Fault("row_remap_pending", lambda e, i: e.gpus.fault({"gpu": i % 8, "row_remap_pending": 1})),
    Fault("gpu_missing", lambda e, i: e.gpus.fault({"gpu": i % 8, "gone": True})),
    Fault("gpu_temp", lambda e, i: e.gpus.fault({"gpu": i % 8, "temp": 95})),
    Fault("hbm_temp", lambda e, i: e.gpus.fault({"gpu": i % 8, "memory_temp": 97})),
    Fault("clock_hw_slowdown", lambda e, i: e.gpus.fault({"gpu": i % 8, "clock_events": 0x8})),
    Fault("pcie_replay", lambda e, i: e.gpus.fault({"gpu": i % 8, "pcie_replay": 5000})),
    Fault("ib_port_down", lambda e, i: e.node.fault({"ib": f"mlx5_{i % 8}", "state": 1, "phys_state": 3})),
    Fault("ib_rate_low", lambda e, i: e.node.fault({"ib": f"mlx5_{i % 8}", "rate_gbps": 200})),
    Fault("nfs_hung", lambda e, i: e.node.fault({"mount": "/home", "error": "mountpoint timeout"})),
    Fault("lustre_stale", lambda e, i: e.node.fault({"mount": "/lustre", "error": "stale NFS file handle"})),
    Fault("exporter_down", lambda e, i: setattr(e, "down", True)),
]


def bench_drain(injections: int, classes: list[str] | None) -> None:
    faults = [f for f in FAULTS if classes is None or f.name in classes]
    with tempfile.TemporaryDirectory(prefix="intellect-bench-health-") as tmp_s:
        tmp = Path(tmp_s)
        cluster = LoopbackCluster(tmp / "slurm", nodes=3)
        exporters = {n: Exporters(n) for n in cluster.node_names}
        servers, targets = [], []
        for n, e in exporters.items():
            for job, server in (("dcgm", make_json_server(e.render_gpus, e.gpus.fault, e.gpus.clear, 0)),
                                ("node", make_json_server(e.node.render, e.node.fault, e.node.clear, 0))):  # fmt: skip
                threading.Thread(target=server.serve_forever, daemon=True).start()
                servers.append(server)
                targets.append(
                    Target(job, f"127.0.0.1:{server.server_address[1]}", {"node": n, "node_type": "h200"})
                )
        (tmp / "th.yml").write_text(BENCH_THRESHOLDS)
        wd_port = free_port()
        stack = MonitoringStack(tmp / "mon", targets, webhook_url=f"http://127.0.0.1:{wd_port}/alerts")
        dog = None
        try:
            cluster.start()
            stack.start()
            env = {**cluster.env(), "INTELLECT_STATE_DIR": str(tmp / "state"),
                   "INTELLECT_HEALTH_THRESHOLDS": str(tmp / "th.yml")}  # fmt: skip
            dog = subprocess.Popen(
                [sys.executable, "-m", "intellect.cli.main", "watchdog", "--prometheus", stack.url, "--poll", "1",
                 "--hold", "1", "--listen", f"127.0.0.1:{wd_port}", "--max-drain-fraction", "0.5",
                 "--unknown-grace", "3", "--state-file", str(tmp / "wd-state.json")],
                env=env, cwd=ROOT, stderr=open(tmp / "watchdog.log", "ab"),  # noqa: SIM115
            )  # fmt: skip
            _wait(lambda: not _drained(cluster, "node-2"), 30, "node-2 undrained at the start")
            time.sleep(3)
            print(
                f"detect-to-drain on node-2, {injections} injection(s) per fault class (goal: median <= 5 s):"
            )
            for fault in faults:
                lat = [_one(cluster, exporters["node-2"], fault, i) for i in range(injections)]
                print(f"  {fault.name:18s} median {statistics.median(lat):5.2f} s  min {min(lat):5.2f} s  "
                      f"max {max(lat):5.2f} s")  # fmt: skip
        finally:
            if dog is not None:
                dog.send_signal(signal.SIGTERM)
                dog.wait(timeout=15)
            stack.stop()
            cluster.stop()
            for s in servers:
                s.shutdown()
                s.server_close()


def _drained(cluster: LoopbackCluster, node: str) -> bool:
    out = subprocess.run(
        ["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True, env=cluster.env()
    )
    return "drain" in out.stdout


def _wait(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s: {what}")
        time.sleep(0.05)


def _one(cluster: LoopbackCluster, e: Exporters, fault: Fault, i: int) -> float:
    t0 = time.monotonic()
    fault.inject(e, i)
    _wait(lambda: _drained(cluster, "node-2"), 90, f"node-2 drained for {fault.name}")
    latency = time.monotonic() - t0
    e.repair()
    _wait(lambda: not _drained(cluster, "node-2"), 90, f"node-2 resumed after repairing {fault.name}")
    time.sleep(1.5)  # let Prometheus scrape the repaired node
    return latency


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--injections", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=4096)
    ap.add_argument("--skip-drain", action="store_true")
    ap.add_argument("--classes", help=f"comma-separated subset of: {', '.join(f.name for f in FAULTS)}")
    args = ap.parse_args()
    bench_verdicts(args.nodes)
    if not args.skip_drain and os.geteuid() == 0:
        bench_drain(args.injections, args.classes.split(",") if args.classes else None)


if __name__ == "__main__":
    main()
