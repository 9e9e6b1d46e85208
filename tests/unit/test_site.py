"""The site file (/etc/intellect/site.yaml, written by provisioning): read by health, the watchdog and the gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from intellect.errors import UsageError
from intellect.site import Site, load_site
from tests.conftest import RECIPES, ROOT


def _cli(*args: str, site: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "INTELLECT_SITE": site, "NO_COLOR": "1", **(extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "intellect.cli.main", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def test_fields_missing_file_and_bad_fields(tmp_path: Path) -> None:
    assert load_site(tmp_path / "absent.yaml") == Site()
    good = tmp_path / "site.yaml"
    good.write_text("prometheus_url: http://10.0.0.1:9090\nslurm_cluster: intellect-dev\n")
    site = load_site(good)
    assert site.prometheus_url == "http://10.0.0.1:9090" and site.slurm_cluster == "intellect-dev"
    bad = tmp_path / "bad.yaml"
    bad.write_text("prometheus: http://10.0.0.1:9090\n")
    with pytest.raises(
        UsageError, match=r"bad.yaml: prometheus: Extra inputs are not permitted \(known fields"
    ):
        load_site(bad)
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(UsageError, match="expected a mapping"):
        load_site(tmp_path / "list.yaml")


def test_health_without_flags_asks_the_site_files_prometheus(tmp_path: Path) -> None:
    proc = _cli("health", "node1", site=str(tmp_path / "none.yaml"))
    assert proc.returncode == 2
    assert (
        proc.stderr.count("\n") == 1
        and "has no prometheus_url" in proc.stderr
        and "--prometheus" in proc.stderr
    )
    site = tmp_path / "site.yaml"
    site.write_text("prometheus_url: http://127.0.0.1:9\n")  # nothing listens on port 9: the error names it
    proc = _cli("health", "node1", "--json", site=str(site))
    assert "127.0.0.1:9" in proc.stdout + proc.stderr
    flag = _cli("health", "node1", "--json", "--prometheus", "http://127.0.0.1:7", site=str(site))
    assert "127.0.0.1:7" in flag.stdout + flag.stderr and "127.0.0.1:9" not in flag.stdout + flag.stderr


def test_prometheus_with_the_gate_off_is_warned_about(tmp_path: Path) -> None:
    args = ("launch", str(RECIPES / "debug-cpu.yaml"), "--dry-run", "--json", "--no-health-gate")
    proc = _cli(*args, "--prometheus", "http://127.0.0.1:9", site="")
    assert proc.returncode == 0, proc.stderr
    warnings = json.loads(proc.stdout)["warnings"]
    assert any("ignored: the health gate is off (--no-health-gate)" in w for w in warnings), warnings
    assert json.loads(_cli(*args, site="").stdout)["warnings"] == []
