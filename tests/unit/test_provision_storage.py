"""The nfs and lustre_client roles, run by Ansible on this machine as a fresh NFS server and a fresh client.

The server (storage01) and the client (gpu-001) are both this machine, with a local connection; every file the
roles write lands in a temporary folder, and systemd is the stand-in of tests/fixtures/ansible/fresh_node (this
machine runs no systemd, and has no nfsd: the kernel NFS server itself is not run). Two kinds of run:
- check mode with --diff, on both hosts: the units, exports and folders that would be written;
- real runs on the client, install phase left out: the units are written, started, and remounted when they change.
Mount unit names are compared with what the real ``systemd-escape`` makes of each path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ansible_runner", reason="ansible-runner is in the ops extra")

from intellect.provision.paths import playbooks_dir  # noqa: E402
from intellect.provision.runner import ProvisionResult, run_playbook  # noqa: E402
from tests.fixtures.ansible.fresh_node.node import node_env, systemctl_calls  # noqa: E402

if shutil.which("systemd-escape") is None:
    pytest.skip("systemd-escape (systemd) is not installed here", allow_module_level=True)

ROOT = "/srv/nfs-nvme"  # the NVMe export root: a dash, so its unit is srv-nfs\x2dnvme.mount
CLIENT_PATHS = ["/home", "/opt/intellect", "/scratch/team-a", "/mnt/.hidden"]
LUSTRE_PATH = "/lustre/scratch-1"
INVENTORY = {
    "all": {
        "children": {
            "nfs_server": {"hosts": {"storage01": None}},
            "nfs_clients": {"hosts": {"gpu-001": None}},
            "lustre_clients": {"hosts": {"gpu-001": None}},
        }
    }
}
PLAYBOOK = [
    {
        "name": "Serve and mount NFS",
        "hosts": "nfs_server:nfs_clients",
        "gather_facts": False,
        "roles": ["nfs"],
    },
    {"name": "Mount Lustre", "hosts": "lustre_clients", "gather_facts": False, "roles": ["lustre_client"]},
]


def escape(path: str) -> str:
    """The unit name systemd gives a mount point."""
    argv = ["systemd-escape", "--path", "--suffix=mount", path]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


class Site:
    """A temporary inventory, playbook and file tree for the two roles; ``run`` provisions it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.units = tmp / "units"
        (tmp / "inventory.yml").write_text(yaml.safe_dump(INVENTORY))
        (tmp / "storage.yml").write_text(yaml.safe_dump(PLAYBOOK, sort_keys=False))
        (tmp / "lustre.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
        self.env = node_env(
            tmp / "node", [self.units], {"nfs-kernel-server": "1:2.6.2", "nfs-common": "1:2.6.2"}
        )
        self.env["ANSIBLE_ROLES_PATH"] = str(playbooks_dir() / "roles")
        self.vars: dict[str, Any] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "nfs_unit_dir": str(self.units),
            "nfs_exports_file": str(tmp / "exports"),
            "nfs_server_export_root": ROOT,
            "nfs_exports": [
                {"path": f"{ROOT}/home", "clients": "10.0.0.0/16", "options": "rw,sync,root_squash"},
                {"path": f"{ROOT}/software", "clients": "10.0.0.0/16", "options": "rw,sync,no_root_squash"},
            ],
            "nfs_home_export": f"{ROOT}/home",
            "nfs_home_users": [{"name": "rl", "uid": 2000}],
            "nfs_client_mounts": [
                {"source": f"storage01:{ROOT}/{'software' if p == '/opt/intellect' else 'home'}", "path": p}
                for p in CLIENT_PATHS
            ],
            "lustre_client_mounts": [{"source": "10.1.0.10@o2ib:/scratch", "path": LUSTRE_PATH}],
            "lustre_client_repo_url": "https://lustre.example.org/client/ubuntu2404",
            "lustre_client_repo_suites": "noble",
            "lustre_client_repo_components": ["main"],
            "lustre_client_repo_key_file": str(tmp / "lustre.asc"),
            "lustre_client_sources_dir": str(tmp / "sources"),
            "lustre_client_keyring_dir": str(tmp / "keyrings"),
            "lustre_client_modprobe_file": str(tmp / "modprobe" / "lnet.conf"),
            "lustre_client_unit_dir": str(self.units),
        }

    def run(self, *, check: bool = False, limit: str | None = None, **overrides: Any) -> ProvisionResult:
        real = (
            {}
            if check
            else {"lustre_client_repo_preconfigured": True, "lustre_client_lnet_networks": "tcp0(lo)"}
        )
        (self.tmp / "modprobe").mkdir(exist_ok=True)
        if not check:
            self.units.mkdir(exist_ok=True)  # /etc/systemd/system exists on a node
        return run_playbook(
            self.tmp / "inventory.yml",
            str(self.tmp / "storage.yml"),
            limit=limit,
            check=check,
            diff=check,
            extravars={**self.vars, **real, **overrides},
            env={**self.env, **({} if check else {"ANSIBLE_SKIP_TAGS": "install"})},
        )


def _diff(res: ProvisionResult, host: str, path_end: str) -> str:
    found = [d for d in res.diffs if d.host == host and d.path.endswith(path_end)]
    assert found, f"no diff for {path_end} on {host}: {[(d.host, d.path) for d in res.diffs]}"
    return found[0].after


def _paths(res: ProvisionResult, host: str) -> list[str]:
    return [d.path for d in res.diffs if d.host == host]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Site, ProvisionResult]:
    site = Site(tmp_path_factory.mktemp("storage-check"))
    return site, site.run(check=True)


def test_escaped_unit_names_are_systemds() -> None:
    assert escape("/srv/nfs-home") == r"srv-nfs\x2dhome.mount"
    assert escape(ROOT) == r"srv-nfs\x2dnvme.mount"
    assert escape("/mnt/.hidden") == "mnt-.hidden.mount" and escape("/.snap") == r"\x2esnap.mount"
    assert escape("/home") == "home.mount"


def test_check_mode_runs_to_the_end_and_writes_nothing(checked: tuple[Site, ProvisionResult]) -> None:
    site, res = checked
    assert res.ok, [vars(f) for f in res.failures]
    assert sorted(res.recap) == ["gpu-001", "storage01"]
    assert not site.units.exists() and not (site.tmp / "exports").exists() and not Path(ROOT).exists()
    assert systemctl_calls(site.tmp / "node") == []  # nothing started, stopped or enabled


def test_server_creates_and_exports_its_nvme_folders(checked: tuple[Site, ProvisionResult]) -> None:
    _, res = checked
    root_unit = _diff(res, "storage01", "/" + escape(ROOT))
    assert f"What=/dev/md0\nWhere={ROOT}\nType=xfs" in root_unit and "Before=nfs-server.service" in root_unit
    exports = _diff(res, "storage01", "exports")
    assert f"{ROOT}/home 10.0.0.0/16(rw,sync,root_squash)" in exports
    assert f"{ROOT}/software 10.0.0.0/16(rw,sync,no_root_squash)" in exports
    paths = _paths(res, "storage01")
    assert {f"{ROOT}/home", f"{ROOT}/software", f"{ROOT}/home/rl", f"{ROOT}/home/rl/.ssh"} <= set(paths)
    assert "StrictHostKeyChecking accept-new" in _diff(res, "storage01", "/home/rl/.ssh/config")
    assert f"RequiresMountsFor={ROOT}" in _diff(res, "storage01", "nfs-server.service.d/intellect.conf")


def test_server_does_not_mount_its_own_exports(checked: tuple[Site, ProvisionResult]) -> None:
    site, res = checked
    units = [p for p in _paths(res, "storage01") if p.endswith(".mount")]
    assert units == [str(site.units / escape(ROOT))]  # its NVMe filesystem only, no NFS mount of itself


def test_clients_mount_home_and_software_after_the_network(checked: tuple[Site, ProvisionResult]) -> None:
    site, res = checked
    for path in CLIENT_PATHS:
        unit = _diff(res, "gpu-001", f"units/{escape(path)}")
        assert f"Where={path}\nType=nfs" in unit
        assert "After=network-online.target\nWants=network-online.target" in unit
    assert f"What=storage01:{ROOT}/software\nWhere=/opt/intellect" in _diff(
        res, "gpu-001", "opt-intellect.mount"
    )
    assert str(site.units / r"scratch-team\x2da.mount") in _paths(res, "gpu-001")


def test_lustre_repository_lnet_and_mount(checked: tuple[Site, ProvisionResult]) -> None:
    site, res = checked
    sources = _diff(res, "gpu-001", "intellect-lustre.sources")
    assert "URIs: https://lustre.example.org/client/ubuntu2404\nSuites: noble\nComponents: main" in sources
    assert f"Signed-By: {site.tmp / 'keyrings' / 'intellect-lustre.asc'}" in sources
    assert str(site.tmp / "keyrings" / "intellect-lustre.asc") in _paths(res, "gpu-001")
    assert _diff(res, "gpu-001", "lnet.conf").endswith("options lnet networks=o2ib0(ib0)\n")
    unit = _diff(res, "gpu-001", "/" + escape(LUSTRE_PATH))
    assert "After=network-online.target lnet.service" in unit and "Type=lustre" in unit


def test_lustre_without_a_repository_stops_with_the_fix(tmp_path: Path) -> None:
    site = Site(tmp_path)
    res = site.run(check=True, limit="gpu-001", lustre_client_repo_url="")
    assert not res.ok
    [failure] = res.failures
    assert failure.task == "Check that the Lustre client packages have a repository."
    assert (
        "lustre_client_repo_url" in failure.message and "lustre_client_repo_preconfigured" in failure.message
    )


def test_real_runs_mount_then_remount_what_changed(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.vars["nfs_client_mounts"] = site.vars["nfs_client_mounts"][:2]  # /home and /opt/intellect
    home, software, lustre = escape("/home"), escape("/opt/intellect"), escape(LUSTRE_PATH)
    first = site.run(limit="gpu-001")
    assert first.ok, [vars(f) for f in first.failures]
    assert (site.units / home).exists() and (site.units / lustre).exists()
    calls = systemctl_calls(tmp_path / "node")
    assert sorted(c[-1] for c in calls if c[0] == "start") == sorted([home, software, lustre])
    assert not [c for c in calls if c[0] in ("restart", "stop")]  # new units are mounted, not remounted

    again = site.run(limit="gpu-001")
    assert again.ok and again.recap["gpu-001"].changed == 0, again.changed_tasks

    done = len(systemctl_calls(tmp_path / "node"))
    site.vars["nfs_client_mounts"][0] = dict(
        site.vars["nfs_client_mounts"][0], options="vers=4.2,hard,noatime"
    )
    site.vars["lustre_client_mounts"] = [dict(site.vars["lustre_client_mounts"][0], options="flock")]
    changed = site.run(limit="gpu-001")
    assert changed.ok, [vars(f) for f in changed.failures]
    calls = systemctl_calls(tmp_path / "node")[done:]
    assert sorted(c[-1] for c in calls if c[0] in ("restart", "stop", "start")) == sorted([home, lustre])
    assert {c[0] for c in calls if c[-1] in (home, lustre)} == {"restart"}

    done += len(calls)
    relnet = site.run(limit="gpu-001", lustre_client_lnet_networks="tcp0(lo),tcp1(lo)")
    assert relnet.ok, [vars(f) for f in relnet.failures]
    calls = [c for c in systemctl_calls(tmp_path / "node")[done:] if c[0] in ("stop", "start", "restart")]
    assert [(c[0], c[-1]) for c in calls] == [("stop", lustre), ("start", lustre)]  # LNet reloads unmounted


def test_a_real_run_on_the_server_creates_its_folders_homes_and_keys(tmp_path: Path) -> None:
    device = next((str(d) for d in sorted(Path("/dev").iterdir()) if d.is_block_device()), None)
    if device is None:
        pytest.skip("no block device here to stand for the NVMe array")
    site = Site(tmp_path)
    (tmp_path / "node" / "systemd" / "installed").write_text(
        "nfs-server\n"
    )  # the unit nfs-kernel-server brings
    srv = tmp_path / "srv"
    server = {
        "nfs_server_device": device,  # only looked at: the stand-in systemd mounts nothing
        "nfs_server_export_root": str(srv),
        "nfs_exports": [{**e, "path": e["path"].replace(ROOT, str(srv))} for e in site.vars["nfs_exports"]],
        "nfs_home_export": str(srv / "home"),
    }
    res = site.run(limit="storage01", **server)
    assert res.ok, [vars(f) for f in res.failures]
    assert (srv / "software").is_dir() and (srv / "home").stat().st_mode & 0o777 == 0o755
    home = srv / "home" / "rl"
    assert (home.stat().st_uid, home.stat().st_gid, home.stat().st_mode & 0o777) == (2000, 2000, 0o700)
    key = home / ".ssh" / "id_ed25519"
    assert key.stat().st_uid == 2000 and key.stat().st_mode & 0o777 == 0o600
    assert (home / ".ssh" / "authorized_keys").read_text() == key.with_suffix(".pub").read_text()
    calls = systemctl_calls(tmp_path / "node")
    assert (
        ["start", escape(str(srv))] in calls
        and ["start", "nfs-server"] in calls
        and ["exportfs", "-ra"] in calls
    )
    assert (
        "RequiresMountsFor=" + str(srv)
        in (site.units / "nfs-server.service.d" / "intellect.conf").read_text()
    )

    again = site.run(limit="storage01", **server)
    assert again.ok and again.recap["storage01"].changed == 0, again.changed_tasks
    assert (home / ".ssh" / "authorized_keys").read_text() == key.with_suffix(".pub").read_text()  # same key


def test_real_run_on_a_server_without_its_nvme_device_names_the_fix(tmp_path: Path) -> None:
    site = Site(tmp_path)
    res = site.run(limit="storage01", nfs_server_device=str(tmp_path / "md0"))
    [failure] = res.failures
    assert failure.task == "Stop when the export root's device is missing."
    assert "nfs_server_device" in failure.message and "is not a block device on storage01" in failure.message
