"""``intellect dev-cluster up | status | down | ssh``: a several-node Slurm cluster on this machine (needs root),
and the faults to break it with: ``power-off``, ``power-on`` and ``degrade`` of one node."""

from __future__ import annotations

import time
from pathlib import Path

import click

from intellect.cli.output import data_console, emit_json, status, verbatim


def _cluster(state_dir: Path | None):  # type: ignore[no-untyped-def]
    from intellect.devcluster.cluster import DevCluster, default_state_dir

    return DevCluster(state_dir or default_state_dir())


STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    envvar="INTELLECT_DEVCLUSTER_DIR",
    show_envvar=True,
    help="Where the nodes, inventory and shared folder live [default: /var/lib/intellect/devcluster].",
)


@click.group("dev-cluster")
def dev_cluster() -> None:
    """N systemd-nspawn nodes on a private bridge, provisioned by the production playbooks."""


@dev_cluster.command("up")
@click.option("--nodes", "count", type=int, default=3, show_default=True, help="Number of nodes.")
@STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the provision recap as JSON on stdout.")
def up_cmd(count: int, state_dir: Path | None, as_json: bool) -> None:
    """Boot the nodes (or keep the running ones) and provision them; idempotent, cleans up a failed run."""
    from intellect.cli.provision import provision

    cluster = _cluster(state_dir)
    start = time.monotonic()
    try:
        cluster.boot(count, status)
        provision(cluster.inventory_dir, as_json=as_json)
    except BaseException:
        status(f"dev-cluster up failed; the nodes stay up for inspection (see {cluster.state_dir}/logs)")
        raise
    status(
        f"dev cluster ready in {time.monotonic() - start:.0f} s: slurmctld+slurmdbd on node1, "
        f"Prometheus on {cluster.net.node_addr(1)}:9090; shared folder {cluster.shared_dir}"
    )


@dev_cluster.command("status")
@STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_cmd(state_dir: Path | None, as_json: bool) -> None:
    """Show the nodes, their addresses and whether they run and answer on SSH."""
    from intellect.devcluster.cluster import require_root_and_tools

    require_root_and_tools()
    info = _cluster(state_dir).status()
    if as_json:
        emit_json(info)
        return
    if not info["up"]:
        status("no dev cluster (start one: intellect dev-cluster up --nodes 3)")
        return
    from rich.table import Table

    table = Table(title=f"dev cluster in {verbatim(info['state_dir'])}", title_justify="left")
    for col in ("node", "address", "power", "ssh", "link"):
        table.add_column(col)
    for n in info["nodes"]:
        power = "FAILED" if n["power"] == "failed" else n["power"]
        ssh = "-" if not n["running"] else "yes" if n["ssh"] else "NO"
        table.add_row(n["name"], n["address"], power, ssh, verbatim(n["link"] or "-"))
    data_console().print(table)
    status(f"inventory: {info['inventory']}  shared: {info['shared']}  login: {info['ssh']}")


@dev_cluster.command("down")
@STATE_DIR
def down_cmd(state_dir: Path | None) -> None:
    """Stop every node; remove mounts, bridge, cgroups and state (the shared folder stays)."""
    _cluster(state_dir).teardown(status)


@dev_cluster.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("node", default="node1")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@STATE_DIR
def ssh_cmd(node: str, command: tuple[str, ...], state_dir: Path | None) -> None:
    """Log in to NODE (default node1, the controller and login node), or run COMMAND there.

    Both start in the shared folder, where recipes/ links to this checkout's recipes, so a launch's relative
    run folder lands on the storage every node sees.

    \b
    intellect dev-cluster ssh                      # a shell on node1
    intellect dev-cluster ssh node1 -- intellect nodes --json
    intellect dev-cluster ssh -- intellect launch recipes/debug-cluster.yaml
    """
    import os
    import re
    import shlex

    cluster = _cluster(state_dir)
    if not re.fullmatch(r"node\d+", node):  # `ssh -- CMD`: NODE was left out, this is the command
        node, command = "node1", (node, *command)
    index = cluster.node_index(node)
    cd = f"cd {shlex.quote(str(cluster.shared_dir))} && exec "
    remote = cd + (shlex.join(command) if command else "${SHELL:-/bin/bash} -l")
    argv = cluster.ssh_argv(index, remote, tty=not command)
    os.execvp(argv[0], argv)


@dev_cluster.command("power-off")
@click.argument("node")
@STATE_DIR
def power_off_cmd(node: str, state_dir: Path | None) -> None:
    """Cut NODE's power: every process of it is killed at once, with no shutdown, as a real node losing power.

    Returns once none of them is left. Its disk (the overlay's upper layer) is kept for power-on; Slurm marks
    the node not responding, then down, after its SlurmdTimeout. Powering off an off node does nothing."""
    _cluster(state_dir).power_off(node, status)


@dev_cluster.command("power-on")
@click.argument("node")
@STATE_DIR
def power_on_cmd(node: str, state_dir: Path | None) -> None:
    """Boot NODE again from its kept disk; returns once its sshd answers (its systemd starts munge and slurmd).

    Powering on a running node says so and does nothing."""
    _cluster(state_dir).power_on(node, status)


@dev_cluster.command("degrade")
@click.argument("node")
@click.option(
    "--rate", default=None, metavar="RATE", help="Link rate, as tc writes it: 10mbit, 500kbit, 2mbps..."
)
@click.option("--clear", is_flag=True, help="Remove the slowdown: the link runs at full speed again.")
@STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print both ends' qdiscs as JSON on stdout.")
def degrade_cmd(node: str, rate: str | None, clear: bool, state_dir: Path | None, as_json: bool) -> None:
    """Slow NODE's link to RATE, both ways (a tbf qdisc on each end of its veth), or --clear it.

    \b
    intellect dev-cluster degrade node3 --rate 10mbit
    intellect dev-cluster degrade node3 --clear
    """
    from intellect.errors import UsageError

    if clear == (rate is not None):
        raise UsageError("degrade takes --rate RATE or --clear (one of them)")
    ends = _cluster(state_dir).degrade(node, None if clear else rate)
    if as_json:
        emit_json({"node": node, "ends": [end.as_json() for end in ends]})
        return
    for end in ends:
        towards = "to" if end.side == "host" else "from"
        status(
            f"{node}: {verbatim(end.qdisc.describe())} on {verbatim(end.device)} (traffic {towards} {node})"
        )
