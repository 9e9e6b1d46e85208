"""One home for the health facts: every generated copy equals what ``python -m intellect.health.generate`` writes
now, the monitoring role's templates render to the very rules and counters of monitoring/, and the dev cluster's
stand-in is fakedcgm.py itself.

If a test here fails after a change to intellect/health/config.py (or fakedcgm.py, or monitoring/rules/rl.yml),
regenerate:   .venv/bin/python -m intellect.health.generate
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jinja2
import pytest
import yaml

from intellect.health.config import DCGM_COUNTERS, XID_DRAIN, Thresholds
from intellect.health.fakedcgm import FakeGpus, read_counters
from intellect.health.generate import ROOT, main, outputs, stale
from intellect.health.stack import COUNTERS

ROLE = ROOT / "playbooks" / "roles" / "monitoring" / "templates"
REGENERATE = "regenerate: .venv/bin/python -m intellect.health.generate"


def _render(name: str, **variables: object) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
    env.filters["comment"] = lambda s: "\n".join("# " + line for line in str(s).splitlines())
    env.filters["quote"] = shlex.quote
    return env.from_string((ROLE / name).read_text()).render(ansible_managed="Ansible managed", **variables)


def test_generated_files_are_what_the_generator_writes_now() -> None:
    assert stale(Thresholds()) == [], REGENERATE
    assert main(["--check"]) == 0


def test_check_names_a_file_that_drifted(tmp_path: Path) -> None:
    for rel, text in outputs(Thresholds()).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "monitoring/rules/gpu.yml").write_text("groups: []\n")
    assert stale(Thresholds(), tmp_path) == ["monitoring/rules/gpu.yml"]
    assert main(["--check", "--root", str(tmp_path)]) == 1


def test_the_xid_list_and_thresholds_are_those_of_the_config_everywhere() -> None:
    """No second copy: the drain list and the temperature thresholds in the alerts are the config's."""
    gpu = (ROOT / "monitoring/rules/gpu.yml").read_text()
    th = Thresholds()
    assert f'xid=~"{"|".join(map(str, XID_DRAIN))}"' in gpu
    assert (
        f"DCGM_FI_DEV_GPU_TEMP >= {th.gpu_temp_bad:g}\n" in gpu
        and "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL >= 1\n" in gpu
    )
    for text in (gpu, _render("intellect-rules.yml.j2")):
        assert "increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL" not in text and " 87\n" not in text.replace(
            ">= 87\n", ""
        )


def test_role_rules_template_renders_to_the_rules_of_monitoring() -> None:
    rendered = yaml.safe_load(_render("intellect-rules.yml.j2"))
    groups = []
    for name in ("gpu", "ib", "node", "rl", "watchdog"):
        groups += yaml.safe_load((ROOT / f"monitoring/rules/{name}.yml").read_text())["groups"]
    assert rendered["groups"] == groups


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) missing")
def test_role_rules_template_passes_promtool_as_the_role_validates_it(tmp_path: Path) -> None:
    path = tmp_path / "intellect-rules.yml"
    path.write_text(_render("intellect-rules.yml.j2"))
    proc = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_role_counters_template_is_the_counters_file() -> None:
    rendered = _render("dcp-metrics-intellect.csv.j2")
    records = [ln for ln in rendered.splitlines() if ln and not ln.startswith("#")]
    assert records == [f"{n}, {t}, {h}" for n, t, h in DCGM_COUNTERS]
    assert [ln for ln in COUNTERS.read_text().splitlines() if not ln.startswith("#")] == records


@pytest.mark.parametrize("mode", ["standin", "nvidia"])
def test_exporter_unit_passes_our_counters_file_with_f(mode: str) -> None:
    unit = _render("dcgm-exporter.service.j2", monitoring_dcgm_exporter_mode=mode, inventory_hostname="node1",
                   monitoring_dcgm_standin_device_glob="/dev/fakegpu[0-9]*", monitoring_dcgm_exporter_port=9400,
                   monitoring_dcgm_exporter_collect_interval_ms=5000)  # fmt: skip
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[argv.index("-f") + 1] == "/etc/dcgm-exporter/dcp-metrics-intellect.csv"
    assert argv[argv.index("-a") + 1] == ":9400" and "Environment=NODE_NAME=node1" in unit
    assert argv[argv.index("-c") + 1] == "5000"  # both binaries take upstream's -c (collect interval, ms)
    assert (argv[:2] == ["/usr/bin/python3", "/usr/local/bin/intellect-dcgm-standin"]) == (mode == "standin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dev_cluster_stand_in_is_fakedcgm_and_runs_alone_with_the_counters_file(tmp_path: Path) -> None:
    """The template is the module's source; rendered, it runs with the system Python and no intellect package."""
    script = tmp_path / "intellect-dcgm-standin"
    script.write_text(_render("dcgm-standin.py.j2"))
    assert (ROOT / "intellect/health/fakedcgm.py").read_text() in script.read_text()
    for i in range(2):
        (tmp_path / f"fakegpu{i}").touch()
    port = _free_port()
    python = shutil.which("python3") or sys.executable
    log = tmp_path / "standin.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([python, "-I", str(script), "-f", str(COUNTERS), "-a", f"127.0.0.1:{port}",
                                 "--devices", str(tmp_path / "fakegpu[0-9]*"), "--hostname", "node1", "-c", "200"],
                                cwd=tmp_path, stdout=out, stderr=out)  # fmt: skip
    try:
        text = _get_metrics(port, proc, log)
        expected = FakeGpus("node1", 2, read_counters(str(COUNTERS))).render()
        strip = [ln for ln in expected.splitlines() if "TOTAL_ENERGY" not in ln]
        assert [ln for ln in text.splitlines() if "TOTAL_ENERGY" not in ln] == strip
        # the device is gone: the GPU stops reporting, from the next sample on
        (tmp_path / "fakegpu1").unlink()
        deadline = time.monotonic() + 10
        while 'gpu="1"' in (later := _get_metrics(port, proc, log)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 'gpu="1"' not in later and 'gpu="0"' in later
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _get_metrics(port: int, proc: subprocess.Popen[bytes], log: Path) -> str:
    for _ in range(100):
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the stand-in never answered")
