"""monitoring/: promtool check config / check rules / test rules (our rule tests), dashboards, the stand-in
dcgm-exporter (it stands for NVIDIA's dcgm-exporter: same metric names and labels, fake GPUs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from intellect.health.config import XID_DRAIN
from intellect.health.fakedcgm import FakeGpus

MON = Path(__file__).resolve().parents[2] / "monitoring"
promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian: prometheus) missing"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=MON, timeout=60)


@promtool
def test_promtool_check_config_and_rules() -> None:
    proc = _promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _promtool("check", "rules", *sorted(str(p) for p in (MON / "rules").glob("*.yml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@promtool
def test_promtool_rule_tests_pass() -> None:
    proc = _promtool("test", "rules", "tests/rules_test.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool (Debian: prometheus-alertmanager) missing")
def test_alertmanager_config_routes_to_the_watchdog() -> None:
    proc = subprocess.run(
        ["amtool", "check-config", "alertmanager.yml"], capture_output=True, text=True, cwd=MON
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "http://127.0.0.1:9419/alerts" in (MON / "alertmanager.yml").read_text()


def test_alert_rule_xid_list_matches_the_verdict_drain_list() -> None:
    text = (MON / "rules" / "gpu.yml").read_text()
    assert tuple(sorted(int(x) for x in re.findall(r"DCGM_FI_DEV_XID_ERRORS == (\d+)", text))) == XID_DRAIN


def test_dashboards_are_valid_and_query_known_metrics() -> None:
    for name in ("cluster-health.json", "rl-run.json"):
        dash = json.loads((MON / "grafana" / name).read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        assert dash["uid"] and exprs
    rl = (MON / "grafana" / "rl-run.json").read_text()
    for metric in ("intellect_orchestrator_tokens_per_second", "intellect_trainer_masked_frac",
                   "intellect_orchestrator_off_policy_lag", "intellect_inference_weight_update_seconds_bucket"):  # fmt: skip
        assert metric in rl


def test_watchdog_unit_runs_the_watchdog() -> None:
    unit = (MON / "systemd" / "intellect-watchdog.service").read_text()
    assert re.search(r"^ExecStart=\S+/intellect watchdog ", unit, re.M) and "Restart=always" in unit


def test_stand_in_dcgm_exporter_serves_real_names_and_takes_faults() -> None:
    gpus = FakeGpus("node-2", count=4)
    gpus.fault({"gpu": 3, "xid": 79})
    text = gpus.render()
    line = next(ln for ln in text.splitlines() if ln.startswith("DCGM_FI_DEV_XID_ERRORS") and 'gpu="3"' in ln)
    assert (
        line.endswith(" 79") and 'Hostname="node-2"' in line and 'UUID="GPU-' in line and "modelName=" in line
    )
    for metric in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ROW_REMAP_FAILURE"):
        assert f"# TYPE {metric} " in text
    with pytest.raises(ValueError):
        gpus.fault({"gpu": 9, "xid": 79})
    with pytest.raises(ValueError):
        gpus.fault({"gpu": 1, "colour": 3})
    gpus.clear()
    assert 'gpu="3"' in gpus.render() and " 79\n" not in gpus.render()
