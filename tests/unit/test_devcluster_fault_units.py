"""The dev cluster's faults without a cluster: argument checks (through the real CLI boundary, exit codes of
intellect/errors.py), rate parsing, link naming, tc/ip output parsing, and the state bookkeeping of power-off
and power-on with the host-side calls swapped out. tests/integration/test_devcluster_faults.py breaks a real one.

The tc and ip outputs below were recorded on a dev cluster node's link (iproute2 6.1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from intellect.cli.main import main
from intellect.devcluster import cluster as cluster_mod
from intellect.devcluster import nodes
from intellect.devcluster.cluster import DevCluster
from intellect.errors import IntellectError, UsageError

BRIDGE, PREFIX = "itl-unit0", "10.250.0"
# `tc -j qdisc show dev vb-...` with `tbf rate 10000000bit burst 15000 latency 50ms`, then with 1500kbit
TC_TBF = '[{"kind":"tbf","handle":"8001:","root":true,"refcnt":3,"options":{"rate":1250000,"burst":15000,"lat":50000}}]'
TC_TBF_1500K = '[{"kind":"tbf","handle":"8001:","root":true,"refcnt":3,"options":{"rate":187500,"burst":14999,"lat":50001}}]'
TC_DEFAULT = "[]"  # a veth with its default (noqueue) root: tc -j lists nothing
IP_LINK = (
    '[{"ifindex":79,"link_index":2,"ifname":"vb-itl-hlp0YxJl","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],'
    '"mtu":1500,"qdisc":"noqueue","master":"itl-hlp0","operstate":"UP","linkmode":"DEFAULT","group":"default",'
    '"txqlen":1000,"link_type":"ether","address":"e6:35:6e:12:59:b0","broadcast":"ff:ff:ff:ff:ff:ff",'
    '"link_netnsid":1,"altnames":["vb-itl-hlp0-node2"]}]'
)


# ------------------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("10mbit", 10_000_000),
        ("1.5mbit", 1_500_000),
        ("500kbit", 500_000),
        ("1gbit", 10**9),
        ("8bit", 8),
        ("100bps", 800),
        ("500kbps", 4_000_000),
        ("2mbps", 16_000_000),
        ("10MBit", 10_000_000),  # tc reads units case-insensitively
        ("100gbit", 100 * 10**9),
    ],
)
def test_rates_in_tc_syntax_parse_to_bits_per_second(text: str, bits: int) -> None:
    assert nodes.parse_rate(text) == bits


@pytest.mark.parametrize(
    "text",
    ["", "10", "mbit", "10 mbit", " 10mbit", "10mbit ", "-5mbit", "+5mbit", "10mbits", "10mib", "1e3kbit",
     "10gbps", "0mbit", "0.5bit", "101gbit", "10mbit;reboot", "1,5mbit", ".5mbit"],
)  # fmt: skip
def test_anything_else_is_not_a_rate(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a rate|is out of range"):
        nodes.parse_rate(text)


def test_rates_print_as_tc_prints_them() -> None:
    assert [nodes.format_rate(b) for b in (800, 1500, 1_500_000, 10**7, 10**9, 2_500_000_000)] == [
        "800bit",
        "1.5Kbit",
        "1.5Mbit",
        "10Mbit",
        "1Gbit",
        "2.5Gbit",
    ]


def test_tbf_burst_is_ten_ms_of_traffic_and_at_least_ten_frames() -> None:
    assert nodes.tbf_args(10**7) == [
        "root",
        "tbf",
        "rate",
        "10000000bit",
        "burst",
        "15000",
        "latency",
        "50ms",
    ]
    assert nodes.tbf_args(10**9)[5] == "1250000"


def test_root_qdisc_from_recorded_tc_output() -> None:
    assert nodes.parse_root_qdisc(TC_TBF) == nodes.Qdisc("tbf", "8001:", 10_000_000)
    assert nodes.parse_root_qdisc(TC_TBF).describe() == "tbf 8001: rate 10Mbit"
    assert nodes.parse_root_qdisc(TC_TBF_1500K).rate == 1_500_000
    assert nodes.parse_root_qdisc(TC_DEFAULT) == nodes.Qdisc("noqueue")
    assert nodes.parse_root_qdisc(TC_DEFAULT).describe() == "noqueue"


def test_the_hosts_end_of_a_nodes_link_is_found_by_its_altname() -> None:
    """nspawn names the link vb-<bridge><hash> (the name is over 15 characters) and keeps vb-<machine> as its
    alternative name, which ip resolves and tc does not: tc gets the kernel's name."""
    assert nodes.machine_name("itl-hlp0", "node2") == "itl-hlp0-node2"
    assert nodes.veth_altname("itl-hlp0", "node2") == "vb-itl-hlp0-node2"
    assert nodes.parse_link_name(IP_LINK, "itl-hlp0") == "vb-itl-hlp0YxJl"
    assert nodes.parse_link_name(IP_LINK, "itl-dev0") is None  # a port of another bridge is not touched
    assert nodes.parse_link_name("[]", "itl-hlp0") is None


def test_spawn_uses_the_machine_name_that_names_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    class Proc:
        pid = 4242

    def popen(argv: list[str], **_kw: Any) -> Proc:
        seen.append(argv)
        return Proc()

    monkeypatch.setattr(nodes, "CGROUP_ROOTS", (tmp_path / "cg",))
    monkeypatch.setattr(nodes.subprocess, "Popen", popen)
    assert nodes.spawn_node("node2", tmp_path, nodes.Net(BRIDGE, PREFIX), [], tmp_path / "log") == 4242
    assert f"--machine={nodes.machine_name(BRIDGE, 'node2')}" in seen[0]


def test_what_remains_of_a_node_reads_as_words() -> None:
    assert not nodes.Remains() and nodes.Remains().describe() == "nothing"
    assert nodes.Remains({12, 3}, exiting=True, link=True).describe() == "processes 3, 12, its link"
    assert nodes.Remains(exiting=True).describe() == "processes still exiting in its cgroup"


def test_a_node_that_does_not_go_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "kill_node", lambda *_a: None)
    monkeypatch.setattr(
        nodes, "remains", lambda _c, node, _p: nodes.Remains({77}) if node == "node3" else nodes.Remains()
    )
    with pytest.raises(IntellectError, match=r"node node3 did not power off within 0 s: processes 77 left"):
        nodes.power_off(BRIDGE, "node3", 77, timeout=0.2)
    monkeypatch.setattr(nodes, "node_cgroups_present", lambda _c: ["node2", "node3"])
    monkeypatch.setattr(nodes, "is_node_nspawn", lambda *_a: False)
    monkeypatch.setattr(nodes, "settle", lambda _c, pids, _t, kill: {"node3": nodes.Remains({77})})
    with pytest.raises(IntellectError, match=r"did not stop after SIGKILL: node3: processes 77$"):
        nodes.stop_nodes(BRIDGE, {"node2": 10, "node3": 77})


def test_settle_waits_for_the_link_and_deletes_it_once_the_processes_are_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds = iter(
        [nodes.Remains({5}), nodes.Remains(exiting=True), nodes.Remains(link=True), nodes.Remains()]
    )
    deleted: list[tuple[str, ...]] = []
    monkeypatch.setattr(nodes, "remains", lambda *_a: next(rounds))
    monkeypatch.setattr(nodes, "_ip", lambda *args, check=True: deleted.append(args))
    assert nodes.settle(BRIDGE, {"node1": None}, timeout=5, kill=False) == {}
    assert deleted == [("link", "del", "vb-itl-unit0-node1")]


# ------------------------------------------------------------------------------------- the CLI boundary
def _state(tmp_path: Path, count: int = 3, **extra: Any) -> Path:
    state = {"nodes": count, "pids": {f"node{i}": 1000 + i for i in range(1, count + 1)}}
    state |= {
        "net": {"bridge": BRIDGE, "prefix": PREFIX},
        "lower": str(tmp_path / "lower"),
        "binds": [],
        "off": [],
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "state.json").write_text(json.dumps(state | extra))
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return int(exit_.value.code or 0), capsys.readouterr().err


@pytest.fixture
def untouchable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host-side call fails the test: argument checks come before anything is touched."""

    def touched(*_a: Any, **_k: Any) -> None:
        raise AssertionError("touched the host before the arguments were checked")

    for name in ("power_off", "spawn_node", "overlay_mount", "shape", "link_ends", "stop_nodes"):
        monkeypatch.setattr(nodes, name, touched)
    monkeypatch.setattr(cluster_mod, "require_root_and_tools", touched)


@pytest.mark.parametrize(
    "argv",
    [["power-off", "node9"], ["power-on", "node0"], ["degrade", "node4", "--rate", "10mbit"],
     ["power-off", "../node1"], ["power-on", "node1; reboot"], ["degrade", "NODE1", "--clear"]],
)  # fmt: skip
def test_unknown_nodes_are_misuse_and_list_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], untouchable: None, argv: list[str]
) -> None:
    code, err = _run(capsys, "dev-cluster", *argv, "--state-dir", str(_state(tmp_path)))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: unknown dev-cluster node {argv[1]!r}"), err
    assert "(nodes: node1, node2, node3)" in err


def test_without_a_cluster_there_is_no_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], untouchable: None
) -> None:
    code, err = _run(capsys, "dev-cluster", "power-off", "node1", "--state-dir", str(tmp_path / "none"))
    assert code == 2 and "(nodes: none: start one with intellect dev-cluster up)" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--rate", "10furlongs"],
            "error: --rate: '10furlongs' is not a rate: a number and one of bit, kbit",
        ),
        (["--rate", "0mbit"], "error: --rate: '0mbit' is out of range"),
        (["--rate", ""], "error: --rate: '' is not a rate"),
        ([], "error: degrade takes --rate RATE or --clear (one of them)"),
        (["--rate", "10mbit", "--clear"], "error: degrade takes --rate RATE or --clear (one of them)"),
    ],
)
def test_degrade_checks_its_flags_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], untouchable: None, flags: list[str], message: str
) -> None:
    code, err = _run(capsys, "dev-cluster", "degrade", "node2", *flags, "--state-dir", str(_state(tmp_path)))
    assert code == 2 and err.count("\n") == 1 and err.startswith(message), err


# --------------------------------------------------------------------------------------- bookkeeping
@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fake host: which nspawn PIDs run, and what was spawned, killed and shaped."""
    fake: dict[str, Any] = {"running": {1001, 1002, 1003}, "spawned": [], "killed": [], "next_pid": 2000}

    def spawn(name: str, root: Path, net: nodes.Net, binds: list[str], log: Path) -> int:
        fake["next_pid"] += 1
        fake["spawned"].append((name, root, net.bridge, binds, log.name))
        fake["running"].add(fake["next_pid"])
        return int(fake["next_pid"])

    def power_off(cluster: str, node: str, pid: int | None, timeout: float = 30.0) -> None:
        fake["killed"].append((node, pid))
        fake["running"].discard(pid)

    monkeypatch.setattr(cluster_mod, "require_root_and_tools", lambda: None)
    monkeypatch.setattr(nodes, "is_node_nspawn", lambda pid, _c, _n: pid in fake["running"])
    monkeypatch.setattr(nodes, "power_off", power_off)
    monkeypatch.setattr(nodes, "spawn_node", spawn)
    monkeypatch.setattr(nodes, "overlay_mount", lambda lower, node_dir: node_dir / "root")
    monkeypatch.setattr(nodes, "link_exists", lambda _name: True)
    monkeypatch.setattr(nodes, "wait_for_port", lambda *_a, **_k: True)
    monkeypatch.setattr(nodes, "host_link", lambda _c, _n: None)
    return fake


def test_power_off_records_the_node_off_and_power_on_boots_it_the_same_way(
    tmp_path: Path, host: dict[str, Any]
) -> None:
    dev = DevCluster(_state(tmp_path, binds=["--bind=/a:/a"]))
    said: list[str] = []
    assert dev.power_off("node3", said.append) is True
    state = dev.read_state()
    assert state["off"] == ["node3"] and "node3" not in state["pids"] and host["killed"] == [("node3", 1003)]
    assert [n["power"] for n in dev.status()["nodes"]] == ["on", "on", "off"]
    assert dev.power_off("node3", said.append) is False  # off already: says so, kills what may be left
    assert said[-1] == "node3 is off already (nothing of it is left running)"

    assert dev.power_on("node3", said.append) is True
    assert host["spawned"] == [
        ("node3", tmp_path / "nodes/node3/root", BRIDGE, ["--bind=/a:/a"], "node3.console.log")
    ]
    state = dev.read_state()
    assert state["off"] == [] and state["pids"]["node3"] == 2001
    assert said[-1].startswith("node3 powered on in ")
    assert dev.power_on("node3", said.append) is False and said[-1] == "node3 is on already"
    assert len(host["spawned"]) == 1


def test_a_node_that_died_by_itself_shows_failed_and_power_on_cleans_up_first(
    tmp_path: Path, host: dict[str, Any]
) -> None:
    dev = DevCluster(_state(tmp_path))
    host["running"].discard(1002)
    assert [n["power"] for n in dev.status()["nodes"]] == ["on", "failed", "on"]
    assert dev.power_on("node2", lambda _m: None) is True
    assert host["killed"] == [("node2", 1002)] and dev.read_state()["pids"]["node2"] == 2001


def test_power_on_needs_what_up_recorded(tmp_path: Path, host: dict[str, Any]) -> None:
    state = json.loads(_state(tmp_path).joinpath("state.json").read_text())
    del state["binds"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    host["running"].discard(1001)
    with pytest.raises(IntellectError, match="booted by an older intellect") as err:
        DevCluster(tmp_path).power_on("node1", lambda _m: None)
    assert (
        err.value.hint == "intellect dev-cluster down && intellect dev-cluster up" and host["spawned"] == []
    )


def test_degrading_an_off_node_says_to_power_it_on(tmp_path: Path, host: dict[str, Any]) -> None:
    dev = DevCluster(_state(tmp_path))
    dev.power_off("node2", lambda _m: None)
    with pytest.raises(IntellectError, match="node2 is not running: it has no link") as err:
        dev.degrade("node2", "10mbit")
    assert not isinstance(err.value, UsageError) and err.value.hint == "intellect dev-cluster power-on node2"


def test_degrade_shapes_both_ends_and_undoes_the_first_when_the_second_fails(
    tmp_path: Path, host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int | None]] = []

    def shape(dev: str, bits: int | None, netns: int | None = None) -> nodes.Qdisc:
        calls.append((dev, bits))
        if netns == 666:
            raise IntellectError("tc on host0 failed")
        return nodes.Qdisc("tbf", "8001:", bits) if bits else nodes.Qdisc("noqueue")

    monkeypatch.setattr(nodes, "shape", shape)
    monkeypatch.setattr(nodes, "link_ends", lambda _c, _n, _p: [("vb-itl-unit0Ab", None), ("host0", 4242)])
    ends = DevCluster(_state(tmp_path)).degrade("node2", "10mbit")
    assert [e.as_json() for e in ends] == [
        {"device": "vb-itl-unit0Ab", "side": "host", "qdisc": "tbf", "rate_bit": 10_000_000},
        {"device": "host0", "side": "node", "qdisc": "tbf", "rate_bit": 10_000_000},
    ]
    calls.clear()
    monkeypatch.setattr(nodes, "link_ends", lambda _c, _n, _p: [("vb-itl-unit0Ab", None), ("host0", 666)])
    with pytest.raises(IntellectError, match="tc on host0 failed"):
        DevCluster(tmp_path).degrade("node2", "1mbit")
    assert calls == [("vb-itl-unit0Ab", 1_000_000), ("host0", 1_000_000), ("vb-itl-unit0Ab", None)]


def test_up_powers_on_the_nodes_that_were_powered_off(
    tmp_path: Path, host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = DevCluster(_state(tmp_path))
    dev.power_off("node1", lambda _m: None)
    monkeypatch.setattr(DevCluster, "_write_inventory", lambda self, count: None)
    monkeypatch.setattr(DevCluster, "_link_recipes", lambda self: None)
    monkeypatch.setattr(
        DevCluster, "teardown", lambda self, log: pytest.fail("up tore down a cluster it can keep")
    )
    assert dev.boot(3, lambda _m: None) is False
    assert [s[0] for s in host["spawned"]] == ["node1"] and dev.read_state()["off"] == []


def test_up_records_how_each_node_was_booted(
    tmp_path: Path, host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What power-on reads back: the lower layer and the binds every node was booted with."""
    lower, repo = tmp_path / "node-image", tmp_path / "repo"
    monkeypatch.setattr(cluster_mod.image, "ensure_base_image", lambda log: tmp_path / "base.tar.zst")
    monkeypatch.setattr(cluster_mod.image, "ensure_node_image", lambda base, log: lower)
    monkeypatch.setattr(cluster_mod.image, "ensure_repo", lambda base, log: repo)
    monkeypatch.setattr(cluster_mod, "software_share", lambda: [Path("/opt/venv")])
    monkeypatch.setattr(nodes, "bridge_up", lambda net: None)
    monkeypatch.setattr(nodes, "link_exists", lambda _name: False)  # no earlier cluster to clean up
    monkeypatch.setattr(nodes, "pids_in_cgroups", lambda _c, _n=None: set())
    monkeypatch.setattr(DevCluster, "teardown", lambda self, log: pytest.fail("nothing to tear down"))
    for method in ("_prepare_secrets", "_write_inventory", "_link_recipes", "_customize"):
        monkeypatch.setattr(DevCluster, method, lambda self, *a: None)
    dev = DevCluster(tmp_path / "state", nodes.Net(BRIDGE, PREFIX))
    assert dev.boot(2, lambda _m: None) is True
    state = dev.read_state()
    binds = [f"--bind-ro={repo}:/srv/intellect-repo", f"--bind={dev.shared_dir}:{dev.shared_dir}"]
    assert state["lower"] == str(lower) and state["binds"] == [*binds, "--bind-ro=/opt/venv:/opt/venv"]
    assert state["pids"] == {"node1": 2001, "node2": 2002} and state["off"] == []
    assert [s[0] for s in host["spawned"]] == ["node1", "node2"]
