"""Where the playbooks, roles and ansible.cfg are, and the Ansible command-line tools next to our Python."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from intellect.errors import IntellectError


def repo_root() -> Path:
    """The folder that holds playbooks/ and ansible.cfg (INTELLECT_PLAYBOOKS_ROOT overrides it)."""
    override = os.environ.get("INTELLECT_PLAYBOOKS_ROOT")
    return Path(override) if override else Path(__file__).resolve().parents[2]


def playbooks_dir() -> Path:
    return repo_root() / "playbooks"


def ansible_cfg() -> Path:
    return repo_root() / "ansible.cfg"


def ansible_tool(name: str) -> str:
    """The path of an Ansible CLI tool: next to this interpreter first (the venv), then on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise IntellectError(
            f"{name} not found", hint="pip install 'intellect[ops]' (ansible-core, ansible-runner)"
        )
    return found


def fact_cache_dir(inventory: Path) -> Path:
    """One fact cache per inventory, so that two clusters with the same host names never mix facts."""
    import hashlib

    key = hashlib.sha256(str(Path(inventory).resolve()).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "intellect" / "ansible-facts" / key


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an Ansible process: our ansible.cfg, our venv's bin first on PATH, no colour codes."""
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ansible_cfg())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    env.setdefault("ANSIBLE_DEPRECATION_WARNINGS", "False")
    env.update(extra or {})
    return env
