"""The dev cluster's generated inventory, its root check, and the GRUB argument filter (no root needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from intellect.devcluster import cluster as cluster_mod
from intellect.devcluster.inventory import FORCED_OVERRIDES, dev_inventory, write_inventory
from intellect.devcluster.nodes import Net
from intellect.errors import IntellectError

ROOT = Path(__file__).resolve().parents[2]


def test_dev_inventory_is_valid_and_overrides_only_what_is_forced(tmp_path: Path) -> None:
    pytest.importorskip("ansible", reason="ansible-core is in the ops extra")
    from intellect.provision.inventory import load_inventory, validate_inventory

    (tmp_path / "munge.key").write_bytes(b"m" * 1024)
    inv_dir = write_inventory(tmp_path / "inventory", dev_inventory(3, Net(), tmp_path, "pw"))
    inv = load_inventory(inv_dir)
    assert validate_inventory(inv) == []
    assert sorted(inv.members("slurm_compute")) == ["node1", "node2", "node3"]
    assert inv.members("slurm_controller") == {"node1"} and inv.members("monitoring") == {"node1"}
    assert (
        not inv.members("lustre_clients")
        and not inv.members("cgroup_v2_hosts")
        and not inv.members("ib_hosts")
    )
    hv = inv.hostvars["node2"]
    assert hv["ansible_host"] == "10.213.0.12"
    assert {k: hv[k] for k in FORCED_OVERRIDES} == FORCED_OVERRIDES
    assert hv["slurm_cgroup_enforce"] is False and hv["nvidia_mode"] == "fake"


def test_dev_cluster_says_it_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(IntellectError, match="needs root") as err:
        cluster_mod.DevCluster(Path("/nonexistent")).boot(3, print)
    assert err.value.hint == "sudo intellect dev-cluster up"


def test_node_count_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_mod, "require_root_and_tools", lambda: None)
    with pytest.raises(IntellectError, match="--nodes must be between 1 and 200"):
        cluster_mod.DevCluster(Path("/nonexistent")).boot(0, print)


def test_grub_cmdline_merge_keeps_other_arguments() -> None:
    spec = importlib.util.spec_from_file_location(
        "kernel_args", ROOT / "playbooks/filter_plugins/kernel_args.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="quiet systemd.unified_cgroup_hierarchy=0 iommu=pt"\n'
    merged = mod.grub_cmdline_merge(text, ["systemd.unified_cgroup_hierarchy=1", "cgroup_no_v1=all"])
    assert merged == 'GRUB_CMDLINE_LINUX="quiet iommu=pt systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all"'
    assert mod.grub_cmdline_merge("", ["a=1"]) == 'GRUB_CMDLINE_LINUX="a=1"'
