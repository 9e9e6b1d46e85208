"""The dev cluster end to end: 4 nspawn nodes provisioned with the production playbooks (the session's
`dev_cluster` fixture boots them once), then Slurm, the exporters, a no-change rerun, and `down`.

Needs root, systemd-container, debootstrap and zstd (scripts/debian-deps) and the ops extra (ansible-core,
ansible-runner).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.devcluster import BRIDGE, PREFIX, host_intellect, wait

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_slurm_runs_across_every_node(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    dev, names, n = dev_cluster.dev, list(dev_cluster.names), len(dev_cluster.names)

    def idle() -> list[str]:
        out = dev.ssh(1, "sinfo -h -N -o '%N %t'").stdout.split("\n")
        lines = [line.split() for line in out if line.strip()]
        return [n for n, s in lines if s == "idle"] if len(lines) == len(names) else []

    assert sorted(wait(idle)) == names
    run = dev.ssh(1, f"srun -N{n} hostname")
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.split()) == names

    def accounted() -> str:
        out = dev.ssh(1, "sacct -a -X -n -P -o JobName,State,NNodes -S now-1hours").stdout
        return out if f"hostname|COMPLETED|{n}" in out else ""

    assert wait(accounted, 20), dev.ssh(1, "sacct -a -X -n -P -S now-1hours").stdout


def test_stand_in_exporters_and_prometheus(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    dev = dev_cluster.dev
    metrics = dev.ssh(
        2,
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:9400/metrics').read().decode())\"",
    )
    assert 'DCGM_FI_DEV_XID_ERRORS{gpu="1"' in metrics.stdout
    ready = dev.ssh(
        1, "systemctl is-active prometheus prometheus-alertmanager prometheus-node-exporter munge slurmdbd"
    )
    assert ready.stdout.split() == ["active"] * 5


def test_intellect_runs_on_the_nodes_from_the_software_share(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    """`dev-cluster ssh` logs in to a node, in the shared folder; `intellect` there is this checkout's venv."""
    res = host_intellect(
        "dev-cluster", "ssh", "node2", "--", "sh", "-c", "pwd; ls recipes", env=dev_cluster.env
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == str(dev_cluster.shared) and "debug-cluster.yaml" in res.stdout.split()
    res = host_intellect(
        "dev-cluster", "ssh", "node3", "--", "intellect", "nodes", "--json", env=dev_cluster.env
    )
    assert res.returncode == 0, res.stderr
    assert [n["name"] for n in json.loads(res.stdout)["nodes"]] == list(dev_cluster.names)
    res = host_intellect("dev-cluster", "ssh", "--", "hostname", env=dev_cluster.env)  # node1 by default
    assert res.returncode == 0 and res.stdout.strip() == "node1", res.stderr
    res = host_intellect("dev-cluster", "ssh", "node9", env=dev_cluster.env)
    known = ", ".join(dev_cluster.names)
    assert res.returncode == 2 and f"unknown dev-cluster node 'node9' (nodes: {known})" in res.stderr


def test_each_node_has_its_own_ssh_host_key(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    keys = [
        dev_cluster.dev.ssh(i, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
        for i in range(1, len(dev_cluster.names) + 1)
    ]
    assert len(set(keys)) == len(dev_cluster.names)


def test_node_image_leaves_keys_and_daemons_to_the_playbooks(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    """The cached node image has the packages but no munge key and no daemon enabled: the playbooks key, enable
    and start them on each node (the image stands for a site's golden image, not for provisioning)."""
    from intellect.devcluster import image

    lower = image.node_image_path()
    assert (lower / "usr/sbin/slurmctld").exists() and not (lower / "etc/munge/munge.key").exists()
    wants = lower / "etc/systemd/system/multi-user.target.wants"
    assert not {p.name for p in wants.iterdir()} & set(image.NODE_UNITS)
    dev = dev_cluster.dev
    cluster_key = subprocess.run(
        ["sha256sum", str(dev.state_dir / "munge.key")], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    for i in range(1, len(dev_cluster.names) + 1):
        out = dev.ssh(i, "sha256sum /etc/munge/munge.key; systemctl is-enabled munge slurmd").stdout.split()
        assert out[0] == cluster_key and out[2:] == ["enabled", "enabled"], out


def test_second_provision_changes_nothing(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    dev = dev_cluster.dev
    res = host_intellect("provision", "-i", str(dev.inventory_dir), "--json", env=dev_cluster.env)
    assert res.returncode == 0, res.stderr[-3000:]
    recap = json.loads(res.stdout)
    assert sorted(recap["hosts"]) == list(dev_cluster.names)
    assert {h: r["changed"] for h, r in recap["hosts"].items()} == dict.fromkeys(dev_cluster.names, 0), recap[
        "changed_tasks"
    ]


@pytest.mark.devcluster_down
def test_down_leaves_nothing_behind(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    from intellect.devcluster import nodes

    if dev_cluster.reused:
        pytest.skip("INTELLECT_TEST_DEVCLUSTER_DIR: a cluster started by hand stays up")
    dev = dev_cluster.dev
    pids = [int(p) for p in dev.read_state()["pids"].values()]
    ports = subprocess.run(["ip", "-o", "link", "show", "master", BRIDGE], capture_output=True, text=True)
    veths = [line.split(":")[1].strip().split("@")[0] for line in ports.stdout.splitlines()]
    assert len(veths) == len(dev_cluster.names)  # the host's end of each node's link
    res = host_intellect("dev-cluster", "down", env=dev_cluster.env)
    assert res.returncode == 0, res.stderr
    assert wait(lambda: not [p for p in pids if nodes.alive(p)], 10)  # PID 1 may reap late
    assert nodes.pids_in_cgroups(BRIDGE) == set()
    assert nodes.mounts_under(dev.state_dir) == []
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert BRIDGE not in links and not [v for v in veths if v in links]
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


def test_health_on_the_login_node_needs_no_flags(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    """Provisioning writes /etc/intellect/site.yaml (where Prometheus is) and labels every target with its node:
    `intellect health` on node1, with no flag, gives each healthy node a verdict of ok."""
    site = dev_cluster.dev.ssh(1, "cat /etc/intellect/site.yaml").stdout
    assert "prometheus_url:" in site
    deadline = time.monotonic() + 60  # a fresh Prometheus needs a scrape or two of every target
    while True:
        proc = dev_cluster.cli("health", "--json")
        assert proc.returncode == 0, proc.stderr
        verdicts = {v["node"]: v for v in json.loads(proc.stdout)["nodes"]}
        if all(v["status"] == "ok" for v in verdicts.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sorted(verdicts) == list(dev_cluster.names)
    assert {n: v["status"] for n, v in verdicts.items()} == dict.fromkeys(dev_cluster.names, "ok"), verdicts
    # the verdict column of `intellect nodes`, from the same site file
    listed = json.loads(dev_cluster.cli("nodes", "--json").stdout)["nodes"]
    assert {n["name"]: n["health"] for n in listed} == dict.fromkeys(dev_cluster.names, "ok")
    # and the launch's health gate, on with no --prometheus, vouches for every node
    data = yaml.safe_load((ROOT / "recipes" / "debug-cluster.yaml").read_text())
    data["cluster"]["health"]["gate"] = True
    folder = dev_cluster.fresh_dir("gated")
    data["run_dir"] = str(folder / "run")
    recipe = folder / "gated.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = dev_cluster.cli("launch", str(recipe), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    gate = json.loads(proc.stdout)["health_gate"]
    assert (
        gate["status"] == "passed" and gate["exclude"] == [] and gate["checked"] == len(dev_cluster.names)
    ), gate


def test_the_watchdog_drains_only_the_node_whose_exporter_reports_a_fault(dev_cluster) -> None:  # type: ignore[no-untyped-def]
    """The watchdog's unit as the monitoring role installs it on node1 (User=slurm, its state directory, Prometheus
    from the site file), started with a runtime drop-in for test timings (--poll 1 --hold 3; PrivateTmp off and /home,
    /root read-only rather than hidden, since the checkout's venv and its Python may live in the host's /tmp or
    /root): Xid 79 injected into node2's stand-in dcgm-exporter drains
    node2, and only node2, with the watchdog's token in the reason; once the GPU is reset it resumes node2 after its
    hold. The dev cluster samples and scrapes every 1 s; the seconds it took are printed, not asserted."""
    import httpx

    dropin = "/run/systemd/system/intellect-watchdog.service.d"
    conf = ("[Service]\nExecStart=\nExecStart=/usr/local/bin/intellect watchdog --listen 127.0.0.1:9419 --poll 1 "
            "--hold 3\nPrivateTmp=no\nProtectHome=read-only\n")  # fmt: skip
    setup = dev_cluster.login(["sh", "-c", f"mkdir -p {dropin} && printf '%s' {shlex.quote(conf)} > {dropin}/test.conf"
                               " && systemctl daemon-reload && systemctl start intellect-watchdog"])  # fmt: skip
    assert setup.returncode == 0, setup.stderr
    exporter = f"http://{dev_cluster.dev.net.node_addr(2)}:9400"

    def journal() -> str:
        return dev_cluster.login(["journalctl", "-u", "intellect-watchdog", "--no-pager", "-o", "cat"]).stdout

    def reasons() -> dict[str, str]:
        out = dev_cluster.slurm("sinfo", "-N", "-h", "-R", "-o", "%N|%E")
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    try:
        assert wait(lambda: "watching via" in journal(), 60), journal()[-3000:]
        assert (
            dev_cluster.login(
                ["systemctl", "show", "-p", "User", "--value", "intellect-watchdog"]
            ).stdout.strip()
            == "slurm"
        )
        begin = time.monotonic()
        httpx.post(f"{exporter}/fault", json={"gpu": 1, "xid": 79}, timeout=5).raise_for_status()
        assert wait(lambda: "node2" in reasons(), 60, every=0.2), journal()[-3000:]
        print(
            f"Xid 79 injected -> node2 drained in {time.monotonic() - begin:.1f} s (1 s samples and scrapes, 1 s polls)"
        )
        drained = reasons()
        assert list(drained) == ["node2"], drained
        assert "watchdog: Xid 79" in drained["node2"] and "wd-token" in drained["node2"]
        httpx.post(f"{exporter}/clear", json={"gpu": 1}, timeout=5).raise_for_status()
        assert wait(lambda: not reasons(), 90), journal()[-3000:]
        state = dev_cluster.login(["cat", "/var/lib/intellect/watchdog-state.json"])
        assert state.returncode == 0 and '"held": {}' in state.stdout.replace("\n", ""), (
            state.stdout + state.stderr
        )
    finally:
        dev_cluster.login(
            ["sh", "-c", f"systemctl stop intellect-watchdog; rm -rf {dropin}; systemctl daemon-reload"]
        )
        dev_cluster.reset()
