"""monitoring/: promtool check config / check rules / test rules (monitoring/tests/*_test.yml), the rules run by
promtool on the recorded expositions of the real exporters and on the stand-ins' output, dashboards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from intellect.health import checks as q
from intellect.health.fakedcgm import FakeGpus, read_counters
from intellect.health.fakenode import FakeNode
from intellect.health.stack import COUNTERS
from tests.health_exposition import fixture, parse

MON = Path(__file__).resolve().parents[2] / "monitoring"
OURS = ("gpu", "ib", "node", "rl")
promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian: prometheus) missing"
)


def _promtool(*args: str, cwd: Path = MON) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@promtool
def test_promtool_check_config_and_rules() -> None:
    proc = _promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _promtool("check", "rules", *sorted(str(p) for p in (MON / "rules").glob("*.yml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@promtool
def test_promtool_rule_tests_pass() -> None:
    proc = _promtool("test", "rules", *(f"tests/{name}_test.yml" for name in OURS))
    assert proc.returncode == 0 and proc.stdout.count("SUCCESS") == len(OURS), proc.stdout + proc.stderr


def _series(text: str, target: dict[str, str]) -> list[dict[str, str]]:
    """promtool input series for one scrape of an exposition: its labels (empty ones dropped) + target labels."""
    out = []
    for fam in parse(text):
        for s in fam.series:
            labels = [(k, v) for k, v in s.labels if v != ""] + list(target.items())
            body = ",".join(f'{k}="{v}"' for k, v in labels)
            out.append({"series": f"{s.name}{{{body}}}", "values": f"{float(s.value)!r}x20"})
    return out


def _run_promtool_test(tmp_path: Path, series: list[dict[str, str]], expect: dict[str, list[dict]]) -> None:
    rule_files = [str(MON / "rules" / f"{name}.yml") for name in ("gpu", "ib", "node")]
    test = {"rule_files": rule_files, "evaluation_interval": "15s", "tests": [{
        "interval": "15s", "input_series": series,
        "alert_rule_test": [{"eval_time": "2m", "alertname": name, "exp_alerts": alerts}
                            for name, alerts in expect.items()]}]}  # fmt: skip
    path = tmp_path / "exposition_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    proc = _promtool("test", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


DRAIN = {"severity": "critical", "intellect_action": "drain"}


def _up(target: dict[str, str]) -> dict[str, str]:
    return {"series": "up{" + ",".join(f'{k}="{v}"' for k, v in target.items()) + "}", "values": "1x20"}


NO_ALERTS = ("IbPortDown", "IbPortRateLow", "IbPortsMissing", "IbLinkDowned", "GpuMissing", "GpuEccDoubleBit",
             "GpuRowRemapFailed", "GpuRowRemapPending", "GpuTemperatureCritical", "GpuMemoryTemperatureCritical",
             "DcgmExporterDown", "NodeExporterDown")  # fmt: skip


def _target(node: str, job: str, port: int, node_label: bool = True) -> dict[str, str]:
    out = {"instance": f"10.0.0.{node[-1]}:{port}", "job": job, "node_type": "h200"}
    return {**out, "node": node} if node_label else out


@promtool
def test_rules_on_the_recorded_expositions(tmp_path: Path) -> None:
    """h200-001: Xid 79 (err_code shape, Hostname); h200-002: healthy with a hung NFS home; h200-003: Xid 79 with the
    lowercase hostname and no node label. Every node has 8 NDR ports and a 200G RoCE port: no IB alert."""
    xid79 = fixture("dcgm-exporter-4.5.3-4.8.2-xid79-gpu3.prom")
    series = []
    for node, dcgm, fs, node_label in (
        ("h200-001", xid79, "node-exporter-v1.12.1-filesystem.prom", True),
        ("h200-002", fixture("dcgm-exporter-4.5.3-4.8.2.prom"), "node-exporter-v1.12.1-filesystem-nfs-hung.prom", True),
        ("h200-003", xid79.replace('Hostname="h200-001"', 'hostname="h200-003"'),
         "node-exporter-v1.12.1-filesystem.prom", False),
    ):  # fmt: skip
        dcgm_t, node_t = _target(node, "dcgm", 9400, node_label), _target(node, "node", 9100, node_label)
        series += _series(dcgm.replace('"h200-001"', f'"{node}"'), dcgm_t)
        series += _series(fixture("node-exporter-v1.12.1-infiniband.prom") + fixture(fs), node_t)
        series += [_up(dcgm_t), _up(node_t)]
    uuid3 = "GPU-4a1f0c3e-9b2d-4e51-8c07-1d2e3f408495"
    expect: dict[str, list[dict]] = {name: [] for name in NO_ALERTS}
    expect["GpuXidDrainable"] = [
        {"exp_labels": {"instance": "10.0.0.1:9400", "job": "dcgm", "node": "h200-001", "Hostname": "h200-001",
                        "node_type": "h200", "UUID": uuid3, "gpu": "3", "xid": "79", **DRAIN},
         "exp_annotations": {"summary": "Xid 79 on GPU 3 of h200-001: bad until the GPU is reset or the node rebooted"}},
        {"exp_labels": {"instance": "10.0.0.3:9400", "job": "dcgm", "hostname": "h200-003", "node_type": "h200",
                        "UUID": uuid3, "gpu": "3", "xid": "79", **DRAIN},
         "exp_annotations": {"summary": "Xid 79 on GPU 3 of h200-003: bad until the GPU is reset or the node rebooted"}},
    ]  # fmt: skip
    expect["NodeMountFailed"] = [{"exp_labels": {
        "device": "nfs01.cluster.internal:/export/home", "device_error": "mountpoint timeout", "fstype": "nfs4",
        "mountpoint": "/home", "instance": "10.0.0.2:9100", "job": "node", "node": "h200-002", "node_type": "h200",
        **DRAIN}, "exp_annotations": {"summary": "/home (nfs4) on h200-002: mountpoint timeout"}}]  # fmt: skip
    _run_promtool_test(tmp_path, series, expect)


@promtool
def test_rules_on_the_stand_ins_output(tmp_path: Path) -> None:
    """What the dev cluster and the benches serve trips the same rules: Xid 79 on GPU 2, GPU 5 off the bus (7 of 8
    report, none of its series left), an InfiniBand HCA at 200 Gb/s, a stale Lustre mount; the RoCE port down is
    ignored."""
    gpus = FakeGpus("h200-004", 8, read_counters(str(COUNTERS)))
    gpus.fault({"gpu": 2, "xid": 79})
    gpus.fault({"gpu": 5, "gone": True})
    node = FakeNode("h200")
    node.fault({"ib": "mlx5_4", "rate_gbps": 200})
    node.fault({"ib": "mlx5_8", "state": 1, "phys_state": 3})
    node.fault({"mount": "/lustre", "error": "stale NFS file handle"})
    dcgm_t, node_t = _target("h200-004", "dcgm", 9400), _target("h200-004", "node", 9100)
    series = _series(gpus.render(), dcgm_t) + _series(node.render(), node_t)
    series += [_up(dcgm_t), _up(node_t)]
    base = {"instance": "10.0.0.4:9400", "job": "dcgm", "node": "h200-004", "node_type": "h200"}
    expect: dict[str, list[dict]] = {
        "GpuMissing": [{"exp_labels": {**base, "Hostname": "h200-004", **DRAIN},
                        "exp_annotations": {"summary": "only 7 GPUs of h200-004 report (its node type wants more)"}}],
        "GpuXidDrainable": [{"exp_labels": {**base, "Hostname": "h200-004", "UUID": gpus.uuids[2], "gpu": "2",
                                            "xid": "79", **DRAIN},
                             "exp_annotations": {"summary": "Xid 79 on GPU 2 of h200-004: bad until the GPU is reset "
                                                            "or the node rebooted"}}],
        "IbPortRateLow": [{"exp_labels": {**node_t, "device": "mlx5_4", "port": "1", **DRAIN},
                           "exp_annotations": {"summary": "IB mlx5_4 port 1 on h200-004 at 25GB/s, below its node "
                                                          "type's rate"}}],
        "IbPortDown": [],
        "NodeMountFailed": [{"exp_labels": {
            **node_t, "device": "10.20.0.11@o2ib:10.20.0.12@o2ib:/scratch", "device_error": "stale NFS file handle",
            "fstype": "lustre", "mountpoint": "/lustre", **DRAIN},
            "exp_annotations": {"summary": "/lustre (lustre) on h200-004: stale NFS file handle"}}],
    }  # fmt: skip
    _run_promtool_test(tmp_path, series, expect)


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool (Debian: prometheus-alertmanager) missing")
def test_alertmanager_config_is_valid() -> None:
    proc = subprocess.run(
        ["amtool", "check-config", "alertmanager.yml"], capture_output=True, text=True, cwd=MON
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _recorded() -> set[str]:
    names = set()
    for path in (MON / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


def test_dashboards_are_valid_and_query_known_metrics() -> None:
    for name in ("cluster-health.json", "rl-run.json"):
        dash = json.loads((MON / "grafana" / name).read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        assert dash["uid"] and exprs
    health = (MON / "grafana" / "cluster-health.json").read_text()
    assert set(re.findall(r"intellect:[a-z_:]+", health)) <= _recorded()
    for metric in (q.XID_LATCHED, "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
                   "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "node_filesystem_device_error", "node_infiniband_rate_bytes_per_second"):  # fmt: skip
        assert metric in health
    rl = (MON / "grafana" / "rl-run.json").read_text()
    for metric in ("intellect_orchestrator_tokens_per_second", "intellect_trainer_masked_frac",
                   "intellect_orchestrator_off_policy_lag", "intellect_inference_weight_update_seconds_bucket"):  # fmt: skip
        assert metric in rl


def test_target_files_name_the_node_and_its_type() -> None:
    for name in ("node.yml", "dcgm.yml"):
        for entry in yaml.safe_load((MON / "targets" / name).read_text()):
            assert set(entry["labels"]) == {"node", "node_type"}, entry


def test_watchdog_unit_runs_the_watchdog() -> None:
    unit = (MON / "systemd" / "intellect-watchdog.service").read_text()
    assert re.search(r"^ExecStart=\S+/intellect watchdog ", unit, re.M) and "Restart=always" in unit
