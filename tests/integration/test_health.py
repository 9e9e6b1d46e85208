"""Health end to end with the REAL Prometheus and Alertmanager (Debian packages) on 127.0.0.1, the real loopback
Slurm (node-1..3), a real node_exporter per node reading a fixture sysfs tree (when installed), and one stand-in
dcgm-exporter per node: it stands for NVIDIA's dcgm-exporter (same metric names and labels, 4 fake GPUs).

Xid 79 on node-2 GPU 3 → the watchdog drains node-2 naming Xid 79 and GPU 3 → a new launch excludes it → the
fault clears → the watchdog resumes node-2 after its hold; node-3, drained by a person, stays drained throughout.
Prometheus stopped → launch fails closed and `health` says unknown.
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

from intellect.health.fakedcgm import FakeGpus, make_server
from intellect.health.stack import MonitoringStack, Target, free_port, missing_tools
from intellect.procs import terminate_then_kill
from tests.conftest import ROOT, run_cli

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
            gpus[name] = FakeGpus(name, count=4)
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "intellect.cli.main", "watchdog", "--prometheus", e.stack.url, "--poll", "1",
         "--hold", str(HOLD_S), "--listen", f"127.0.0.1:{port}", "--max-drain-fraction", "0.5"],
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
    time.sleep(2)  # the watchdog keeps cycling: unknown never drains
    assert all("drain" not in st for n, (st, _) in env.nodes().items() if n != "node-3")
