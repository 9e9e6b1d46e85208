"""Filters that turn inventory hostnames and discovered hardware into Slurm configuration lines.

The logic lives here, in Python, rather than in long Jinja: hosts with identical hardware are folded into one
``NodeName=`` line with a compressed hostlist, so slurm.conf stays O(distinct hardware), not O(nodes).
"""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = """
name: slurm_conf
short_description: hostlist and Slurm NodeName/Gres helpers for the intellect playbooks
"""

_SPLIT = re.compile(r"^(.*?)(\d+)$")


def hostlist_compress(names: list[str]) -> str:
    """['gpu-001', 'gpu-002', 'gpu-004', 'login1'] -> 'gpu-[001-002,004],login1' (Slurm hostlist syntax)."""
    groups: dict[tuple[str, int], list[int]] = {}
    plain: list[str] = []
    for name in sorted(set(names)):
        m = _SPLIT.match(name)
        if m is None:
            plain.append(name)
            continue
        prefix, digits = m.groups()
        width = len(digits) if digits.startswith("0") else 0
        groups.setdefault((prefix, width), []).append(int(digits))
    parts: list[str] = []
    for (prefix, width), nums in sorted(groups.items()):
        nums.sort()
        ranges: list[str] = []
        start = prev = nums[0]
        for n in [*nums[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            a, b = str(start).zfill(width), str(prev).zfill(width)
            ranges.append(a if start == prev else f"{a}-{b}")
            if n is not None:
                start = prev = n
        if len(nums) == 1:
            parts.append(f"{prefix}{ranges[0]}")
        else:
            parts.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(parts + plain)


def hostlist_expand(expr: str) -> list[str]:
    """'gpu-[001-003],login1' -> ['gpu-001', 'gpu-002', 'gpu-003', 'login1']."""
    out: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", expr):
        m = re.match(r"^(.*)\[([^\]]*)\](.*)$", item)
        if m is None:
            out.append(item)
            continue
        prefix, body, suffix = m.groups()
        for rng in body.split(","):
            lo, _, hi = rng.partition("-")
            width = len(lo)
            for n in range(int(lo), int(hi or lo) + 1):
                out.append(f"{prefix}{str(n).zfill(width)}{suffix}")
    return out


def gpu_type(model: str) -> str:
    """'NVIDIA H200' -> 'h200'; 'NVIDIA H100 80GB HBM3' -> 'h100'. The Slurm GRES type of a GPU model."""
    words = [w for w in model.lower().replace("nvidia", " ").split() if w]
    return re.sub(r"[^a-z0-9_]", "_", words[0]) if words else "gpu"


MEM_ROUND_MB = 1024


def real_memory(memory_mb: int, mem_reserve_mb: int) -> int:
    """RealMemory: discovered MemTotal minus the reserve, rounded down to whole GiB. MemTotal drifts by a few
    MiB between identical nodes (firmware, kernel updates) and, in VMs with hot-plugged memory, over time: the
    rounding keeps such nodes on one NodeName line and slurm.conf unchanged, and never configures more memory
    than a node reports (slurmd would register it INVALID)."""
    mem = max(memory_mb - mem_reserve_mb, 1)
    return mem - mem % MEM_ROUND_MB if mem >= MEM_ROUND_MB else mem


def _node_key(hw: dict[str, Any], mem_reserve_mb: int) -> tuple[Any, ...]:
    cpu = hw["cpu"]
    gpus = hw.get("gpus", [])
    return (
        cpu["sockets"],
        cpu["cores_per_socket"],
        cpu["threads_per_core"],
        real_memory(int(hw["memory_mb"]), mem_reserve_mb),
        len(gpus),
        gpu_type(gpus[0]["model"]) if gpus else "",
    )


def _group_hosts(hosts: list[str], hostvars: dict[str, Any], fact: str, mem_reserve_mb: int) -> dict:
    grouped: dict[tuple[Any, ...], list[str]] = {}
    for host in hosts:
        hw = hostvars[host].get(fact)
        if not hw:
            raise ValueError(f"host {host} has no '{fact}' facts: run the intellect_hw_facts module first")
        grouped.setdefault(_node_key(hw, mem_reserve_mb), []).append(host)
    return grouped


def slurm_node_lines(
    hosts: list[str], hostvars: dict[str, Any], mem_reserve_mb: int = 0, fact: str = "intellect_hw"
) -> list[str]:
    """One ``NodeName=`` line per distinct hardware shape, with the hosts folded into a hostlist."""
    lines = []
    for key, names in sorted(
        _group_hosts(hosts, hostvars, fact, mem_reserve_mb).items(), key=lambda kv: kv[1]
    ):
        sockets, cores, threads, mem, ngpu, gtype = key
        line = (
            f"NodeName={hostlist_compress(names)} CPUs={sockets * cores * threads} Boards=1 "
            f"SocketsPerBoard={sockets} CoresPerSocket={cores} ThreadsPerCore={threads} RealMemory={mem}"
        )
        if ngpu:
            line += f" Gres=gpu:{gtype}:{ngpu}"
        lines.append(line + " State=UNKNOWN")
    return lines


def _gres_files(gpus: list[dict[str, Any]]) -> str:
    paths = [g["device"] for g in gpus]
    m = [_SPLIT.match(p) for p in paths]
    if all(m) and len({x.group(1) for x in m if x}) == 1 and len(paths) > 1:
        prefix = m[0].group(1) if m[0] else ""
        nums = [int(x.group(2)) for x in m if x]
        if nums == list(range(nums[0], nums[0] + len(nums))):
            return f"{prefix}[{nums[0]}-{nums[-1]}]"
    return ",".join(paths)


def slurm_gres_lines(hosts: list[str], hostvars: dict[str, Any], fact: str = "intellect_hw") -> list[str]:
    """gres.conf lines: one per (hardware shape, CPU affinity) with explicit device files, AutoDetect off."""
    grouped: dict[tuple[Any, ...], list[str]] = {}
    for host in hosts:
        hw = hostvars[host].get(fact) or {}
        gpus = hw.get("gpus", [])
        if not gpus:
            continue
        shape = tuple((gpu_type(g["model"]), g["device"], g.get("cores", "")) for g in gpus)
        grouped.setdefault(shape, []).append(host)
    lines = []
    for shape, names in sorted(grouped.items(), key=lambda kv: kv[1]):
        by_cores: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for gtype, device, cores in shape:
            by_cores.setdefault((gtype, cores), []).append({"device": device})
        for (gtype, cores), gpus in by_cores.items():
            line = f"NodeName={hostlist_compress(names)} Name=gpu Type={gtype} File={_gres_files(gpus)}"
            lines.append(line + (f" Cores={cores}" if cores else ""))
    return lines


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "hostlist_compress": hostlist_compress,
            "hostlist_expand": hostlist_expand,
            "gpu_type": gpu_type,
            "slurm_node_lines": slurm_node_lines,
            "slurm_gres_lines": slurm_gres_lines,
        }
