"""Filters of the ib role: IPoIB addresses from an address plan, and Slurm's topology.conf from the fabric.

The fabric is read from the inventory (each node's ``ib_leaf_switch``) or from the text ``ibnetdiscover`` prints
(infiniband-diags, the default output format: one block per switch and per channel adapter, each port line naming
the node at its other end). Both become one structure for topology/tree: leaf-level switches with their nodes,
and a root over them. On a rail-optimized fabric a node reaches several leaves (one per rail); nodes that reach the
same set of leaves form one leaf-level switch there, and a node with a rail down joins the unit whose leaves it
still reaches. The functions are pure and raise ValueError; the FilterModule turns that into an Ansible error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

DOCUMENTATION = """
name: ib_fabric
short_description: IPoIB addresses and Slurm topology.conf switches for the ib role
"""

_NODE = re.compile(r'^(Switch|Ca|Rt)\s+\d+\s+"([^"]+)"\s*#\s*"([^"]*)"')
_PORT = re.compile(r'^\[\d+\](?:\([0-9a-fA-F]+\))?\s+"([^"]+)"\[\d+\](?:\([0-9a-fA-F]+\))?\s*(?:#\s*(.*))?$')
_QUOTED = re.compile(r'"([^"]*)"')
_MANAGED_SWITCH = re.compile(r"^MF0;([^:]+):")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def ipoib_address(network: str, host_number: int, offset: int = 0) -> str:
    """('10.1.0.0/16', 17) -> '10.1.0.17/16': the node's address in an IPoIB network of the address plan."""
    net = ipaddress.ip_network(network, strict=True)
    index = int(offset) + int(host_number)
    if index < 1 or index >= net.num_addresses - 1:
        raise ValueError(
            f"host number {host_number} + offset {offset} falls outside the hosts of {network}; "
            "widen the network or set ib_ipoib_host_number / offset for this host"
        )
    return f"{net[index]}/{net.prefixlen}"


def parse_ibnetdiscover(text: str) -> dict[str, list[str]]:
    """ibnetdiscover's output -> {first word of each CA's node description: its switches' names}.

    Linux sets an HCA's node description to "<hostname> <hca>" ("gpu-001 mlx5_0"), so the first word is the host.
    A managed switch reads "MF0;<switch name>:<model>/U1"; a node-name-map gives plain names; any other switch is
    named by its GUID ("S-fc6a1c0300e5d6e0").
    """
    kinds: dict[str, str] = {}
    descs: dict[str, str] = {}
    links: set[tuple[str, str]] = set()
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        node = _NODE.match(line)
        if node:
            kind, current, desc = node.groups()
            kinds[current], descs[current] = kind, desc
            continue
        port = _PORT.match(line)
        if port and current:
            remote, comment = port.group(1), port.group(2) or ""
            links.add((current, remote) if current < remote else (remote, current))
            quoted = _QUOTED.search(comment)
            if quoted and remote not in descs:
                descs[remote] = quoted.group(1)
    names = _switch_names({n: d for n, d in descs.items() if n.startswith("S-") or kinds.get(n) == "Switch"})
    hosts: dict[str, set[str]] = {}
    for a, b in links:
        for ca, sw in ((a, b), (b, a)):
            if sw in names and ca not in names and _is_host(descs.get(ca, "")):
                hosts.setdefault(descs[ca].split()[0], set()).add(names[sw])
    return {host: sorted(switches) for host, switches in sorted(hosts.items())}


def _is_host(desc: str) -> bool:
    """A host's HCA, not a switch's SHARP aggregation node ("Mellanox Technologies Aggregation Node")."""
    return bool(desc.split()) and "Aggregation Node" not in desc


def _switch_names(descs: Mapping[str, str]) -> dict[str, str]:
    """Switch id -> its name: the managed switch's hostname, a plain mapped name, else the id (GUID)."""
    wanted: dict[str, str] = {}
    for node_id, desc in descs.items():
        managed = _MANAGED_SWITCH.match(desc)
        name = managed.group(1) if managed else desc
        wanted[node_id] = name if _SAFE_NAME.match(name) else node_id
    counts: dict[str, int] = {}
    for name in wanted.values():
        counts[name] = counts.get(name, 0) + 1
    return {node_id: (name if counts[name] == 1 else node_id) for node_id, name in wanted.items()}


def build_topology(
    node_leaves: Mapping[str, Sequence[str]],
    nodes: Sequence[str],
    root: str = "fabric",
    unplaced: str = "unplaced",
    group_prefix: str = "su",
) -> dict[str, Any]:
    """Nodes and the leaf switches each reaches -> {'switches': [...], 'unplaced': [nodes on no leaf]}.

    Nodes on exactly one leaf are listed under that leaf; nodes that reach the same several leaves (a scalable unit
    of a rail-optimized fabric) under one switch named ``group_prefix``N. Nodes found on no leaf go under
    ``unplaced``, so that they stay usable. With more than one leaf-level switch a ``root`` holds them all.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    missing: list[str] = []
    for node in sorted(set(nodes)):
        leaves = tuple(sorted(set(node_leaves.get(node, ()))))
        if leaves:
            groups.setdefault(leaves, []).append(node)
        else:
            missing.append(node)
    _merge_partial_sets(groups)
    taken = {leaf for key in groups for leaf in key} | {root, unplaced}
    names: dict[tuple[str, ...], str] = {key: key[0] for key in groups if len(key) == 1}
    number = 0
    for key in sorted(k for k in groups if len(k) > 1):
        number += 1
        while f"{group_prefix}{number}" in taken:
            number += 1
        names[key] = f"{group_prefix}{number}"
    switches: list[dict[str, Any]] = [
        {"name": names[key], "nodes": members, "switches": [], "leaves": list(key)}
        for key, members in sorted(groups.items(), key=lambda kv: names[kv[0]])
    ]
    if missing:
        switches.append({"name": unplaced, "nodes": missing, "switches": [], "leaves": []})
    if len(switches) > 1:
        switches.append({"name": root, "nodes": [], "switches": [s["name"] for s in switches], "leaves": []})
    return {"switches": switches, "unplaced": missing}


def _merge_partial_sets(groups: dict[tuple[str, ...], list[str]]) -> None:
    """A node with a rail down reaches a subset of its unit's leaves: put it with the unit (the largest superset)."""
    maximal = [k for k in groups if not any(set(k) < set(other) for other in groups)]
    for key in sorted(k for k in groups if k not in maximal):
        supersets = sorted((m for m in maximal if set(key) < set(m)), key=lambda m: (-len(groups[m]), m))
        groups[supersets[0]].extend(groups.pop(key))
        groups[supersets[0]].sort()


def topology_from_ibnetdiscover(text: str, nodes: Sequence[str], **names: str) -> dict[str, Any]:
    """The Slurm switches of ``nodes`` from ibnetdiscover's output; a node matches by name or short name."""
    found = parse_ibnetdiscover(text)
    short = {host.split(".")[0]: leaves for host, leaves in found.items()}
    return build_topology({n: found.get(n) or short.get(n.split(".")[0], []) for n in nodes}, nodes, **names)


def topology_from_inventory(
    nodes: Sequence[str], hostvars: Mapping[str, Any], var: str = "ib_leaf_switch", **names: str
) -> dict[str, Any]:
    """The Slurm switches of ``nodes`` from each node's ``var``: a leaf switch, or the leaves of its rails."""
    leaves: dict[str, list[str]] = {}
    for node in nodes:
        value = hostvars[node].get(var) if node in hostvars else None
        leaves[node] = [value] if isinstance(value, str) and value else list(value or [])
    return build_topology(leaves, nodes, **names)


def _ansible(func: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from ansible.errors import AnsibleFilterError

        try:
            return func(*args, **kwargs)
        except ValueError as exc:
            raise AnsibleFilterError(f"ib: {exc}") from exc

    wrapped.__name__ = func.__name__
    wrapped.__doc__ = func.__doc__
    return wrapped


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "ib_ipoib_address": _ansible(ipoib_address),
            "ib_topology_from_ibnetdiscover": _ansible(topology_from_ibnetdiscover),
            "ib_topology_from_inventory": _ansible(topology_from_inventory),
        }
