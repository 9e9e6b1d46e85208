"""The HealthCheckProgram check on fixture sysfs trees (tests/fixtures/health/sysfs-ok) and nvidia-smi text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from intellect.health.local import LocalThresholds, check_ib, main, parse_nvidia_smi

OK_TREE = Path(__file__).resolve().parents[1] / "fixtures" / "health" / "sysfs-ok"


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    shutil.copytree(OK_TREE, root)
    return root


def test_healthy_tree_has_no_problems() -> None:
    problems, counters = check_ib(OK_TREE, LocalThresholds(ib_rate_gbps=400), {})
    assert problems == [] and counters["mlx5_0 port 1:symbol_error"] == 0


def test_port_down_and_low_rate(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    port = root / "class/infiniband/mlx5_1/ports/1"
    (port / "state").write_text("1: DOWN\n")
    (port / "phys_state").write_text("3: Disabled\n")
    (port / "rate").write_text("200 Gb/sec (4X HDR)\n")
    problems, _ = check_ib(root, LocalThresholds(ib_rate_gbps=400), {})
    assert problems == [
        "mlx5_1 port 1 state DOWN",
        "mlx5_1 port 1 link Disabled",
        "mlx5_1 port 1 rate 200.0 Gb/s < 400",
    ]


def test_error_counters_rising_since_last_run(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _, before = check_ib(root, LocalThresholds(), {})
    counters = root / "class/infiniband/mlx5_0/ports/1/counters"
    (counters / "symbol_error").write_text("5000\n")
    (counters / "link_downed").write_text("1\n")
    problems, _ = check_ib(root, LocalThresholds(), before)
    assert problems == ["mlx5_0 port 1 symbol_error +5000", "mlx5_0 port 1 link went down 1x"]


def test_nvidia_smi_parsing() -> None:
    gpus = "0, 45, 0\n1, 97, 0\n2, 50, 3\n"
    remap = "00000000:18:00.0, No, No\n00000000:19:00.0, Yes, No\n00000000:1A:00.0, No, Yes\n"
    assert parse_nvidia_smi(gpus, remap, LocalThresholds()) == [
        "GPU 1 at 97 C",
        "GPU 2 3 uncorrected ECC errors",
        "GPU 00000000:19:00.0 row remap pending",
        "GPU 00000000:1A:00.0 row remap failed",
    ]
    assert parse_nvidia_smi("[N/A]\n", "", LocalThresholds()) == []


def test_main_exit_codes_and_state_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    state = tmp_path / "state.json"
    assert main(["--sysfs", str(OK_TREE), "--state-file", str(state), "--no-drain"]) == 0
    assert json.loads(state.read_text())["mlx5_1 port 1:link_downed"] == 0
    root = _copy(tmp_path)
    (root / "class/infiniband/mlx5_0/ports/1/state").write_text("1: DOWN\n")
    assert main(["--sysfs", str(root), "--state-file", str(state), "--no-drain"]) == 1
