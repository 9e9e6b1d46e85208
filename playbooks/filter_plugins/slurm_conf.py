"""Filters that turn the inventory's node types (and, where a type leaves a field out, discovered hardware) into
Slurm configuration lines, and that compare what each node shows with its node type.

The logic lives here, in Python, rather than in long Jinja: hosts with identical hardware are folded into one
``NodeName=`` line with a compressed hostlist, so slurm.conf stays O(distinct hardware), not O(nodes).

**Node types.** A compute host names its type with ``intellect_node_type``; ``slurm_node_types`` maps each type to
the hardware it must have (``NODE_TYPE_FIELDS``). slurm.conf and gres.conf are rendered from the declared fields,
so a host that is unreachable, or left out by ``--limit`` (no ``intellect_hw`` facts), is still declared, and a host
whose hardware disagrees does not change the cluster's configuration: it is reported by name and drained
(``slurm_drain_plan``). Only a field the type leaves out comes from the host's discovered facts (the dev cluster's
nodes, whose CPUs and memory are the host machine's). The GPU counts and InfiniBand ports of a type that
intellect.health.config also defines must agree with it (``slurm_node_type_errors``).
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
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
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


# field: (accepted types, meaning). A type may leave any field out: it is then read from discovery, never checked.
NODE_TYPE_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "gpus": ((int,), "GPUs (Gres=gpu:<type>:<gpus>); 0: none"),
    "gpu_model": ((str,), "the model nvidia-smi reports, e.g. 'NVIDIA H200' (GRES type h200)"),
    "gpu_cores": (
        (list,),
        "per GPU, by device minor number: the Slurm core ids of its NUMA node (gres.conf Cores=)",
    ),
    "gpu_device_prefix": ((str,), "device file of GPU minor N is <prefix>N (default /dev/nvidia)"),
    "sockets": ((int,), "CPU sockets"),
    "cores_per_socket": ((int,), "physical cores per socket"),
    "threads_per_core": ((int,), "hardware threads per core"),
    "memory_mb": (
        (int,),
        "the least MemTotal (MiB) a node of this type shows; RealMemory = this - the reserve",
    ),
    "ib_ports": (
        (int,),
        "InfiniBand ports (link layer InfiniBand) that must be ACTIVE at ib_rate_gbps or faster",
    ),
    "ib_rate_gbps": ((int, float), "the rate of those ports, Gb/s"),
    "description": ((str,), "free text"),
}
CPU_FIELDS = ("sockets", "cores_per_socket", "threads_per_core")
UNDECLARED_TYPE = (
    "generic"  # intellect.health.config's type of "no expectations": needs no slurm_node_types entry
)
DRAIN_MARK = "provision: "  # our drains' text starts with it; only those are resumed by provisioning
MAX_REASON_TEXT = 200  # as intellect.slurm.ops.MAX_REASON and the Epilog's MAX_TEXT


def _node_type(
    host: str, hostvars: Any, node_types: dict | None, type_var: str
) -> tuple[str, dict[str, Any]]:
    name = str(hostvars[host].get(type_var) or "")
    return name, dict((node_types or {}).get(name) or {})


def _gpu_order(gpu: dict[str, Any]) -> tuple[int, str]:
    return (int(gpu.get("minor", gpu.get("index", 0))), str(gpu.get("device", "")))


def _declared_gpus(nt: dict[str, Any]) -> list[tuple[str, str, str]]:
    n = int(nt["gpus"])
    prefix = nt.get("gpu_device_prefix") or "/dev/nvidia"
    cores = [str(c) for c in nt.get("gpu_cores") or [""] * n]
    gtype = gpu_type(str(nt.get("gpu_model", ""))) if n else ""
    return [(gtype, f"{prefix}{i}", cores[i]) for i in range(n)]


def _declared_or_found(
    nt: dict[str, Any], found: dict[str, Any], keys: tuple[str, ...], missing: list[str]
) -> dict:
    out = {}
    for key in keys:
        if key in nt or key in found:
            out[key] = int(nt[key] if key in nt else found[key])
        else:
            missing.append(key)
    return out


def node_hardware(
    host: str,
    hostvars: Any,
    node_types: dict | None = None,
    fact: str = "intellect_hw",
    type_var: str = "intellect_node_type",
    gpus_only: bool = False,
) -> dict[str, Any]:
    """What slurm.conf and gres.conf declare for ``host``: its node type's fields, and discovered facts only for
    the fields the type leaves out. GPUs are (GRES type, device file, cores) in device minor order."""
    name, nt = _node_type(host, hostvars, node_types, type_var)
    hw = hostvars[host].get(fact) or {}
    missing: list[str] = []
    out: dict[str, Any] = {}
    if not gpus_only:
        out.update(_declared_or_found(nt, hw.get("cpu") or {}, CPU_FIELDS, missing))
        out.update(_declared_or_found(nt, hw, ("memory_mb",), missing))
    if "gpus" in nt:
        out["gpus"] = _declared_gpus(nt)
    elif hw:
        gpus = sorted(hw.get("gpus", []), key=_gpu_order)
        out["gpus"] = [(gpu_type(g["model"]), g["device"], str(g.get("cores", ""))) for g in gpus]
    else:
        missing.append("gpus")
    if missing:
        where = (
            f"its node type {name!r} does not declare {', '.join(missing)}: declare them in slurm_node_types.{name}"
            if name
            else "it names no node type: set intellect_node_type and declare the type in slurm_node_types"
        )
        raise ValueError(
            f"host {host} has no '{fact}' facts and {where}, or run the intellect_hw_facts module on it "
            "(provision it without --limit)"
        )
    return out


def _node_key(hw: dict[str, Any], mem_reserve_mb: int) -> tuple[Any, ...]:
    gpus = hw["gpus"]
    return (
        hw["sockets"],
        hw["cores_per_socket"],
        hw["threads_per_core"],
        real_memory(hw["memory_mb"], mem_reserve_mb),
        len(gpus),
        gpus[0][0] if gpus else "",
    )


def slurm_node_lines(
    hosts: list[str],
    hostvars: Any,
    mem_reserve_mb: int = 0,
    node_types: dict | None = None,
    fact: str = "intellect_hw",
    type_var: str = "intellect_node_type",
) -> list[str]:
    """One ``NodeName=`` line per distinct hardware shape, with the hosts folded into a hostlist."""
    grouped: dict[tuple[Any, ...], list[str]] = {}
    for host in hosts:
        key = _node_key(node_hardware(host, hostvars, node_types, fact, type_var), mem_reserve_mb)
        grouped.setdefault(key, []).append(host)
    lines = []
    for key, names in sorted(grouped.items(), key=lambda kv: kv[1]):
        sockets, cores, threads, mem, ngpu, gtype = key
        line = (
            f"NodeName={hostlist_compress(names)} CPUs={sockets * cores * threads} Boards=1 "
            f"SocketsPerBoard={sockets} CoresPerSocket={cores} ThreadsPerCore={threads} RealMemory={mem}"
        )
        if ngpu:
            line += f" Gres=gpu:{gtype}:{ngpu}"
        lines.append(line + " State=UNKNOWN")
    return lines


def slurm_gres_lines(
    hosts: list[str],
    hostvars: Any,
    node_types: dict | None = None,
    fact: str = "intellect_hw",
    type_var: str = "intellect_node_type",
) -> list[str]:
    """gres.conf lines: one per (hardware shape, CPU affinity) with explicit device files, AutoDetect off."""
    grouped: dict[tuple[Any, ...], list[str]] = {}
    for host in hosts:
        gpus = node_hardware(host, hostvars, node_types, fact, type_var, gpus_only=True)["gpus"]
        if gpus:
            grouped.setdefault(tuple(gpus), []).append(host)
    lines = []
    for shape, names in sorted(grouped.items(), key=lambda kv: kv[1]):
        by_cores: dict[tuple[str, str], list[str]] = {}
        for gtype, device, cores in shape:
            by_cores.setdefault((gtype, cores), []).append(device)
        for (gtype, cores), devices in by_cores.items():
            line = (
                f"NodeName={hostlist_compress(names)} Name=gpu Type={gtype} File={hostlist_compress(devices)}"
            )
            lines.append(line + (f" Cores={cores}" if cores else ""))
    return lines


def _expect(what: str, found: Any) -> str:
    return f"expects {what}, found {found}"


def _gpu_problems(nt: dict[str, Any], gpus: list[dict[str, Any]]) -> list[str]:
    n = int(nt["gpus"])
    if len(gpus) != n:
        return [_expect(f"{n} GPUs", len(gpus))]
    out = []
    declared = _declared_gpus(nt)
    models = sorted({g["model"] for g in gpus if gpu_type(g["model"]) != declared[0][0]}) if n else []
    if models:
        out.append(_expect(f"{nt['gpu_model']} GPUs", ", ".join(models)))
    found = {g["device"]: str(g.get("cores", "")) for g in gpus}
    want = [d[1] for d in declared]
    if sorted(found) != sorted(want):
        out.append(_expect(f"GPU device files {hostlist_compress(want)}", hostlist_compress(list(found))))
    elif nt.get("gpu_cores"):
        wrong = [
            f"{dev} on cores {found[dev]} (not {cores})" for _, dev, cores in declared if found[dev] != cores
        ]
        if wrong:
            out.append(f"expects each GPU on its node type's cores, found {', '.join(wrong[:2])}")
    return out


def _ib_problems(nt: dict[str, Any], ports: list[dict[str, Any]]) -> list[str]:
    want, rate = int(nt["ib_ports"]), float(nt.get("ib_rate_gbps") or 0)
    ib = [p for p in ports if str(p.get("link_layer", "")).lower() == "infiniband"]
    good = [p for p in ib if p.get("state") == "ACTIVE" and float(p.get("rate_gbps", 0)) >= rate]
    if len(good) >= want:
        return []
    bad = [
        f"{p['hca']}/{p['port']} {p.get('state', '?')} {p.get('rate_gbps', '?')} Gb/s"
        for p in ib
        if p not in good
    ]
    detail = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else ""
    return [_expect(f"{want} InfiniBand ports ACTIVE at {rate:g} Gb/s", f"{len(good)}{detail}")]


def node_type_problems(name: str, nt: dict[str, Any], hw: dict[str, Any]) -> str:
    """'' when the discovered ``hw`` shows what node type ``nt`` declares; else one line naming each difference,
    e.g. "node type h200 expects 8 GPUs, found 7". A field the type leaves out is not checked."""
    out: list[str] = []
    if "gpus" in nt:
        out += _gpu_problems(nt, hw.get("gpus", []))
    cpu = hw.get("cpu") or {}
    if any(k in nt and int(nt[k]) != int(cpu.get(k, -1)) for k in CPU_FIELDS):
        shape = " x ".join(str(nt.get(k, cpu.get(k, "?"))) for k in CPU_FIELDS)
        out.append(
            _expect(f"{shape} (sockets x cores x threads)", " x ".join(str(cpu.get(k)) for k in CPU_FIELDS))
        )
    if "memory_mb" in nt and int(hw.get("memory_mb", 0)) < int(nt["memory_mb"]):
        out.append(_expect(f"at least {int(nt['memory_mb'])} MiB of memory", f"{hw.get('memory_mb')} MiB"))
    if "ib_ports" in nt:
        out += _ib_problems(nt, hw.get("ib", []))
    if not out:
        return ""
    text = f"node type {name} " + "; ".join(out)
    limit = MAX_REASON_TEXT - len(DRAIN_MARK)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def slurm_node_type_problems(
    hosts: list[str],
    hostvars: Any,
    node_types: dict | None,
    fact: str = "intellect_hw",
    type_var: str = "intellect_node_type",
) -> dict[str, str]:
    """{host: what disagrees} for the hosts with discovered facts whose node type declares something."""
    out = {}
    for host in hosts:
        name, nt = _node_type(host, hostvars, node_types, type_var)
        hw = hostvars[host].get(fact)
        if nt and hw:
            text = node_type_problems(name, nt, hw)
            if text:
                out[host] = text
    return out


def slurm_checked_hosts(
    hosts: list[str],
    hostvars: Any,
    node_types: dict | None,
    fact: str = "intellect_hw",
    type_var: str = "intellect_node_type",
) -> list[str]:
    """The hosts whose facts were compared with their declared node type (the others were not judged)."""
    return [h for h in hosts if _node_type(h, hostvars, node_types, type_var)[1] and hostvars[h].get(fact)]


def slurm_drain_plan(
    sinfo: str, problems: dict[str, str], checked: list[str], slurm_user: str = "slurm"
) -> dict[str, Any]:
    """What provisioning does about its node-type findings, from ``sinfo --noheader --Node
    --format=%N|%T|%u|%E`` of the checked hosts: ``drain`` {host: text} (text without our prefix, user and time),
    ``resume`` [hosts this provisioning drained that now agree], ``kept`` {host: reason} (a person's drain stays).

    A host already drained with the same finding is left as it is (idempotent). Slurm's own reason (set by
    SlurmUser, e.g. "gres/gpu count reported lower than configured") is replaced by the finding, which names the
    node type; a reason a person set (any other user, without the ``[intellect]`` prefix) is never replaced."""
    rows: dict[str, tuple[str, str, str]] = {}
    for line in sinfo.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4:
            rows.setdefault(parts[0].strip(), (parts[1].lower(), parts[2].strip(), parts[3].strip()))
    plan: dict[str, Any] = {"drain": {}, "resume": [], "kept": {}}
    for host in checked:
        state, user, reason = rows.get(host, ("", "", ""))
        drained = "drain" in state or "drng" in state
        ours = reason.startswith("[intellect]")
        text = problems.get(host)
        if text is None:
            if drained and ours and f": {DRAIN_MARK}node type " in reason:
                plan["resume"].append(host)
        elif drained and ours and reason.endswith(f": {DRAIN_MARK}{text}"):
            continue
        elif drained and not ours and user != slurm_user and reason not in ("", "none"):
            plan["kept"][host] = reason
        else:
            plan["drain"][host] = DRAIN_MARK + text
    return plan


def slurm_node_type_errors(
    node_types: dict | None,
    hosts: list[str],
    hostvars: Any,
    type_var: str = "intellect_node_type",
    health_types: dict | None = None,
) -> list[str]:
    """Every problem with ``slurm_node_types`` and the compute hosts' ``intellect_node_type``, one line each."""
    errors: list[str] = []
    for name, nt in sorted((node_types or {}).items()):
        errors += _type_field_errors(str(name), nt)
    declared = set(node_types or {}) | {UNDECLARED_TYPE}
    unknown: dict[str, list[str]] = {}
    for host in hosts:
        name = hostvars[host].get(type_var)
        if name and name not in declared:
            unknown.setdefault(str(name), []).append(host)
    for name, names in sorted(unknown.items()):
        errors.append(
            f"{type_var} {name!r} of {hostlist_compress(names)} is not declared in slurm_node_types "
            f"(declared: {', '.join(sorted(declared))})"
        )
    health = _health_node_types() if health_types is None else health_types
    errors += _health_conflicts(node_types or {}, health)
    return errors


def _type_field_errors(name: str, nt: Any) -> list[str]:
    if not isinstance(nt, dict):
        return [f"slurm_node_types.{name} must be a mapping of the fields {', '.join(NODE_TYPE_FIELDS)}"]
    out = []
    for key, value in nt.items():
        if key not in NODE_TYPE_FIELDS:
            out.append(
                f"slurm_node_types.{name}.{key} is not a node type field ({', '.join(NODE_TYPE_FIELDS)})"
            )
        elif not isinstance(value, NODE_TYPE_FIELDS[key][0]) or isinstance(value, bool):
            out.append(f"slurm_node_types.{name}.{key}: {value!r} is not {NODE_TYPE_FIELDS[key][1]!r}")
    if out:
        return out
    gpus = nt.get("gpus")
    if gpus is not None and gpus < 0:
        out.append(f"slurm_node_types.{name}.gpus must be >= 0")
    if gpus and not nt.get("gpu_model"):
        out.append(
            f"slurm_node_types.{name} declares {gpus} GPUs but no gpu_model (as nvidia-smi reports it)"
        )
    if "gpu_cores" in nt and len(nt["gpu_cores"]) != (gpus or 0):
        out.append(f"slurm_node_types.{name}.gpu_cores needs one entry per GPU ({gpus or 0}), in minor order")
    if ("gpu_model" in nt or "gpu_cores" in nt) and gpus is None:
        out.append(f"slurm_node_types.{name} gives gpu_model or gpu_cores without gpus")
    if "ib_rate_gbps" in nt and "ib_ports" not in nt:
        out.append(f"slurm_node_types.{name}.ib_rate_gbps needs ib_ports")
    return out


def _health_node_types() -> dict[str, Any]:
    """intellect.health.config's built-in node types, where intellect is importable (it runs this playbook)."""
    try:
        from intellect.health.config import NODE_TYPES
    except ImportError:
        return {}
    return {name: vars(nt) for name, nt in NODE_TYPES.items()}


def _health_conflicts(node_types: dict[str, Any], health: dict[str, Any]) -> list[str]:
    out = []
    for name, nt in sorted(node_types.items()):
        ht = health.get(name)
        if not isinstance(nt, dict) or ht is None:
            continue
        for key in ("gpus", "ib_ports", "ib_rate_gbps"):
            theirs = ht.get(key) if isinstance(ht, dict) else getattr(ht, key, None)
            if key in nt and theirs is not None and float(nt[key]) != float(theirs):
                out.append(
                    f"slurm_node_types.{name}.{key} is {nt[key]} but intellect.health.config NODE_TYPES[{name!r}] "
                    f"says {theirs:g}: one node type, one meaning; change one, or give the site's type its own name"
                )
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "hostlist_compress": hostlist_compress,
            "hostlist_expand": hostlist_expand,
            "gpu_type": gpu_type,
            "slurm_node_lines": slurm_node_lines,
            "slurm_gres_lines": slurm_gres_lines,
            "slurm_node_type_problems": slurm_node_type_problems,
            "slurm_checked_hosts": slurm_checked_hosts,
            "slurm_drain_plan": slurm_drain_plan,
            "slurm_node_type_errors": slurm_node_type_errors,
        }
