"""Health benchmarks. Prints numbers; asserts nothing.

1. detect-to-drain: Xid 79 injected into a stand-in dcgm-exporter (standing for NVIDIA's dcgm-exporter) →
   Slurm shows the node drained, over N injections, with the real Prometheus + Alertmanager (1 s scrapes), the
   real loopback Slurm and ``intellect watchdog`` (--poll 1; Alertmanager's webhook wakes it earlier).
   Goal: median <= 5 s. Needs root, Slurm, prometheus, prometheus-alertmanager.
2. verdicts for 4,096 synthetic nodes (8 GPUs, 1 IB port each) through ONE query answer: JSON parse + rules
   (httpx.MockTransport serves a recorded-format answer, so this is our code's cost, not Prometheus').

    .venv/bin/python bench/health.py [--injections 10] [--nodes 4096] [--skip-drain]
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from intellect.devcluster.loopback import LoopbackCluster  # noqa: E402
from intellect.health.config import Thresholds  # noqa: E402
from intellect.health.fakedcgm import FakeGpus, make_server  # noqa: E402
from intellect.health.prom import PrometheusClient  # noqa: E402
from intellect.health.rules import build_query, evaluate  # noqa: E402
from intellect.health.stack import MonitoringStack, Target, free_port  # noqa: E402


def synthetic_answer(nodes: int, gpus: int = 8) -> bytes:
    result = []
    for n in range(nodes):
        node = f"gpu-{n:04d}"
        result += [
            {"metric": {"check": "up", "job": "node", "node": node}, "value": [0, "1"]},
            {"metric": {"check": "up", "job": "dcgm", "node": node}, "value": [0, "1"]},
            {
                "metric": {"check": "ib_state", "node": node, "device": "mlx5_0", "port": "1"},
                "value": [0, "4"],
            },
        ]
        for g in range(gpus):
            lab = {"Hostname": node, "gpu": str(g), "UUID": f"GPU-{n}-{g}", "modelName": "NVIDIA H200"}
            xid = "79" if (n, g) == (17, 3) else "0"
            for check, value in (("xid_last", xid), ("xid_changes", "1" if xid != "0" else "0"),
                                 ("gpu_temp", "45"), ("ecc_dbe", "0"), ("row_remap_failure", "0")):  # fmt: skip
                result.append({"metric": {"check": check, **lab}, "value": [0, value]})
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
    print(f"verdicts for {nodes} nodes: {len(calls) // 5} query per evaluation, answer {len(body) / 1e6:.1f} MB, "
          f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; bad={bad}")  # fmt: skip
    print(f"query length: {len(build_query(Thresholds()))} characters")


def bench_drain(injections: int) -> None:
    with tempfile.TemporaryDirectory(prefix="intellect-bench-health-") as tmp_s:
        tmp = Path(tmp_s)
        cluster = LoopbackCluster(tmp / "slurm", nodes=3)
        gpus = {n: FakeGpus(n, count=4) for n in cluster.node_names}
        servers = {n: make_server(g, 0) for n, g in gpus.items()}
        for s in servers.values():
            threading.Thread(target=s.serve_forever, daemon=True).start()
        targets = [
            Target("dcgm", f"127.0.0.1:{s.server_address[1]}", {"node": n}) for n, s in servers.items()
        ]
        (tmp / "th.yml").write_text("require_node_exporter: false\n")
        wd_port = free_port()
        stack = MonitoringStack(tmp / "mon", targets, webhook_url=f"http://127.0.0.1:{wd_port}/alerts")
        dog = None
        try:
            cluster.start()
            stack.start()
            env = {**cluster.env(), "INTELLECT_STATE_DIR": str(tmp / "state"),
                   "INTELLECT_HEALTH_THRESHOLDS": str(tmp / "th.yml")}  # fmt: skip
            dog = subprocess.Popen(
                [sys.executable, "-m", "intellect.cli.health", "watchdog", "--prometheus", stack.url, "--poll", "1",
                 "--hold", "1", "--listen", f"127.0.0.1:{wd_port}", "--max-drain-fraction", "0.5"],
                env=env, cwd=ROOT, stderr=open(tmp / "watchdog.log", "ab"),  # noqa: SIM115
            )  # fmt: skip
            time.sleep(3)
            latencies = [_one(cluster, gpus["node-2"], i) for i in range(injections)]
            print(
                f"detect-to-drain over {injections} injections: median {statistics.median(latencies):.2f} s, "
                f"max {max(latencies):.2f} s, min {min(latencies):.2f} s (goal: median <= 5 s, 1 s scrapes)"
            )
        finally:
            if dog is not None:
                dog.send_signal(signal.SIGTERM)
                dog.wait(timeout=15)
            stack.stop()
            cluster.stop()
            for s in servers.values():
                s.shutdown()
                s.server_close()


def _state(cluster: LoopbackCluster, node: str) -> str:
    out = subprocess.run(
        ["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True, env=cluster.env()
    )
    return out.stdout.strip()


def _one(cluster: LoopbackCluster, gpus: FakeGpus, i: int) -> float:
    t0 = time.monotonic()
    gpus.fault({"gpu": i % gpus.count, "xid": 79})
    while "drain" not in _state(cluster, "node-2"):
        if time.monotonic() - t0 > 60:
            raise RuntimeError("node-2 not drained within 60 s")
        time.sleep(0.05)
    latency = time.monotonic() - t0
    gpus.clear()
    deadline = time.monotonic() + 60
    while "drain" in _state(cluster, "node-2") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # let Prometheus scrape the cleared value
    return latency


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--injections", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=4096)
    ap.add_argument("--skip-drain", action="store_true")
    args = ap.parse_args()
    bench_verdicts(args.nodes)
    if not args.skip_drain and os.geteuid() == 0:
        bench_drain(args.injections)


if __name__ == "__main__":
    main()
