"""monitoring/rules/watchdog.yml: promtool checks it and runs monitoring/tests/watchdog_test.yml, and every
watchdog metric that a rule, a rule test, the dashboard or the unit names is one the watchdog exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from intellect.health.watchdog import WatchdogMetrics

MON = Path(__file__).resolve().parents[2] / "monitoring"
promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian: prometheus) missing"
)
METRIC = re.compile(r"\bintellect_watchdog_[a-z_]+")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=MON, timeout=60)


def exported() -> set[str]:
    """Every sample name on the watchdog's /metrics (counters as ``*_total``)."""
    families = list(WatchdogMetrics().registry.collect())
    named = {f.name + ("_total" if f.type == "counter" else "") for f in families}  # labelled, no child yet
    return named | {s.name for f in families for s in f.samples}


@promtool
def test_promtool_checks_the_watchdog_rules_and_their_tests_pass() -> None:
    proc = _promtool("check", "rules", "rules/watchdog.yml")
    assert proc.returncode == 0 and "SUCCESS: 6 rules found" in proc.stdout, proc.stdout + proc.stderr
    proc = _promtool("test", "rules", "tests/watchdog_test.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_watchdog_metric_that_is_named_somewhere_is_exported() -> None:
    names = exported()
    for path in (MON / "rules" / "watchdog.yml", MON / "tests" / "watchdog_test.yml",
                 MON / "grafana" / "cluster-health.json"):  # fmt: skip
        named = set(METRIC.findall(path.read_text()))
        assert named and named <= names, (path.name, sorted(named - names))


def test_every_alert_of_the_watchdog_rules_is_tested() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)", (MON / "rules" / "watchdog.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", (MON / "tests" / "watchdog_test.yml").read_text()))
    assert len(alerts) == 6 and alerts == tested


def test_the_metrics_the_alerts_need_exist_before_the_first_cycle() -> None:
    """Absent series never fire: the labelled gauges and counters are there, at 0, from the start."""
    names = {
        (s.name, tuple(sorted(s.labels.items())))
        for f in WatchdogMetrics().registry.collect()
        for s in f.samples
    }
    for source in ("slurm", "prometheus"):
        assert ("intellect_watchdog_failing", (("source", source),)) in names
        assert ("intellect_watchdog_cycle_errors_total", (("source", source),)) in names
    for why in ("cap", "per_cycle", "outage"):
        assert ("intellect_watchdog_held_back_nodes", (("why", why),)) in names
    assert ("intellect_watchdog_last_success_timestamp_seconds", ()) in names
