"""Supported platforms: the slurm role's validate.yml on the recorded facts of each distribution.

The supported platforms are Debian 12 and Ubuntu 24.04 (``slurm_supported_platforms``), each with a Slurm of 22.05
or newer (the first that loads cgroup/v2). The role's own validate tasks run through ansible-playbook on this
machine (tests/fixtures/ansible/playbooks/platform.yml) with a distribution's recorded facts
(tests/fixtures/ansible/os/*/facts.json) loaded as already gathered, and ``apt-cache`` a stand-in on PATH that prints
that distribution's recorded ``apt-cache policy slurm-client``. Ubuntu 22.04, whose Slurm is 21.08, is refused with
the fix in the message. The filter (playbooks/filter_plugins/slurm_platform.py) is also tested directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ansible", reason="ansible-core is in the ops extra")

from intellect.provision.paths import ansible_env, ansible_tool  # noqa: E402
from tests.conftest import load_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OS = ROOT / "tests" / "fixtures" / "ansible" / "os"
PLAYBOOK = ROOT / "tests" / "fixtures" / "ansible" / "playbooks" / "platform.yml"


plat = load_module(ROOT / "playbooks" / "filter_plugins" / "slurm_platform.py")
SUPPORTED = [{"distribution": "Debian", "version": "12"}, {"distribution": "Ubuntu", "version": "24.04"}]


def _facts(name: str) -> dict:
    """setup's facts as ansible_facts holds them (without the ansible_ prefix)."""
    raw = json.loads((OS / name / "facts.json").read_text())
    return {k.removeprefix("ansible_"): v for k, v in raw.items()}


def validate(
    tmp_path: Path, os_name: str, extra_vars: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """The slurm role's validate.yml for gpu-001 of the production inventory, on ``os_name``'s recordings."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "apt-cache").write_text(
        f'#!/bin/sh\n[ "$1 $2" = "policy slurm-client" ] || exit 2\ncat {OS / os_name}/apt-cache-policy.txt\n'
    )
    (stub / "apt-cache").chmod(0o755)
    argv = [
        ansible_tool("ansible-playbook"),
        "-i",
        str(ROOT / "inventory" / "production"),
        str(PLAYBOOK),
        "--limit",
        "gpu-001",
        "-e",
        json.dumps(
            {
                "platform_facts_file": str(OS / os_name / "facts.json"),
                "ansible_python_interpreter": sys.executable,
                "vault_slurm_dbd_storage_password": "x",
                **(extra_vars or {}),
            }
        ),
    ]
    path = f"{stub}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = ansible_env({"ANSIBLE_CACHE_PLUGIN": "memory", "PATH": path})
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)


@pytest.mark.parametrize("os_name", ["debian-12", "ubuntu-24.04"])
def test_supported_platforms_pass_validate(tmp_path: Path, os_name: str) -> None:
    res = validate(tmp_path, os_name)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "Check that each Slurm node runs a supported platform" in res.stdout


def test_ubuntu_2204_with_its_slurm_2108_is_refused_with_the_fix(tmp_path: Path) -> None:
    res = validate(tmp_path, "ubuntu-22.04")
    assert res.returncode != 0
    out = " ".join(res.stdout.split())
    assert "gpu-001 (Ubuntu 22.04 (jammy)) is not a supported platform (Debian 12, Ubuntu 24.04)" in out
    assert (
        "Slurm 21.08.5-2ubuntu1 is what apt would install (slurm-client), older than 22.05: a Slurm before 22.05 "
        "cannot load cgroup/v2 (CgroupPlugin=cgroup/v2). Fix: use Debian 12 or Ubuntu 24.04, or set "
        "slurm_apt_repository to a site repository with Slurm 22.05 or newer" in out
    )
    assert "debuild -b -uc -us" in out and "slurm-smd-*" in out


def test_ubuntu_2204_with_a_site_repository_passes_validate(tmp_path: Path) -> None:
    """A site that lists 22.04 and brings a repository: validate defers the version to install.yml (after the
    repository is added), which runs the same check then."""
    extra = {
        "slurm_supported_platforms": [*SUPPORTED, {"distribution": "Ubuntu", "version": "22.04"}],
        "slurm_apt_repository": {
            "uris": "https://repo.example.org/slurm",
            "suites": "jammy",
            "components": "main",
        },
    }
    res = validate(tmp_path, "ubuntu-22.04", extra)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_version_check_reads_installed_then_candidate() -> None:
    jammy, noble = _facts("ubuntu-22.04"), _facts("ubuntu-24.04")
    jammy_ok = [*SUPPORTED, {"distribution": "Ubuntu", "version": "22.04"}]
    site = (OS / "ubuntu-24.04" / "apt-cache-policy.txt").read_text()  # 23.11 from a site repository on jammy
    assert plat.slurm_platform_problems(jammy, jammy_ok, site, host="gpu-001") == []
    assert plat.slurm_platform_problems(noble, SUPPORTED, site, host="gpu-001") == []
    old_installed = "slurm-client:\n  Installed: 21.08.5-2ubuntu1\n  Candidate: 23.11.4-1\n"
    [problem] = plat.slurm_platform_problems(jammy, jammy_ok, old_installed, host="gpu-001")
    assert (
        "Slurm 21.08.5-2ubuntu1 is installed" in problem
        and "apt-get install --only-upgrade slurm-client" in problem
    )
    [problem] = plat.slurm_platform_problems(noble, SUPPORTED, "", host="gpu-001")
    assert problem.startswith("gpu-001 (Ubuntu 24.04 (noble)): apt offers no slurm-client")
    assert plat.slurm_version_tuple("1:23.11.4-1.2ubuntu5") == (23, 11)
    assert (
        plat.slurm_version_tuple("22.05.8-4+deb12u3") == (22, 5)
        and plat.slurm_version_tuple("(none)") is None
    )


def test_only_apt_platforms() -> None:
    rocky = {"distribution": "Rocky", "distribution_version": "9.4", "distribution_release": "Blue Onyx",
             "distribution_major_version": "9", "os_family": "RedHat", "pkg_mgr": "dnf"}  # fmt: skip
    [problem] = plat.slurm_platform_problems(rocky, SUPPORTED, "", host="gpu-001")
    assert problem == (
        "gpu-001 (Rocky 9.4 (Blue Onyx)) installs packages with dnf: the slurm role supports apt only "
        "(Debian 12, Ubuntu 24.04)"
    )
