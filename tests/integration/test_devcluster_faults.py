"""Breaking the dev cluster on purpose: power a node off (every process of it ends at once, its disk stays),
power it on again, and slow its link with tc. Uses the session's `dev_cluster` and leaves it as it found it:
node3 on, idle in Slurm, its link at full speed.

Needs what tests/integration/test_devcluster.py needs (root, systemd-container, debootstrap, zstd, the ops extra)
and tc (iproute2).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from intellect.devcluster import nodes
from tests.integration.devcluster import NODES, host_intellect, wait

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
NODE, INDEX = "node3", 3


def _power(dev_cluster, verb: str) -> tuple[subprocess.CompletedProcess[str], float]:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    res = host_intellect("dev-cluster", verb, NODE, env=dev_cluster.env, timeout=180)
    return res, time.monotonic() - start


def _slurm_state(dev_cluster) -> str:  # type: ignore[no-untyped-def]
    """node3's state as sinfo -N writes it: idle, idle* (not responding), down*..."""
    return str(dev_cluster.login(["sinfo", "-h", "-N", "-n", NODE, "-o", "%t"]).stdout.strip())


def _slurmd_timeout(dev_cluster) -> int:  # type: ignore[no-untyped-def]
    config = dev_cluster.slurm("scontrol", "show", "config").splitlines()
    return int(next(line for line in config if line.startswith("SlurmdTimeout")).split("=")[1].split()[0])


def test_power_off_ends_every_process_and_power_on_boots_the_kept_disk(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    dev_cluster.reset()
    dev = dev_cluster.dev
    bridge = dev.net.bridge
    marker = f"written before the power cut {time.time()}"
    assert dev.ssh(INDEX, f"echo '{marker}' > /root/power-marker && sync").returncode == 0
    before = nodes.pids_in_cgroups(bridge, NODE)
    nspawn = int(dev.read_state()["pids"][NODE])
    assert nspawn in before and len(before) > 5, before  # nspawn, its systemd, sshd, munged, slurmd...

    res, took = _power(dev_cluster, "power-off")
    try:
        print(f"power-off of {NODE}: {took:.1f} s, {len(before)} processes")
        assert res.returncode == 0, res.stderr
        # when it returns, nothing of the node is left: no process in its cgroups, none of its old ones, no link
        assert nodes.pids_in_cgroups(bridge, NODE) == set()
        assert not [p for p in before if nodes.alive(p)], [p for p in before if nodes.alive(p)]
        assert not any(d.exists() for d in nodes.cgroup_dirs(bridge, NODE))
        assert not nodes.link_exists(nodes.veth_altname(bridge, NODE))
        assert not nodes.wait_for_port(dev.net.node_addr(INDEX), 22, timeout=2)
        assert nodes.mounts_under(dev.state_dir / "nodes" / NODE) == [
            str(dev.state_dir / "nodes" / NODE / "root")
        ]
        status = json.loads(host_intellect("dev-cluster", "status", "--json", env=dev_cluster.env).stdout)
        assert {n["name"]: n["power"] for n in status["nodes"]} == dict.fromkeys(dev_cluster.names, "on") | {
            NODE: "off"
        }
        assert dev.read_state()["off"] == [NODE]
        again = host_intellect("dev-cluster", "power-off", NODE, env=dev_cluster.env)
        assert again.returncode == 0 and "off already" in again.stderr, again.stderr
        # Slurm marks it not responding (`*`), then down. Its pings find that within SlurmdTimeout; when that is
        # long (300 s by default), a batch job sent there finds the node dead at once (its launch fails, ~15 s).
        timeout = _slurmd_timeout(dev_cluster)
        job = None
        if timeout > 60:
            job = dev_cluster.slurm("sbatch", "--parsable", "-w", NODE, "-t", "1", "--wrap", "true").strip()
        start = time.monotonic()
        state = wait(lambda: (s := _slurm_state(dev_cluster)).endswith("*") or s.startswith("down"), 90)
        print(
            f"Slurm (SlurmdTimeout {timeout} s): {NODE} {_slurm_state(dev_cluster)} {time.monotonic() - start:.0f} s on"
        )
        if job:
            dev_cluster.login(["scancel", job])
        assert state, dev_cluster.slurm("sinfo", "-h", "-N", "-n", NODE, "-o", "%t %E")
    finally:
        res, took = _power(dev_cluster, "power-on")
    print(f"power-on of {NODE}: {took:.1f} s to sshd")
    assert res.returncode == 0, res.stderr
    assert dev.ssh(INDEX, "cat /root/power-marker").stdout.strip() == marker  # the disk was kept
    assert dev.read_state()["off"] == [] and nodes.alive(int(dev.read_state()["pids"][NODE]))
    again = host_intellect("dev-cluster", "power-on", NODE, env=dev_cluster.env)
    assert again.returncode == 0 and "on already" in again.stderr, again.stderr
    # its systemd starts munge and slurmd; the controller takes it back (ReturnToService=2)
    dev_cluster.login(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"])
    assert wait(lambda: _slurm_state(dev_cluster) == "idle", 120), dev_cluster.slurm(
        "sinfo", "-N", "-o", "%N %t %E"
    )
    run = dev.ssh(1, f"srun -w {NODE} hostname")
    assert run.returncode == 0 and run.stdout.strip() == NODE, run.stderr


def _bytes_per_s(dev_cluster, nbytes: int, to_node: bool) -> float:  # type: ignore[no-untyped-def]
    """Bytes per second of one transfer over SSH between the host and node3 (to it, or from it)."""
    command = "cat > /dev/null" if to_node else f"head -c {nbytes} /dev/zero"
    argv = dev_cluster.dev.ssh_argv(INDEX, command)
    start = time.monotonic()
    res = subprocess.run(argv, input=b"\0" * nbytes if to_node else None, capture_output=True, timeout=120)
    took = time.monotonic() - start
    assert res.returncode == 0 and (to_node or len(res.stdout) == nbytes), res.stderr
    return nbytes / took


def test_degrade_slows_the_link_both_ways_and_clear_restores_it(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    bridge, rate = dev_cluster.dev.net.bridge, 8_000_000  # 8mbit: 1 MB/s
    full_to, full_from = _bytes_per_s(dev_cluster, 32 << 20, True), _bytes_per_s(dev_cluster, 32 << 20, False)
    res = host_intellect("dev-cluster", "degrade", NODE, "--rate", "8mbit", "--json", env=dev_cluster.env)
    try:
        assert res.returncode == 0, res.stderr
        ends = json.loads(res.stdout)["ends"]
        assert [(e["side"], e["qdisc"], e["rate_bit"]) for e in ends] == [
            ("host", "tbf", rate),
            ("node", "tbf", rate),
        ]
        link = nodes.host_link(bridge, NODE)
        assert link is not None and ends[0]["device"] == link
        assert nodes.root_qdisc(link) == nodes.Qdisc(
            "tbf", nodes.root_qdisc(link).handle, rate
        )  # tc says so too
        slow_to, slow_from = (
            _bytes_per_s(dev_cluster, 2 << 20, True),
            _bytes_per_s(dev_cluster, 2 << 20, False),
        )
        print(
            f"to {NODE}: {full_to / 1e6:.1f} MB/s, at 8mbit {slow_to / 1e6:.2f} MB/s (x{full_to / slow_to:.0f}); "
            f"from it: {full_from / 1e6:.1f} MB/s, at 8mbit {slow_from / 1e6:.2f} MB/s (x{full_from / slow_from:.0f})"
        )
        # ratios, not timings: tbf caps the rate (a loaded host can only make it lower), the full link is far faster
        assert slow_to < 1.2 * rate / 8 and slow_from < 1.2 * rate / 8, (slow_to, slow_from)
        assert full_to / slow_to > 4 and full_from / slow_from > 4, (full_to, slow_to, full_from, slow_from)
        text = host_intellect("dev-cluster", "status", env=dev_cluster.env).stdout
        assert "tbf" in text and "rate 8Mbit" in text, text
    finally:
        cleared = host_intellect("dev-cluster", "degrade", NODE, "--clear", "--json", env=dev_cluster.env)
    assert cleared.returncode == 0, cleared.stderr
    assert [e["qdisc"] for e in json.loads(cleared.stdout)["ends"]] == ["noqueue", "noqueue"]
    link = nodes.host_link(bridge, NODE)
    assert link is not None and nodes.root_qdisc(link).kind == "noqueue"
    again_to = _bytes_per_s(dev_cluster, 32 << 20, True)
    print(f"to {NODE} after --clear: {again_to / 1e6:.1f} MB/s")
    assert again_to / slow_to > 4, (again_to, slow_to)


def test_fault_commands_take_only_the_clusters_nodes(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    known = f"(nodes: {', '.join(dev_cluster.names)})"
    for argv in (
        ["power-off", f"node{NODES + 1}"],
        ["power-on", "node0"],
        ["degrade", "../node1", "--rate", "1mbit"],
    ):
        res = host_intellect("dev-cluster", *argv, env=dev_cluster.env)
        assert res.returncode == 2 and known in res.stderr and res.stderr.count("\n") == 1, res.stderr
    res = host_intellect("dev-cluster", "degrade", NODE, "--rate", "10mbits", env=dev_cluster.env)
    assert res.returncode == 2 and res.stderr.startswith("error: --rate: '10mbits' is not a rate"), res.stderr
    link = nodes.host_link(dev_cluster.dev.net.bridge, NODE)
    assert link is not None and nodes.root_qdisc(link).kind == "noqueue"  # nothing was touched
