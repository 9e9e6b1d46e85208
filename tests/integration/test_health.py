"""Health end to end with the REAL Prometheus and Alertmanager (Debian packages) on 127.0.0.1.

1. The recorded expositions of the real exporters (tests/fixtures/exporters/: dcgm-exporter 4.5.3-4.8.2 and main
   d5e5f51, node_exporter v1.12.1) served as they are and scraped by Prometheus with monitoring/rules/ loaded:
   `evaluate` gives the verdicts an on-call engineer expects, with both hostname spellings; a drain-list Xid followed
   by another Xid stays bad until the GPU reports no Xid (the recording rules' latch, evaluated by Prometheus); an
   exporter down past the grace period is bad. No Slurm needed.
2. The real loopback Slurm (node-1..3), a real node_exporter per node reading a fixture sysfs tree (when installed),
   and one stand-in dcgm-exporter per node (intellect/health/fakedcgm.py, mirroring dcgm-exporter 4.5.3-4.8.2, with
   the counters file the monitoring role installs): Xid 79 on node-2 GPU 3 → the watchdog drains node-2 naming Xid 79
   and GPU 3 → a new launch excludes it → the GPU is reset → the watchdog resumes node-2 after its hold; node-3,
   drained by a person, stays drained throughout. Prometheus stopped → launch fails closed and `health` says unknown.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from intellect.health.config import load_thresholds
from intellect.health.fakedcgm import FakeGpus, make_json_server, make_server, read_counters
from intellect.health.prom import PrometheusClient
from intellect.health.rules import Verdict, evaluate
from intellect.health.stack import COUNTERS, MonitoringStack, Target, free_port, missing_tools
from intellect.procs import terminate_then_kill
from tests.conftest import ROOT, run_cli
from tests.health_exposition import fixture

pytestmark = pytest.mark.integration
SYSFS = ROOT / "tests" / "fixtures" / "health" / "sysfs-ok"
HUMAN_REASON = "bad cable, ticket 42 -- alice"
HOLD_S = 3.0
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


class Env:
    def __init__(self, cluster, stack: MonitoringStack, gpus: dict[str, FakeGpus], ports: dict[str, int],
                 state: Path, thresholds: Path, watchdog_log: Path) -> None:  # fmt: skip
        self.cluster, self.stack, self.gpus, self.ports = cluster, stack, gpus, ports
        self.state, self.thresholds, self.watchdog_log = state, thresholds, watchdog_log

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = {"SLURM_CONF": str(self.cluster.conf), "INTELLECT_STATE_DIR": str(self.state),
                "INTELLECT_HEALTH_THRESHOLDS": str(self.thresholds)}  # fmt: skip
        if args and args[0] in ("health", "watchdog"):  # until the root group registers them
            cmd = [sys.executable, "-m", "intellect.cli.main", *args]
            full = {**os.environ, "NO_COLOR": "1", **base, **env}
            full.pop("INTELLECT_DEBUG", None)
            return subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=ROOT, timeout=60)
        return run_cli(*args, env={**base, **env})

    def nodes(self) -> dict[str, tuple[str, str]]:
        out = subprocess.run(["sinfo", "-N", "-h", "-o", "%N|%T|%E"], capture_output=True, text=True,
                             env=self.cluster.env(), check=True).stdout  # fmt: skip
        return {n: (st, why) for n, st, why in (ln.split("|", 2) for ln in out.splitlines() if ln)}

    def fault(self, node: str, **spec: int) -> None:
        httpx.post(f"http://127.0.0.1:{self.ports[node]}/fault", json=spec, timeout=5).raise_for_status()

    def clear(self, node: str) -> None:
        httpx.post(f"http://127.0.0.1:{self.ports[node]}/clear", json={}, timeout=5).raise_for_status()


def wait_for(probe, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _node_exporters(tmp: Path, names: list[str], procs: list[subprocess.Popen[bytes]]) -> list[Target]:
    if NODE_EXPORTER is None:
        return []
    targets = []
    for name in names:
        sysfs, port = tmp / f"sysfs-{name}", free_port()
        shutil.copytree(SYSFS, sysfs)
        procs.append(subprocess.Popen(
            [NODE_EXPORTER, "--collector.disable-defaults", "--collector.infiniband", f"--path.sysfs={sysfs}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        targets.append(Target("node", f"127.0.0.1:{port}", {"node": name}))
    return targets


@pytest.fixture(scope="module")
def env(slurm_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if missing_tools():
        pytest.skip(
            f"{', '.join(missing_tools())} not installed (Debian: prometheus, prometheus-alertmanager)"
        )
    tmp = tmp_path_factory.mktemp("health")
    servers, procs, gpus, ports, targets = [], [], {}, {}, []
    stack = None
    watchdog: subprocess.Popen[bytes] | None = None
    try:
        for name in slurm_cluster.node_names:
            gpus[name] = FakeGpus(name, count=4, counters=read_counters(str(COUNTERS)))
            server = make_server(gpus[name], 0)
            servers.append(server)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            ports[name] = server.server_address[1]
            targets.append(Target("dcgm", f"127.0.0.1:{ports[name]}", {"node": name}))
        targets += _node_exporters(tmp, slurm_cluster.node_names, procs)
        thresholds = tmp / "thresholds.yml"
        thresholds.write_text(f"require_node_exporter: {'true' if NODE_EXPORTER else 'false'}\n")
        wd_port = free_port()
        stack = MonitoringStack(
            tmp / "mon", targets, webhook_url=f"http://127.0.0.1:{wd_port}/alerts"
        ).start()
        e = Env(slurm_cluster, stack, gpus, ports, tmp / "state", thresholds, tmp / "watchdog.log")
        watchdog = _start_watchdog(e, wd_port)
        yield e
    finally:
        if watchdog is not None:
            terminate_then_kill(watchdog)
        if stack is not None:
            stack.stop()
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        for s in servers:
            s.shutdown()
            s.server_close()
        subprocess.run(["scontrol", "update", f"NodeName={','.join(slurm_cluster.node_names)}", "State=RESUME"],
                       env=slurm_cluster.env(), capture_output=True)  # fmt: skip


def _start_watchdog(e: Env, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SLURM_CONF": str(e.cluster.conf), "INTELLECT_STATE_DIR": str(e.state),
           "INTELLECT_HEALTH_THRESHOLDS": str(e.thresholds)}  # fmt: skip
    log = open(e.watchdog_log, "ab")  # noqa: SIM115 - the child holds it
    # the cap counts every unavailable node: 0.67 of 3 lets node-2 drain beside node-3, which a person drained
    proc = subprocess.Popen(
        [sys.executable, "-m", "intellect.cli.main", "watchdog", "--prometheus", e.stack.url, "--poll", "1",
         "--hold", str(HOLD_S), "--listen", f"127.0.0.1:{port}", "--max-drain-fraction", "0.67"],
        stdout=log, stderr=log, env=env, cwd=ROOT,
    )  # fmt: skip
    log.close()
    wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz"), 20, "the watchdog's HTTP server")
    return proc


def _get(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _gated_recipe(tmp_path: Path) -> Path:
    text = (ROOT / "recipes" / "debug-cpu.yaml").read_text().replace("gate: false", "gate: true")
    recipe = tmp_path / "gated.yaml"
    recipe.write_text(text)
    return recipe


def test_xid_drains_the_node_a_launch_excludes_it_and_it_resumes(env: Env, tmp_path: Path) -> None:
    subprocess.run(["scontrol", "update", "NodeName=node-3", "State=DRAIN", f"Reason={HUMAN_REASON}"],
                   env=env.cluster.env(), check=True)  # fmt: skip
    proc = env.cli("health", "--prometheus", env.stack.url, "--json")
    assert proc.returncode == 0, proc.stderr
    verdicts = {v["node"]: v for v in json.loads(proc.stdout)["nodes"]}
    assert {n: v["status"] for n, v in verdicts.items()} == {"node-1": "ok", "node-2": "ok", "node-3": "ok"}

    env.fault("node-2", gpu=3, xid=79)
    st, reason = wait_for(lambda: _drained(env, "node-2"), 30, "the watchdog to drain node-2")
    assert reason.startswith("[intellect] ") and "watchdog: Xid 79 on GPU 3" in reason, reason
    assert env.nodes()["node-3"] == ("drained", HUMAN_REASON)
    assert "drained" not in env.nodes()["node-1"][0]

    proc = env.cli(
        "launch", str(_gated_recipe(tmp_path)), "--dry-run", "--json", "--prometheus", env.stack.url
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["health_gate"]["exclude"] == ["node-2"], out["health_gate"]
    assert "Xid 79 on GPU 3" in out["plan"]["excluded_reasons"]["node-2"]
    assert "node-2" in out["plan"]["exclude"] and "#SBATCH --exclude=node-2" in out["script"]

    cleared = time.monotonic()
    env.clear("node-2")
    wait_for(lambda: "drained" not in env.nodes()["node-2"][0], 30, "the watchdog to resume node-2")
    assert time.monotonic() - cleared >= HOLD_S
    assert env.nodes()["node-3"] == ("drained", HUMAN_REASON)
    journal = [json.loads(ln) for ln in (env.state / "journal.jsonl").read_text().splitlines()]
    assert [(j["action"], j["nodes"], j["source"]) for j in journal] == [
        ("drain", ["node-2"], "watchdog"),
        ("resume", ["node-2"], "watchdog"),
    ]


def _drained(env: Env, node: str) -> tuple[str, str] | None:
    st, reason = env.nodes()[node]
    return (st, reason) if "drain" in st else None


def test_watchdog_never_touches_a_human_drain_even_when_bad(env: Env) -> None:
    env.fault("node-3", gpu=0, row_remap_failure=1)
    try:
        proc = env.cli("health", "node-3", "--prometheus", env.stack.url, "--json")
        wait_for(lambda: _status(env, "node-3") == "bad", 15, "node-3 to turn bad")
        time.sleep(3)  # several watchdog cycles
        assert env.nodes()["node-3"] == ("drained", HUMAN_REASON), proc.stdout
    finally:
        env.clear("node-3")
    metrics = httpx.get(env.stack.url + "/api/v1/query", params={"query": "up{job='dcgm'}"}).json()
    assert len(metrics["data"]["result"]) == 3


def _status(env: Env, node: str) -> str:
    proc = env.cli("health", node, "--prometheus", env.stack.url, "--json")
    return str(json.loads(proc.stdout)["nodes"][0]["status"])


def test_prometheus_down_fails_the_launch_closed_and_health_is_unknown(env: Env, tmp_path: Path) -> None:
    env.stack.stop_process("prometheus")
    run_dir = tmp_path / "run"
    proc = env.cli("launch", str(_gated_recipe(tmp_path)), "--executor", "slurm", "--run-dir", str(run_dir),
                   "--prometheus", env.stack.url)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "fails closed" in lines[0] and "unreachable" in lines[0], proc.stderr
    assert not run_dir.exists()
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env.cluster.env()).stdout
    assert queue.strip() == ""

    proc = env.cli("health", "node-[1-3]", "--prometheus", env.stack.url, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {v["status"] for v in report["nodes"]} == {"unknown"} and "unreachable" in report["error"]

    dry = env.cli(
        "launch", str(_gated_recipe(tmp_path)), "--dry-run", "--json", "--prometheus", env.stack.url
    )
    assert dry.returncode == 0 and json.loads(dry.stdout)["health_gate"]["status"] == "failed"
    time.sleep(2)  # the watchdog keeps cycling, each cycle failed: nothing drains while Prometheus is down
    assert all("drain" not in st for n, (st, _) in env.nodes().items() if n != "node-3")


# ------------------------------------------------------------- the recorded expositions in a real Prometheus

XID79 = "dcgm-exporter-4.5.3-4.8.2-xid79-gpu3.prom"
HEALTHY = "dcgm-exporter-4.5.3-4.8.2.prom"
IB = "node-exporter-v1.12.1-infiniband.prom"
FS = "node-exporter-v1.12.1-filesystem.prom"


class Served:
    """Exposition texts served as they are, one HTTP server per scrape target; ``texts[key]`` can be swapped, and
    ``down`` makes a target answer 503 (a dead exporter)."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.down: set[str] = set()
        self.servers: dict[str, object] = {}

    def add(self, key: str, text: str) -> str:
        self.texts[key] = text

        def render() -> str:
            if key in self.down:
                raise ConnectionError("down")
            return self.texts[key]

        server = make_json_server(render, lambda spec: None, lambda spec: None, 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers[key] = server
        return f"127.0.0.1:{server.server_address[1]}"

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]


def _renamed(name: str, node: str) -> str:
    return fixture(name).replace('"h200-001"', f'"{node}"')


@pytest.fixture(scope="module")
def expo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, MonitoringStack]]:
    if missing_tools():
        pytest.skip(
            f"{', '.join(missing_tools())} not installed (Debian: prometheus, prometheus-alertmanager)"
        )
    served, targets = Served(), []
    nodes = {  # node → (dcgm exposition, node_exporter exposition, dcgm target carries node label)
        "h200-001": (_renamed(XID79, "h200-001"), fixture(IB) + fixture(FS), True),
        "h200-002": (_renamed(HEALTHY, "h200-002"), fixture(IB) + fixture("node-exporter-v1.12.1-filesystem-nfs-hung.prom"), True),
        "h200-003": (_renamed("dcgm-exporter-main-d5e5f51-hostname.prom", "h200-003"), fixture(IB) + fixture(FS), False),
        "h200-004": (_renamed(HEALTHY, "h200-004"), fixture(IB) + fixture(FS), True),
    }  # fmt: skip
    for node, (dcgm, node_text, labelled) in nodes.items():
        dcgm_labels = {"node": node, "node_type": "h200"} if labelled else {"node_type": "h200"}
        targets.append(Target("dcgm", served.add(f"{node}/dcgm", dcgm), dcgm_labels))
        targets.append(
            Target("node", served.add(f"{node}/node", node_text), {"node": node, "node_type": "h200"})
        )
    stack = MonitoringStack(tmp_path_factory.mktemp("expo"), targets)
    try:
        stack.start()
        yield served, stack
    finally:
        stack.stop()
        served.close()


def _verdicts(stack: MonitoringStack, grace: str = "5m") -> dict[str, Verdict]:
    th = load_thresholds(None).replace(exporter_down_grace=grace)
    with PrometheusClient(stack.url) as client:
        report = evaluate(client, th, ["h200-001", "h200-002", "h200-003", "h200-004"])
    assert report.error is None and report.warnings == [], report.to_json()
    return report.verdicts


def _until(stack: MonitoringStack, node: str, summary: str, grace: str = "5m") -> Verdict:
    def probe() -> Verdict | None:
        v = _verdicts(stack, grace)[node]
        return v if v.summary == summary else None

    return wait_for(probe, 30, f"{node}: {summary!r}")


def test_recorded_expositions_give_the_verdicts_on_call_expects(expo: tuple[Served, MonitoringStack]) -> None:
    _, stack = expo
    v1 = _until(stack, "h200-001", "Xid 79 on GPU 3 (GPU has fallen off the bus)")
    assert v1.status == "bad" and {r.rule for r in v1.reasons} == {"xid"}
    verdicts = _verdicts(stack)
    assert (verdicts["h200-002"].status, verdicts["h200-002"].summary) == (
        "bad",
        "/home (nfs4): mountpoint timeout",
    )
    # the lowercase hostname (dcgm-exporter main) names the node; 8 NDR ports ok, the 200G RoCE port ignored
    assert verdicts["h200-003"].status == "ok" and verdicts["h200-004"].status == "ok", verdicts


def test_a_drain_list_xid_stays_bad_after_a_later_xid_until_the_gpu_reports_none(
    expo: tuple[Served, MonitoringStack],
) -> None:
    served, stack = expo
    _until(stack, "h200-001", "Xid 79 on GPU 3 (GPU has fallen off the bus)")
    benign = served.texts["h200-001/dcgm"].replace(
        'err_code="79",err_msg="GPU has fallen off the bus"} 79',
        'err_code="13",err_msg="Graphics Engine Exception"} 13',
    )
    assert benign != served.texts["h200-001/dcgm"]
    served.texts["h200-001/dcgm"] = benign  # a new Xid: a new series, the old one goes stale
    v = wait_for(lambda: _latched_only(_verdicts(stack)["h200-001"]), 30, "the gauge to show Xid 13")
    assert v.status == "bad" and "not repaired" in v.summary and "Xid 79 on GPU 3" in v.summary, v.to_json()
    served.texts["h200-001/dcgm"] = _renamed(HEALTHY, "h200-001")  # GPU reset: Xid 0 on every GPU
    assert _until(stack, "h200-001", "ok").status == "ok"
    served.texts["h200-001/dcgm"] = _renamed(XID79, "h200-001")  # the same Xid again, later
    assert _until(stack, "h200-001", "Xid 79 on GPU 3 (GPU has fallen off the bus)").status == "bad"


def _latched_only(v: Verdict) -> Verdict | None:
    texts = [r.text for r in v.reasons]
    return v if any("Xid 13 on GPU 3" in t for t in texts) or "not repaired" in v.summary else None


def test_an_exporter_down_past_the_grace_period_is_bad(expo: tuple[Served, MonitoringStack]) -> None:
    served, stack = expo
    served.down.add("h200-004/dcgm")
    try:
        v = _until(stack, "h200-004", "exporter down: dcgm-exporter not scraped for 3s", grace="3s")
        assert v.status == "bad" and [r.rule for r in v.reasons] == ["exporter_down"]
    finally:
        served.down.discard("h200-004/dcgm")
    assert _until(stack, "h200-004", "ok", grace="3s").status == "ok"
