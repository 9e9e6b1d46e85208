"""The HealthCheckProgram check on fixture sysfs trees (tests/fixtures/health/sysfs-ok) and nvidia-smi text; its
thresholds and node types are those of intellect.health.config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from intellect.errors import UsageError
from intellect.health.config import Thresholds
from intellect.health.local import LocalThresholds, check_gpus, check_ib, main, parse_nvidia_smi

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


def test_thresholds_and_node_type_come_from_the_health_config() -> None:
    """One home: the local check's temperature and IB error limits are those of the Prometheus verdicts."""
    th = Thresholds()
    local = LocalThresholds.of(th, "h200")
    assert (local.gpu_temp_bad, local.ib_error_delta) == (th.gpu_temp_bad, th.ib_errors_bad)
    assert (local.ib_rate_gbps, local.gpus_expected) == (400, 8)
    assert LocalThresholds() == LocalThresholds.of(th)  # the generic type expects nothing
    with pytest.raises(UsageError, match="unknown node type 'h20'"):
        LocalThresholds.of(th, "h20")


def test_a_missing_gpu_and_a_missing_nvidia_smi_are_problems_on_a_gpu_node(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    th = LocalThresholds.of(Thresholds(), "h200")
    seven = "".join(f"{i}, 45, 0\n" for i in range(7))
    assert parse_nvidia_smi(seven, "", th) == ["only 7 of 8 GPUs in nvidia-smi"]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert check_gpus(th) == ["nvidia-smi not found, 8 GPUs expected"]
    assert check_gpus(LocalThresholds()) == []


def test_roce_ports_are_skipped_by_their_sysfs_link_layer(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    port = root / "class/infiniband/mlx5_1/ports/1"
    (port / "link_layer").write_text("Ethernet\n")
    (port / "rate").write_text("200 Gb/sec (4X HDR)\n")
    (port / "state").write_text("1: DOWN\n")
    problems, counters = check_ib(root, LocalThresholds.of(Thresholds(), "h200"), {})
    assert problems == [] and not any(k.startswith("mlx5_1") for k in counters)


def test_main_takes_the_node_type(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))
    args = ["--sysfs", str(OK_TREE), "--state-file", str(tmp_path / "s.json"), "--no-drain"]
    assert main([*args, "--node-type", "h200"]) == 1  # no nvidia-smi on an 8-GPU node
    assert main([*args, "--node-type", "devcluster", "--ib-rate", "400"]) == 1
    assert main([*args, "--node-type", "cpu"]) == 0
    assert main([*args, "--node-type", "nope"]) == 2
