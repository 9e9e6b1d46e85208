"""The roles that cannot run here (GRUB/cgroup v2, Lustre, kernel NFS, NVIDIA driver, IB) in --check --diff.

The production inventory runs against this machine with a local connection; every file path of those roles
points into a temporary folder (a recorded /etc/default/grub is copied there). Ansible reports what it would
write; the assertions read those diffs, and check that nothing was written.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("ansible_runner", reason="ansible-runner is in the ops extra")

from intellect.provision.runner import ProvisionResult, run_playbook  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProvisionResult, Path]:
    tmp = tmp_path_factory.mktemp("checkdiff")
    shutil.copy(ROOT / "tests" / "fixtures" / "ansible" / "hardware" / "grub", tmp / "grub")
    for sub in ("units", "modprobe", "facts.d"):  # not units/nvidia-persistenced.service.d: the role makes it
        (tmp / sub).mkdir(parents=True)
    key = tmp / "munge.key"
    key.write_bytes(b"k" * 64)
    (tmp / "lustre.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    extravars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "munge_key_file": str(key),
        "vault_slurm_dbd_storage_password": "x",
        "cgroup_v2_grub_file": str(tmp / "grub"),
        "lustre_client_unit_dir": str(tmp / "units"),
        "lustre_client_modprobe_file": str(tmp / "modprobe" / "lnet.conf"),
        "lustre_client_repo_url": "https://lustre.example.org/client/ubuntu2404",
        "lustre_client_repo_key_file": str(tmp / "lustre.asc"),
        "lustre_client_sources_dir": str(tmp / "sources"),
        "lustre_client_keyring_dir": str(tmp / "keyrings"),
        "nvidia_unit_dir": str(tmp / "units"),
        "nfs_unit_dir": str(tmp / "units"),
        "nfs_exports_file": str(tmp / "exports"),
        "ib_facts_dir": str(tmp / "facts.d"),
    }
    res = run_playbook(
        ROOT / "inventory" / "production",
        limit="gpu-001,storage01",
        tags="configure",
        check=True,
        diff=True,
        extravars=extravars,
        env={"ANSIBLE_SKIP_TAGS": "common,munge,slurm,monitoring", "ANSIBLE_CACHE_PLUGIN": "memory"},
    )
    return res, tmp


def _after(res: ProvisionResult, host: str, path_end: str) -> tuple[str, str]:
    found = [d for d in res.diffs if d.host == host and d.path.endswith(path_end)]
    assert found, f"no diff for {path_end} on {host}: {[(d.host, d.path) for d in res.diffs]}"
    return found[0].before, found[0].after


def test_check_mode_succeeds_and_writes_nothing(result: tuple[ProvisionResult, Path]) -> None:
    res, tmp = result
    assert res.ok, [vars(f) for f in res.failures]
    assert sorted(res.recap) == ["gpu-001", "storage01"]
    assert 'pci=realloc=off"' in (tmp / "grub").read_text()  # untouched
    assert not (tmp / "exports").exists() and not list((tmp / "units").glob("*.mount"))


def test_grub_gets_the_cgroup_v2_arguments(result: tuple[ProvisionResult, Path]) -> None:
    before, after = _after(result[0], "gpu-001", "grub")
    assert 'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 pci=realloc=off"' in before
    line = next(ln for ln in after.splitlines() if ln.startswith("GRUB_CMDLINE_LINUX="))
    assert line == (
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 pci=realloc=off '
        'systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all"'
    )


def test_lustre_mount_unit_and_lnet(result: tuple[ProvisionResult, Path]) -> None:
    _, unit = _after(result[0], "gpu-001", "lustre-scratch.mount")
    assert (
        "What=10.1.0.10@o2ib:/scratch" in unit and "Where=/lustre/scratch" in unit and "Type=lustre" in unit
    )
    _, lnet = _after(result[0], "gpu-001", "lnet.conf")
    assert "options lnet networks=o2ib0(ib0)" in lnet


def test_nfs_server_exports_from_nvme_and_clients_mount(result: tuple[ProvisionResult, Path]) -> None:
    _, exports = _after(result[0], "storage01", "exports")
    assert "/srv/nfs/home 10.0.0.0/16(rw,sync,no_subtree_check,root_squash)" in exports
    _, root = _after(result[0], "storage01", "srv-nfs.mount")
    assert "What=/dev/md0" in root and "Type=xfs" in root
    _, home = _after(result[0], "gpu-001", "home.mount")
    assert "What=storage01:/srv/nfs/home" in home and "Type=nfs" in home
    assert not [d.path for d in result[0].diffs if d.host == "storage01" and d.path.endswith("home.mount")]


def test_nvidia_persistence_and_ib_fact(result: tuple[ProvisionResult, Path]) -> None:
    _, override = _after(result[0], "gpu-001", "intellect.conf")
    assert "--persistence-mode" in override
    _, fact = _after(result[0], "gpu-001", "ib_ports.fact")
    assert "/sys/class/infiniband" in fact
