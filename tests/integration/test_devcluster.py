"""The dev cluster end to end: boot 3 nspawn nodes, provision them with the production playbooks, use Slurm.

Needs root, systemd-container, debootstrap and zstd (scripts/debian-deps) and the ops extra (ansible-core,
ansible-runner). The first run builds the base image with debootstrap (about 100 s) and caches it in
/var/cache/intellect/devcluster. It uses its own bridge, subnet and state folder, and always tears down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BRIDGE, PREFIX = "itl-test0", "10.214.0"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the dev cluster needs root"
    missing = [
        t
        for t in ("systemd-nspawn", "debootstrap", "zstd", "dpkg-scanpackages", "ssh")
        if not shutil.which(t)
    ]
    if missing:
        return f"missing host tools {missing}; scripts/debian-deps installs them"
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        return "ansible-runner is not installed (the ops extra)"
    return None


def intellect(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess: through `intellect` when the group is registered, else the group itself."""
    from intellect.cli import main as cli_main

    registered = "dev-cluster" in getattr(cli_main.cli, "commands", {})
    if registered:
        argv = [sys.executable, "-m", "intellect.cli.main", *args]
    else:
        group = "dev_cluster" if args[0] == "dev-cluster" else "provision_cmd"
        mod = "devcluster" if args[0] == "dev-cluster" else "provision"
        rest = args[1:]
        argv = [sys.executable, "-c", f"from intellect.cli.{mod} import {group}; {group}()", *rest]
    full = {**os.environ, "NO_COLOR": "1", **env}
    return subprocess.run(argv, capture_output=True, text=True, env=full, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from intellect.devcluster.cluster import DevCluster
    from intellect.devcluster.nodes import Net

    state = tmp_path_factory.mktemp("devcluster")
    env = {
        "INTELLECT_DEVCLUSTER_DIR": str(state),
        "INTELLECT_DEVCLUSTER_BRIDGE": BRIDGE,
        "INTELLECT_DEVCLUSTER_PREFIX": PREFIX,
    }
    dev = DevCluster(state, Net(BRIDGE, PREFIX))
    try:
        res = intellect("dev-cluster", "up", "--nodes", "3", env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        yield dev, env
    finally:
        dev.teardown(lambda _msg: None)


def _wait(probe, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(1)


def test_slurm_runs_across_three_nodes(cluster) -> None:  # type: ignore[no-untyped-def]
    dev, _env = cluster

    def idle() -> list[str]:
        out = dev.ssh(1, "sinfo -h -N -o '%N %t'").stdout.split("\n")
        lines = [line.split() for line in out if line.strip()]
        return [n for n, s in lines if s == "idle"] if len(lines) == 3 else []

    assert sorted(_wait(idle)) == ["node1", "node2", "node3"]
    run = dev.ssh(1, "srun -N3 hostname")
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.split()) == ["node1", "node2", "node3"]

    def accounted() -> str:
        out = dev.ssh(1, "sacct -a -X -n -P -o JobName,State,NNodes -S now-1hours").stdout
        return out if "hostname|COMPLETED|3" in out else ""

    assert _wait(accounted, 20), dev.ssh(1, "sacct -a -X -n -P -S now-1hours").stdout


def test_stand_in_exporters_and_prometheus(cluster) -> None:  # type: ignore[no-untyped-def]
    dev, _env = cluster
    metrics = dev.ssh(
        2,
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:9400/metrics').read().decode())\"",
    )
    assert 'DCGM_FI_DEV_XID_ERRORS{gpu="1"' in metrics.stdout
    ready = dev.ssh(
        1, "systemctl is-active prometheus prometheus-alertmanager prometheus-node-exporter munge slurmdbd"
    )
    assert ready.stdout.split() == ["active"] * 5


def test_second_provision_changes_nothing(cluster) -> None:  # type: ignore[no-untyped-def]
    dev, env = cluster
    res = intellect("provision", "-i", str(dev.inventory_dir), "--json", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    recap = json.loads(res.stdout)
    assert sorted(recap["hosts"]) == ["node1", "node2", "node3"]
    assert {h: r["changed"] for h, r in recap["hosts"].items()} == {"node1": 0, "node2": 0, "node3": 0}, (
        recap["changed_tasks"]
    )


def test_down_leaves_nothing_behind(cluster) -> None:  # type: ignore[no-untyped-def]
    from intellect.devcluster import nodes

    dev, env = cluster
    pids = [int(p) for p in dev.read_state()["pids"].values()]
    res = intellect("dev-cluster", "down", env=env)
    assert res.returncode == 0, res.stderr
    assert _wait(lambda: not [p for p in pids if nodes.alive(p)], 10)  # PID 1 may reap late
    assert nodes.pids_in_cgroups(BRIDGE) == set()
    assert nodes.mounts_under(dev.state_dir) == []
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert BRIDGE not in links and "vb-node" not in links
    assert (
        f"unreachable {PREFIX}.0/24"
        not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    )
    assert not any(root.joinpath(nodes.CGROUP_NAME, BRIDGE).exists() for root in nodes.CGROUP_ROOTS)
    assert sorted(p.name for p in dev.state_dir.iterdir()) == ["shared"]
    assert _processes_mentioning(PREFIX + ".") == [] and _processes_mentioning(str(dev.state_dir)) == []


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of processes that name a node address or the state folder (ssh masters, nspawn...)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd and "pytest" not in cmd:
                found.append(cmd)
    return found
