#!/usr/bin/python
"""Ansible module: discover the hardware that Slurm needs to know about, as the fact ``intellect_hw``.

GPUs come from ``nvidia-smi`` when it exists, else from device files matching ``gpu_device_glob`` (the dev
cluster's stand-in GPUs). A GPU's device file is ``/dev/nvidia<minor>``, with the minor number the driver gave it
(``Device Minor`` in /proc/driver/nvidia/gpus/<PCI address>/information): nvidia-smi's index is an enumeration
order, not the minor number, and the two differ on some boards. InfiniBand HCAs come from /sys/class/infiniband,
memory from /proc/meminfo and the CPU topology from ``lscpu --parse``. The parsers are pure functions, tested on
recordings of an H200 node.
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: intellect_hw_facts
short_description: Discover GPUs, InfiniBand HCAs, memory and CPU topology for Slurm.
options:
  gpu_device_glob:
    description: Device files that stand for GPUs when nvidia-smi is absent.
    type: str
    default: /dev/nvidia[0-9]*
  gpu_model:
    description: GPU model to report for device-file GPUs (nvidia-smi reports its own).
    type: str
    default: unknown
  sysfs:
    description: Root of sysfs (tests point it at a recording).
    type: str
    default: /sys
  procfs:
    description: Root of procfs (tests point it at a recording).
    type: str
    default: /proc
"""

NVIDIA_SMI_QUERY = "index,name,uuid,memory.total,pci.bus_id"


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=index,name,uuid,memory.total,pci.bus_id --format=csv,noheader,nounits``.

    The device files are set later, from the driver's minor numbers (``attach_gpu_minors``)."""
    gpus = []
    for line in text.strip().splitlines():
        index, name, uuid, mem, bus = (f.strip() for f in line.split(","))
        gpus.append(
            {
                "index": int(index),
                "model": name,
                "uuid": uuid,
                "memory_mb": int(float(mem)),
                "pci_bus_id": bus,
            }
        )
    return sorted(gpus, key=lambda g: g["index"])


def parse_gpu_information(text: str) -> int:
    """The ``Device Minor`` of /proc/driver/nvidia/gpus/<PCI address>/information."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Device Minor":
            return int(value.strip())
    raise ValueError("no 'Device Minor' line")


def _pci_address(bus_id: str) -> str:
    """nvidia-smi's '00000000:18:00.0' -> sysfs' and procfs' '0000:18:00.0'."""
    return bus_id.lower()[-12:]


def attach_gpu_minors(gpus: list[dict[str, Any]], procfs: str) -> None:
    """Give each GPU its driver minor number and the device file ``/dev/nvidia<minor>``."""
    for gpu in gpus:
        path = os.path.join(procfs, "driver/nvidia/gpus", _pci_address(gpu["pci_bus_id"]), "information")
        try:
            minor = parse_gpu_information(_read(path))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"GPU {gpu['index']} ({gpu['pci_bus_id']}): no device minor number in {path} ({exc}); "
                "is the nvidia kernel module loaded?"
            ) from exc
        gpu["minor"] = minor
        gpu["device"] = f"/dev/nvidia{minor}"
    minors = [g["minor"] for g in gpus]
    if len(set(minors)) != len(minors):
        raise ValueError(f"two GPUs report the same device minor number: {minors}")


def parse_lscpu(text: str) -> dict[str, Any]:
    """Parse ``lscpu --parse=CPU,Core,Socket,Node``: counts plus the Slurm core ids of each NUMA node."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cpu, core, socket, node = (int(x) if x else 0 for x in line.split(","))
        rows.append((cpu, core, socket, node))
    sockets = sorted({r[2] for r in rows})
    cores = sorted({(r[2], r[1]) for r in rows})
    cores_per_socket = len(cores) // max(len(sockets), 1)
    threads = len(rows) // max(len(cores), 1)
    slurm_core_id = {key: i for i, key in enumerate(cores)}
    numa: dict[int, list[int]] = {}
    for _cpu, core, socket, node in rows:
        numa.setdefault(node, []).append(slurm_core_id[(socket, core)])
    return {
        "cpus": len(rows),
        "sockets": len(sockets),
        "cores_per_socket": cores_per_socket,
        "threads_per_core": threads,
        "numa_cores": {str(n): compress_ints(sorted(set(ids))) for n, ids in sorted(numa.items())},
    }


def compress_ints(nums: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(out)


def parse_meminfo(text: str) -> int:
    """MemTotal from /proc/meminfo, in MiB."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ValueError("no MemTotal in /proc/meminfo")


def parse_ib(ports: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """{'mlx5_0/1': {'rate': '400 Gb/sec (4X NDR)', 'state': '4: ACTIVE', 'link_layer': 'InfiniBand'}} -> list."""
    out = []
    for key, attrs in sorted(ports.items()):
        hca, _, port = key.partition("/")
        rate = attrs.get("rate", "0 Gb/sec").split()[0]
        out.append(
            {
                "hca": hca,
                "port": int(port),
                "rate_gbps": int(float(rate)),
                "state": attrs.get("state", "").split(":")[-1].strip(),
                "link_layer": attrs.get("link_layer", "").strip(),
            }
        )
    return out


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def read_ib_ports(sysfs: str) -> dict[str, dict[str, str]]:
    ports: dict[str, dict[str, str]] = {}
    for port_dir in sorted(glob.glob(os.path.join(sysfs, "class/infiniband/*/ports/*"))):
        hca = port_dir.split("/")[-3]
        attrs = {}
        for name in ("rate", "state", "link_layer"):
            path = os.path.join(port_dir, name)
            if os.path.exists(path):
                attrs[name] = _read(path).strip()
        ports[f"{hca}/{os.path.basename(port_dir)}"] = attrs
    return ports


def attach_gpu_cores(gpus: list[dict[str, Any]], cpu: dict[str, Any], sysfs: str) -> None:
    """Give each GPU the Slurm core ids of its NUMA node (for gres.conf ``Cores=``)."""
    for gpu in gpus:
        bus = gpu.get("pci_bus_id", "")
        if not bus:
            continue
        path = os.path.join(sysfs, "bus/pci/devices", _pci_address(bus), "numa_node")
        if os.path.exists(path):
            node = _read(path).strip()
            gpu["numa_node"] = int(node)
            gpu["cores"] = cpu["numa_cores"].get(node, "")


def discover(params: dict[str, Any], run: Any) -> dict[str, Any]:
    sysfs = params["sysfs"]
    cpu = parse_lscpu(run(["lscpu", "--parse=CPU,Core,Socket,Node"]))
    gpus: list[dict[str, Any]] = []
    if shutil.which("nvidia-smi"):
        gpus = parse_nvidia_smi(
            run(["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"])
        )
        attach_gpu_minors(gpus, params["procfs"])
        attach_gpu_cores(gpus, cpu, sysfs)
    else:
        for i, dev in enumerate(sorted(glob.glob(params["gpu_device_glob"]), key=_natural)):
            gpus.append({"index": i, "model": params["gpu_model"], "device": dev})
    return {
        "cpu": cpu,
        "memory_mb": parse_meminfo(_read(os.path.join(params["procfs"], "meminfo"))),
        "gpus": gpus,
        "ib": parse_ib(read_ib_ports(sysfs)),
    }


def _natural(path: str) -> tuple[str, int]:
    digits = "".join(ch for ch in os.path.basename(path) if ch.isdigit())
    return (path.rstrip("0123456789"), int(digits or 0))


NO_DRIVER = "couldn't communicate with the NVIDIA driver"


def command_error(argv: list[str], rc: int, out: str, err: str) -> str:
    """One line for a failed command: its stderr, else its stdout (nvidia-smi prints its errors on stdout, exit 9);
    a driver that is not loaded is named as such, with what to do."""
    detail = " ".join((err.strip() or out.strip()).split())[:300]
    if NO_DRIVER in out + err:
        return (f"NVIDIA driver not loaded on this node ({argv[0]}: {detail}): a node marked "
                "/var/lib/intellect/reboot-required needs the reboot play; else check `dkms status` and "
                "`dmesg | grep NVRM`")  # fmt: skip
    return f"{argv[0]} failed ({rc}): {detail}"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "gpu_device_glob": {"type": "str", "default": "/dev/nvidia[0-9]*"},
            "gpu_model": {"type": "str", "default": "unknown"},
            "sysfs": {"type": "str", "default": "/sys"},
            "procfs": {"type": "str", "default": "/proc"},
        },
        supports_check_mode=True,
    )

    def run(argv: list[str]) -> str:
        rc, out, err = module.run_command(argv)
        if rc != 0:
            module.fail_json(msg=command_error(argv, rc, str(out), str(err)))
        return str(out)

    try:
        hw = discover(module.params, run)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"hardware discovery failed: {exc}")
    module.exit_json(changed=False, ansible_facts={"intellect_hw": hw})


if __name__ == "__main__":
    main()
