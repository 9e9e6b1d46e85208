"""ansible-lint (offline, production profile) over playbooks/: it must stay clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from intellect.provision.paths import ansible_env

ROOT = Path(__file__).resolve().parents[2]


def test_playbooks_pass_ansible_lint() -> None:
    lint = Path(sys.executable).parent / "ansible-lint"
    if not lint.exists() and shutil.which("ansible-lint") is None:
        pytest.skip("ansible-lint is in the ops extra")
    argv = [
        str(lint) if lint.exists() else "ansible-lint",
        "--offline",
        "--profile",
        "production",
        "--nocolor",
    ]
    res = subprocess.run(
        [*argv, "playbooks/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ansible_env(),
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
