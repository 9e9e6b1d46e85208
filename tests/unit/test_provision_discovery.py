"""Hardware discovery (playbooks/library/intellect_hw_facts.py) on recordings of an H200 node, and the hostlist
and NodeName/Gres filters (playbooks/filter_plugins/slurm_conf.py).

The recordings under tests/fixtures/ansible/h200/ are the raw inputs of the module: nvidia-smi's CSV, lscpu's
parsable output, /proc/meminfo, the driver's /proc/driver/nvidia/gpus/*/information (nvidia-gpus.json) and the
sysfs attributes of the IB ports and GPU NUMA nodes. facts.json is what
the module makes of them; to regenerate it after a deliberate change: INTELLECT_REGEN_GOLDEN=1 pytest this file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
H200 = ROOT / "tests" / "fixtures" / "ansible" / "h200"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    intern = sys.intern
    try:
        spec.loader.exec_module(mod)
    finally:
        # ansible.module_utils replaces sys.intern with a patch object; torch._dynamo, imported later in this
        # pytest process, refuses it (TypeError in substitute_in_graph). Give the process its builtin back.
        sys.intern = intern
    return mod


hw = _load(ROOT / "playbooks" / "library" / "intellect_hw_facts.py")
sc = _load(ROOT / "playbooks" / "filter_plugins" / "slurm_conf.py")


def _fake_sysfs(tmp: Path) -> Path:
    for key, attrs in json.loads((H200 / "ib-ports.json").read_text()).items():
        hca, port = key.split("/")
        d = tmp / "class" / "infiniband" / hca / "ports" / port
        d.mkdir(parents=True)
        for name, value in attrs.items():
            (d / name).write_text(value + "\n")
    for bus, node in json.loads((H200 / "gpu-numa.json").read_text()).items():
        d = tmp / "bus" / "pci" / "devices" / bus
        d.mkdir(parents=True)
        (d / "numa_node").write_text(f"{node}\n")
    proc = tmp / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text((H200 / "meminfo").read_text())
    for bus, text in json.loads((H200 / "nvidia-gpus.json").read_text()).items():
        d = proc / "driver" / "nvidia" / "gpus" / bus
        d.mkdir(parents=True)
        (d / "information").write_text(text)
    return tmp


def discover_h200(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    sysfs = _fake_sysfs(tmp)
    outputs = {"lscpu": (H200 / "lscpu.csv").read_text(), "nvidia-smi": (H200 / "nvidia-smi.csv").read_text()}
    monkeypatch.setattr(hw.shutil, "which", lambda name: f"/usr/bin/{name}")
    params = {"sysfs": str(sysfs), "procfs": str(sysfs / "proc"), "gpu_device_glob": "", "gpu_model": "x"}
    return hw.discover(params, lambda argv: outputs[argv[0]])


def test_h200_recording_gives_the_recorded_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = discover_h200(tmp_path, monkeypatch)
    if os.environ.get("INTELLECT_REGEN_GOLDEN") == "1":
        (H200 / "facts.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    assert facts == json.loads((H200 / "facts.json").read_text())
    assert facts["cpu"] == {
        "cpus": 224,
        "sockets": 2,
        "cores_per_socket": 56,
        "threads_per_core": 2,
        "numa_cores": {"0": "0-55", "1": "56-111"},
    }
    assert [g["model"] for g in facts["gpus"]] == ["NVIDIA H200"] * 8
    assert [g["cores"] for g in facts["gpus"]] == ["0-55"] * 4 + ["56-111"] * 4
    assert [g["device"] for g in facts["gpus"]] == [f"/dev/nvidia{i}" for i in range(8)]
    ndr = [p for p in facts["ib"] if p["link_layer"] == "InfiniBand" and p["rate_gbps"] == 400]
    assert len(ndr) == 8 and all(p["state"] == "ACTIVE" for p in ndr)
    assert facts["memory_mb"] == 2113276612 // 1024


def test_device_files_follow_the_driver_minor_numbers_not_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A board where the driver numbered two GPUs the other way round from nvidia-smi's enumeration."""
    sysfs = _fake_sysfs(tmp_path)
    gpus_dir = sysfs / "proc" / "driver" / "nvidia" / "gpus"
    a, b = gpus_dir / "0000:2a:00.0" / "information", gpus_dir / "0000:9a:00.0" / "information"
    text_a, text_b = a.read_text(), b.read_text()
    a.write_text(text_a.replace("Device Minor: \t 1", "Device Minor: \t 4"))
    b.write_text(text_b.replace("Device Minor: \t 4", "Device Minor: \t 1"))
    outputs = {"lscpu": (H200 / "lscpu.csv").read_text(), "nvidia-smi": (H200 / "nvidia-smi.csv").read_text()}
    monkeypatch.setattr(hw.shutil, "which", lambda name: f"/usr/bin/{name}")
    params = {"sysfs": str(sysfs), "procfs": str(sysfs / "proc"), "gpu_device_glob": "", "gpu_model": "x"}
    facts = hw.discover(params, lambda argv: outputs[argv[0]])
    by_index = {g["index"]: (g["device"], g["cores"]) for g in facts["gpus"]}
    assert by_index[1] == ("/dev/nvidia4", "0-55") and by_index[4] == ("/dev/nvidia1", "56-111")
    # gres.conf pairs each device file with its own GPU's cores
    lines = sc.slurm_gres_lines(["gpu-001"], {"gpu-001": {"intellect_hw": facts}})
    assert lines == [
        "NodeName=gpu-001 Name=gpu Type=h200 File=/dev/nvidia[0,2-4] Cores=0-55",
        "NodeName=gpu-001 Name=gpu Type=h200 File=/dev/nvidia[1,5-7] Cores=56-111",
    ]
    # a driver that is not loaded has no /proc/driver/nvidia/gpus: the error says so
    a.unlink()
    with pytest.raises(ValueError, match="no device minor number.*nvidia kernel module loaded"):
        hw.discover(params, lambda argv: outputs[argv[0]])


def test_device_file_gpus_without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in (0, 1, 10, 2):
        (tmp_path / f"fakegpu{i}").write_text("")
    monkeypatch.setattr(hw.shutil, "which", lambda name: None)
    (tmp_path / "meminfo").write_text("MemTotal: 4194304 kB\n")
    params = {
        "sysfs": str(tmp_path),
        "procfs": str(tmp_path),
        "gpu_device_glob": str(tmp_path / "fakegpu*"),
        "gpu_model": "fake",
    }
    facts = hw.discover(params, lambda argv: "0,0,0,0\n1,0,0,0\n")
    assert [Path(g["device"]).name for g in facts["gpus"]] == [
        "fakegpu0",
        "fakegpu1",
        "fakegpu2",
        "fakegpu10",
    ]
    assert facts["cpu"]["threads_per_core"] == 2 and facts["memory_mb"] == 4096 and facts["ib"] == []


def test_hostlist_round_trip() -> None:
    names = [f"gpu-{i:03d}" for i in (1, 2, 3, 5, 64)] + ["login01", "node1", "node2"]
    expr = sc.hostlist_compress(names)
    assert expr == "gpu-[001-003,005,064],login01,node[1-2]"
    assert sorted(sc.hostlist_expand(expr)) == sorted(names)


def test_node_lines_fold_identical_hardware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = discover_h200(tmp_path, monkeypatch)
    small = json.loads(json.dumps(facts))
    small["gpus"] = small["gpus"][:4]
    hostvars = {f"gpu-{i:03d}": {"intellect_hw": facts} for i in range(1, 64)}
    # a node whose firmware keeps a few MiB more: same hardware, same line
    drifted = json.loads(json.dumps(facts))
    drifted["memory_mb"] -= 7
    hostvars["gpu-063"] = {"intellect_hw": drifted}
    hostvars["gpu-064"] = {"intellect_hw": small}
    lines = sc.slurm_node_lines(sorted(hostvars), hostvars, 65536)
    mem = (2113276612 // 1024 - 65536) // 1024 * 1024  # whole GiB, rounded down
    assert lines == [
        "NodeName=gpu-[001-063] CPUs=224 Boards=1 SocketsPerBoard=2 CoresPerSocket=56 ThreadsPerCore=2 "
        f"RealMemory={mem} Gres=gpu:h200:8 State=UNKNOWN",
        "NodeName=gpu-064 CPUs=224 Boards=1 SocketsPerBoard=2 CoresPerSocket=56 ThreadsPerCore=2 "
        f"RealMemory={mem} Gres=gpu:h200:4 State=UNKNOWN",
    ]
    assert (
        sc.real_memory(4096 + 1023, 0) == 4096
        and sc.real_memory(700, 0) == 700
        and sc.real_memory(5, 16) == 1
    )
    with pytest.raises(ValueError, match="no 'intellect_hw' facts"):
        sc.slurm_node_lines(["gpu-001", "gpu-999"], {"gpu-001": hostvars["gpu-001"], "gpu-999": {}})


def test_a_driver_that_is_not_loaded_is_named_from_nvidia_smis_stdout() -> None:
    """nvidia-smi says it on stdout with exit 9 (tests/fixtures/nvidia/): the error was empty before."""
    out = (ROOT / "tests" / "fixtures" / "nvidia" / "nvidia-smi-no-driver.txt").read_text()
    msg = hw.command_error(["nvidia-smi", "-q", "-x"], 9, out, "")
    assert msg.startswith("NVIDIA driver not loaded on this node (nvidia-smi: NVIDIA-SMI has failed")
    assert "reboot play" in msg and "\n" not in msg
    assert (
        hw.command_error(["lspci"], 1, "", "lspci: cannot open\n") == "lspci failed (1): lspci: cannot open"
    )
    assert hw.command_error(["x"], 2, "only on stdout\n", "") == "x failed (2): only on stdout"
