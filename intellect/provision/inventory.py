"""Inventory checks that run before any change on any node.

``load_inventory`` asks ``ansible-inventory --list`` (so group_vars and host_vars resolve exactly as Ansible
resolves them); ``validate_inventory`` returns every problem found, each as one line. The checks:
- a host in two groups that exclude each other (a login node cannot be a compute node...);
- a missing or too-short munge key when the inventory has Slurm nodes;
- a variable that no role declares in its ``meta/argument_specs.yml`` (a typo would silently use a default).
"""

from __future__ import annotations

import difflib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from intellect.errors import IntellectError, UsageError
from intellect.provision.paths import ansible_env, ansible_tool, playbooks_dir

EXCLUSIVE_GROUPS: tuple[tuple[str, str], ...] = (
    ("slurm_compute", "slurm_login"),
    ("slurm_compute", "nfs_server"),
    ("slurm_login", "nfs_server"),
)
# Connection and inventory variables that belong to Ansible itself, and vault-held secrets.
ALLOWED_PREFIXES = ("ansible_", "vault_")
MUNGE_KEY_MIN_BYTES = 32


@dataclass
class Inventory:
    """Hosts with their merged variables, and the transitive members of each group."""

    path: Path
    hostvars: dict[str, dict[str, Any]]
    groups: dict[str, set[str]] = field(default_factory=dict)

    def members(self, group: str) -> set[str]:
        return self.groups.get(group, set())


def load_inventory(path: Path | str) -> Inventory:
    """Resolve an inventory with ``ansible-inventory --list`` (one call for the whole cluster)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(
            f"inventory {path} does not exist", hint="intellect provision -i inventory/production"
        )
    argv = [ansible_tool("ansible-inventory"), "-i", str(path), "--list"]
    # no fact cache: cached facts would show up as host variables
    env = ansible_env({"ANSIBLE_CACHE_PLUGIN": "memory"})
    res = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=120)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise IntellectError(f"ansible-inventory could not read {path}: {last}")
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        raise IntellectError(f"ansible-inventory gave no JSON for {path}") from exc
    return Inventory(path, data.get("_meta", {}).get("hostvars", {}), _group_members(data))


def _group_members(data: dict[str, Any]) -> dict[str, set[str]]:
    memo: dict[str, set[str]] = {}

    def members(name: str, seen: frozenset[str]) -> set[str]:
        if name in memo:
            return memo[name]
        node = data.get(name, {})
        out = set(node.get("hosts", []))
        for child in node.get("children", []):
            if child not in seen:
                out |= members(child, seen | {child})
        memo[name] = out
        return out

    for name in data:
        if name != "_meta":
            members(name, frozenset({name}))
    return memo


def known_variables(roles_dir: Path | None = None) -> set[str]:
    """Every variable that a role declares in its argument specs (and so accepts from the inventory)."""
    roles_dir = roles_dir or playbooks_dir() / "roles"
    names: set[str] = set()
    for spec in sorted(roles_dir.glob("*/meta/argument_specs.yml")):
        doc = yaml.safe_load(spec.read_text()) or {}
        for entry in (doc.get("argument_specs") or {}).values():
            names.update((entry.get("options") or {}).keys())
    return names


def validate_inventory(inv: Inventory, known: set[str] | None = None) -> list[str]:
    """All problems with an inventory, one line each; an empty list means it may run."""
    known = known if known is not None else known_variables()
    problems: list[str] = []
    if not inv.hostvars and not inv.members("all"):
        problems.append(f"inventory {inv.path} has no hosts")
    problems += _exclusive_group_problems(inv)
    problems += _unknown_variable_problems(inv, known)
    problems += _munge_key_problems(inv)
    return problems


def check_inventory(inv: Inventory) -> None:
    """Raise one clear error (the first problem, and how many more) when the inventory may not run."""
    problems = validate_inventory(inv)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise IntellectError(
            f"inventory {inv.path}: {problems[0]}{more}; nothing was changed",
            hint=f"fix it, then check with: intellect provision -i {inv.path} --check",
        )


def _exclusive_group_problems(inv: Inventory) -> list[str]:
    out = []
    for a, b in EXCLUSIVE_GROUPS:
        for host in sorted(inv.members(a) & inv.members(b)):
            out.append(f"host {host} is in both '{a}' and '{b}', which exclude each other")
    return out


def _unknown_variable_problems(inv: Inventory, known: set[str]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for host, hv in sorted(inv.hostvars.items()):
        for name in hv:
            if name in known or name.startswith(ALLOWED_PREFIXES):
                continue
            seen.setdefault(name, []).append(host)
    out = []
    for name, hosts in sorted(seen.items()):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; no role declares it"
        where = hosts[0] if len(hosts) == 1 else f"{hosts[0]} and {len(hosts) - 1} other host(s)"
        out.append(f"unknown variable '{name}' (on {where}){hint}")
    return out


def _munge_key_problems(inv: Inventory) -> list[str]:
    slurm_hosts = sorted(inv.members("slurm"))
    if not slurm_hosts:
        return []
    values = {str(inv.hostvars.get(h, {}).get("munge_key_file", "")) for h in slurm_hosts}
    out = []
    for value in sorted(values):
        if "{{" in value:
            continue  # templated: the munge role's validate task checks it once Ansible has rendered it
        if not value:
            out.append("munge_key_file is not set for the Slurm hosts (the munge key is missing)")
            continue
        key = Path(value)
        if not key.is_absolute():
            key = inv.path.parent / key if inv.path.is_file() else inv.path / key
        if not key.is_file():
            out.append(f"the munge key {value} (munge_key_file) does not exist")
        elif key.stat().st_size < MUNGE_KEY_MIN_BYTES:
            out.append(f"the munge key {value} is shorter than {MUNGE_KEY_MIN_BYTES} bytes")
    return out
