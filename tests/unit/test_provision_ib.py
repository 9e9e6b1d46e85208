"""The ib role: ports judged by link layer, IPoIB addresses, and Slurm's topology.conf.

The parsers are pure functions (playbooks/roles/ib/filter_plugins/ib_fabric.py, playbooks/roles/ib/files/
ib_ports.fact), tested on tests/fixtures/ib/ibnetdiscover-rail-optimized.txt (a representative ibnetdiscover output,
built by hand in its format: see tests/fixtures/ib/README.md) and on the sysfs recording of an H200 node
(tests/fixtures/ansible/h200/ib-ports.json: eight NDR InfiniBand ports and one 200G Ethernet NIC). The role itself
runs on this machine through Ansible, in check mode and for real, with every path in a temporary folder.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "playbooks" / "roles" / "ib"
FABRIC = ROOT / "tests" / "fixtures" / "ib" / "ibnetdiscover-rail-optimized.txt"
H200_PORTS = ROOT / "tests" / "fixtures" / "ansible" / "h200" / "ib-ports.json"
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def _load(path: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(path.stem.replace(".", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


fabric = _load(ROLE / "filter_plugins" / "ib_fabric.py")
fact = _load(ROLE / "files" / "ib_ports.fact")
NODES = [f"gpu-{i:03d}" for i in range(1, 9)]


def test_ibnetdiscover_maps_each_host_to_the_leaves_its_rails_reach() -> None:
    hosts = fabric.parse_ibnetdiscover(FABRIC.read_text())
    assert hosts["gpu-001"] == [f"su1-leaf-r{r}" for r in range(1, 9)]
    assert hosts["gpu-003"] == [f"su1-leaf-r{r}" for r in (1, 2, 3, 4, 6, 7, 8)]  # its rail-5 cable is down
    assert hosts["gpu-007"] == [f"su2-leaf-r{r}" for r in range(1, 9)]
    assert "gpu-008" not in hosts  # powered off
    assert hosts["storage01"] == ["stor-leaf01"] and hosts["ufm01"] == ["stor-leaf01"]
    assert "Mellanox" not in hosts  # spine01's SHARP aggregation node is no host


def test_rail_optimized_fabric_becomes_one_switch_per_scalable_unit() -> None:
    topo = fabric.topology_from_ibnetdiscover(FABRIC.read_text(), NODES)
    by_name = {s["name"]: s for s in topo["switches"]}
    assert by_name["su1"]["nodes"] == [
        "gpu-001",
        "gpu-002",
        "gpu-003",
        "gpu-004",
    ]  # gpu-003 stays with its unit
    assert by_name["su2"]["nodes"] == ["gpu-005", "gpu-006", "gpu-007"]
    assert by_name["su1"]["leaves"] == [f"su1-leaf-r{r}" for r in range(1, 9)]
    assert topo["unplaced"] == ["gpu-008"] and by_name["unplaced"]["nodes"] == ["gpu-008"]
    assert by_name["fabric"]["switches"] == ["su1", "su2", "unplaced"]
    assert [s["name"] for s in topo["switches"]][-1] == "fabric"


CLASSIC = """\
#
# Topology file: generated on Tue Mar 11 08:00:00 2025
#
vendid=0x2c9
devid=0xd2f2
switchguid=0xfc6a1c0300000001(fc6a1c0300000001)
Switch	65 "S-fc6a1c0300000001"		# "Quantum-2 Mellanox Technologies" base port 0 lid 1 lmc 0
[1]	"H-a088c20300000001"[1](a088c20300000001)		# "gpu-001.cluster.example mlx5_0" lid 11 4xNDR
[2]	"H-a088c20300000002"[1](a088c20300000002)		# "gpu-002.cluster.example mlx5_0" lid 12 4xNDR
[40]	"S-fc6a1c0300000003"[1]		# "core01" lid 3 4xNDR

vendid=0x2c9
devid=0xd2f2
switchguid=0xfc6a1c0300000002(fc6a1c0300000002)
Switch	65 "S-fc6a1c0300000002"		# "Quantum-2 Mellanox Technologies" base port 0 lid 2 lmc 0
[1]	"H-a088c20300000003"[1](a088c20300000003)		# "gpu-003.cluster.example mlx5_0" lid 13 4xNDR
[40]	"S-fc6a1c0300000003"[2]		# "core01" lid 3 4xNDR

vendid=0x2c9
devid=0xd2f2
switchguid=0xfc6a1c0300000003(fc6a1c0300000003)
Switch	65 "S-fc6a1c0300000003"		# "core01" base port 0 lid 3 lmc 0
[1]	"S-fc6a1c0300000001"[40]		# "Quantum-2 Mellanox Technologies" lid 1 4xNDR
[2]	"S-fc6a1c0300000002"[40]		# "Quantum-2 Mellanox Technologies" lid 2 4xNDR

vendid=0x2c9
devid=0x1021
caguid=0xa088c20300000001
Ca	1 "H-a088c20300000001"		# "gpu-001.cluster.example mlx5_0"
[1](a088c20300000001) 	"S-fc6a1c0300000001"[1]		# lid 11 lmc 0 "Quantum-2 Mellanox Technologies" lid 1 4xNDR
"""


def test_unmanaged_switches_are_named_by_guid_and_fqdn_hosts_match_short_names() -> None:
    topo = fabric.topology_from_ibnetdiscover(CLASSIC, ["gpu-001", "gpu-002", "gpu-003"], root="core")
    assert [(s["name"], s["nodes"], s["switches"]) for s in topo["switches"]] == [
        ("S-fc6a1c0300000001", ["gpu-001", "gpu-002"], []),
        ("S-fc6a1c0300000002", ["gpu-003"], []),
        ("core", [], ["S-fc6a1c0300000001", "S-fc6a1c0300000002"]),
    ]


def test_inventory_leaf_switches_and_a_node_without_one() -> None:
    hostvars = {f"gpu-00{i}": {"ib_leaf_switch": "leaf01" if i < 3 else "leaf02"} for i in range(1, 5)}
    hostvars["gpu-005"] = {}
    topo = fabric.topology_from_inventory([*hostvars, "gpu-006"], hostvars)
    assert [(s["name"], s["nodes"]) for s in topo["switches"][:3]] == [
        ("leaf01", ["gpu-001", "gpu-002"]),
        ("leaf02", ["gpu-003", "gpu-004"]),
        ("unplaced", ["gpu-005", "gpu-006"]),
    ]
    single = fabric.topology_from_inventory(["gpu-001"], {"gpu-001": {"ib_leaf_switch": ["r1", "r2"]}})
    assert single["switches"] == [
        {"name": "su1", "nodes": ["gpu-001"], "switches": [], "leaves": ["r1", "r2"]}
    ]


def test_ipoib_addresses_follow_the_plan() -> None:
    assert fabric.ipoib_address("10.1.0.0/16", 17) == "10.1.0.17/16"
    assert fabric.ipoib_address("10.2.0.0/16", 1, offset=100) == "10.2.0.101/16"
    with pytest.raises(ValueError, match="outside the hosts of 10.3.0.0/24"):
        fabric.ipoib_address("10.3.0.0/24", 255)


def _sysfs(tmp: Path, ports: dict[str, dict[str, str]]) -> Path:
    for key, attrs in ports.items():
        hca, port = key.split("/")
        d = tmp / "class" / "infiniband" / hca / "ports" / port
        d.mkdir(parents=True)
        for name, value in attrs.items():
            (d / name).write_text(value + "\n")
        net = tmp / "class" / "infiniband" / hca / "device" / "net"
        net.mkdir(parents=True, exist_ok=True)
        (net / ("ens8np0" if attrs.get("link_layer") == "Ethernet" else f"ib{hca[-1]}")).mkdir()
    return tmp


def test_the_port_fact_judges_ports_by_link_layer(tmp_path: Path) -> None:
    ports = fact.ports(str(_sysfs(tmp_path, json.loads(H200_PORTS.read_text()))))
    ib = [p for p in ports if p["infiniband"]]
    assert len(ports) == 9 and len(ib) == 8
    assert all(p["state"] == "ACTIVE" and p["rate_gbps"] == 400 for p in ib)
    eth = next(p for p in ports if not p["infiniband"])
    assert eth["hca"] == "mlx5_8" and eth["link_layer"] == "Ethernet" and eth["netdevs"] == ["ens8np0"]
    assert eth["summary"] == "mlx5_8/1 ACTIVE 200 Gb/s Ethernet"
    assert ib[0]["netdevs"] == ["ib0"]


pytest.importorskip("ansible_runner", reason="ansible-runner is in the ops extra")

from intellect.provision.runner import ProvisionResult, run_playbook  # noqa: E402


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=1))  # JSON is YAML
    return path


def _play(hosts: str, *tasks_from: str) -> dict[str, Any]:
    tasks = [
        {"name": f"Run the ib role's {t}.", "ansible.builtin.include_role": {"name": "ib", "tasks_from": t}}
        for t in tasks_from
    ]
    return {"name": f"ib {' '.join(tasks_from)}", "hosts": hosts, "gather_facts": False, "tasks": tasks}


def _run(tmp: Path, inventory: dict[str, Any], plays: list[dict[str, Any]], **kw: Any) -> ProvisionResult:
    path = os.pathsep.join([str(tmp / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])
    return run_playbook(
        _write(tmp / "hosts.yml", inventory),
        str(_write(tmp / "play.yml", plays)),
        diff=True,
        env={"ANSIBLE_CACHE_PLUGIN": "memory", "PATH": path},
        **kw,
    )


def _diff(res: ProvisionResult, host: str, path_end: str) -> str:
    found = [d for d in res.diffs if d.host == host and d.path.endswith(path_end)]
    assert found, f"no diff for {path_end} on {host}: {[(d.host, d.path) for d in res.diffs]}"
    return found[0].after


def _compute(tmp: Path, networks: list[dict[str, Any]]) -> dict[str, Any]:
    """gpu-001 and gpu-002 (run here) on leaf01, gpu-003 (never run: down, or left out by --limit) on leaf02."""
    hosts = {
        f"gpu-00{i}": {
            **LOCAL,
            "ib_leaf_switch": "leaf01" if i < 3 else "leaf02",
            "ib_facts_dir": str(tmp / f"gpu-00{i}" / "facts.d"),
            "ib_networkd_dir": str(tmp / f"gpu-00{i}" / "network"),
            "ib_ipoib_networks": networks,
        }
        for i in (1, 2, 3)
    }
    ctl = {
        "ctl-001": {**LOCAL, "ib_topology_conf_path": str(tmp / "ctl-001" / "slurm" / "topology.conf")},
        "ctl-002": {
            **LOCAL,
            "ib_topology_conf_path": str(tmp / "ctl-002" / "slurm" / "topology.conf"),
            "ib_topology_source": "ibnetdiscover",
            "ib_ibnetdiscover_file": str(FABRIC),
            "ib_topology_nodes": NODES,
        },
    }
    return {"compute": {"hosts": hosts}, "ctl": {"hosts": ctl}}


PLAN: list[dict[str, Any]] = [
    {"name": "ib0", "network": "10.1.0.0/16"},
    {"name": "ib1", "network": "10.2.0.0/16", "offset": 100, "mtu": 4092},
]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProvisionResult, Path]:
    tmp = tmp_path_factory.mktemp("ib-check")
    groups = _compute(tmp, PLAN)
    judged = {}
    for name, change in (
        ("good-001", {}),
        ("bad-001", {"mlx5_7/1": {"state": "1: DOWN"}, "mlx5_8/1": {"rate": "400 Gb/sec (4X NDR)"}}),
    ):
        ports = json.loads(H200_PORTS.read_text())
        for key, attrs in change.items():
            ports[key].update(attrs)
        facts = tmp / name / "facts.d"
        facts.mkdir(parents=True)
        (facts / "ib_ports.fact").write_text(json.dumps(fact.ports(str(_sysfs(tmp / name / "sys", ports)))))
        judged[name] = {**LOCAL, "ib_facts_dir": str(facts)}
    inventory = {"all": {"children": {**groups, "judged": {"hosts": judged}}}}
    inventory["all"]["children"]["ctl"]["vars"] = {"ib_topology_nodes": "{{ groups['compute'] }}"}
    plays = [
        _play("gpu-001:gpu-002", "configure.yml"),
        _play("ctl", "topology.yml"),
        _play("judged", "service.yml"),
    ]
    return _run(tmp, {**inventory}, plays, check=True), tmp


def test_check_mode_writes_nothing(checked: tuple[ProvisionResult, Path]) -> None:
    res, tmp = checked
    assert set(res.recap) == {"gpu-001", "gpu-002", "ctl-001", "ctl-002", "good-001", "bad-001"}
    assert [f.host for f in res.failures] == ["bad-001"]
    assert not (tmp / "gpu-001").exists() and not (tmp / "ctl-001").exists()


def test_ipoib_network_files_from_the_address_plan(checked: tuple[ProvisionResult, Path]) -> None:
    res, _ = checked
    ib0 = _diff(res, "gpu-002", "40-intellect-ib0.network")
    assert "Name=ib0\n" in ib0 and "Address=10.1.0.2/16\n" in ib0 and "RequiredForOnline=no" in ib0
    assert "MTUBytes" not in ib0
    ib1 = _diff(res, "gpu-001", "40-intellect-ib1.network")
    assert "Address=10.2.0.101/16\n" in ib1 and "MTUBytes=4092\n" in ib1


def test_topology_conf_from_inventory_declares_a_node_that_was_not_run(
    checked: tuple[ProvisionResult, Path],
) -> None:
    lines = [
        ln for ln in _diff(checked[0], "ctl-001", "topology.conf").splitlines() if ln.startswith("SwitchName")
    ]
    assert lines == [
        "SwitchName=leaf01 Nodes=gpu-[001-002]",
        "SwitchName=leaf02 Nodes=gpu-003",
        "SwitchName=fabric Switches=leaf[01-02]",
    ]


def test_topology_conf_from_ibnetdiscover(checked: tuple[ProvisionResult, Path]) -> None:
    text = _diff(checked[0], "ctl-002", "topology.conf")
    assert [ln for ln in text.splitlines() if ln.startswith("SwitchName")] == [
        "SwitchName=su1 Nodes=gpu-[001-004]",
        "SwitchName=su2 Nodes=gpu-[005-007]",
        "SwitchName=unplaced Nodes=gpu-008",
        "SwitchName=fabric Switches=su[1-2],unplaced",
    ]
    assert "# su1: nodes that reach the leaf switches su1-leaf-r1, su1-leaf-r2" in text
    assert "TopologyPlugin=topology/tree" in text


def test_an_ethernet_nic_does_not_count_as_an_infiniband_port(checked: tuple[ProvisionResult, Path]) -> None:
    res, _ = checked
    assert res.recap["good-001"].healthy
    message = next(f.message for f in res.failures if f.host == "bad-001")
    assert "7 InfiniBand ports ACTIVE at 400 Gb/s on bad-001, fewer than 8" in message
    assert "mlx5_7/1 DOWN 400 Gb/s InfiniBand" in message
    assert "Not InfiniBand, not counted: mlx5_8/1 ACTIVE 400 Gb/s Ethernet" in message


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ProvisionResult]]:
    """configure and topology for real: the full plan, then ib1 dropped from it, then the same again."""
    tmp = tmp_path_factory.mktemp("ib-real")
    (tmp / "bin").mkdir()
    networkctl = tmp / "bin" / "networkctl"
    networkctl.write_text(f'#!/bin/sh\necho "$@" >> {tmp / "networkctl.log"}\n')
    networkctl.chmod(0o755)
    plays = [_play("gpu-001", "configure.yml"), _play("ctl-001", "topology.yml")]
    runs = []
    for plan in (PLAN, PLAN[:1], PLAN[:1]):
        groups = _compute(tmp, plan)
        groups["ctl"]["vars"] = {"ib_topology_nodes": "{{ groups['compute'] }}"}
        runs.append(_run(tmp, {"all": {"children": groups}}, plays))
    return tmp, runs


def test_a_real_run_writes_the_files_and_drops_interfaces_left_out_of_the_plan(
    applied: tuple[Path, list[ProvisionResult]],
) -> None:
    tmp, (first, second, third) = applied
    assert first.ok and second.ok and third.ok, [vars(f) for r in (first, second, third) for f in r.failures]
    network = tmp / "gpu-001" / "network"
    assert sorted(p.name for p in network.iterdir()) == ["40-intellect-ib0.network"]
    assert os.access(tmp / "gpu-001" / "facts.d" / "ib_ports.fact", os.X_OK)
    assert (
        "SwitchName=leaf01 Nodes=gpu-[001-002]" in (tmp / "ctl-001" / "slurm" / "topology.conf").read_text()
    )
    assert (tmp / "networkctl.log").read_text().splitlines() == ["reload", "reload"]  # after runs 1 and 2


def test_a_second_identical_run_changes_nothing(applied: tuple[Path, list[ProvisionResult]]) -> None:
    _, runs = applied
    assert {h: r.changed for h, r in runs[2].recap.items()} == {"gpu-001": 0, "ctl-001": 0}
