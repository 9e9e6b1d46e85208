"""Node commands for the on-call engineer: ``nodes``, ``drain``, ``resume``, ``why``."""

from __future__ import annotations

import os

import click

from intellect.cli.output import emit_json, status, status_console, verbatim

NODES_HELP = "A hostlist such as node-[17,20-22]."


@click.command("nodes")
@click.option("--state", "states", multiple=True, help="Only nodes in this state (idle, drained, mixed...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def nodes_cmd(states: tuple[str, ...], as_json: bool) -> None:
    """Every node: state, health verdict, reason, who/when, GPUs and running jobs (one sinfo and one squeue call,
    and one Prometheus query when /etc/intellect/site.yaml names Prometheus)."""
    from intellect.slurm.nodes import query_nodes

    nodes = list(query_nodes().values())
    if states:
        nodes = [n for n in nodes if any(s in n.state for s in states)]
    health = _health([n.name for n in nodes])
    if as_json:
        emit_json({"nodes": [{**n.to_json(), "health": health.get(n.name)} for n in nodes]})
        return
    from rich.table import Table

    table = Table(title=f"{len(nodes)} nodes")
    for col in ("node", "state", "health", "reason", "by", "since", "gres", "jobs"):
        table.add_column(col)
    colour = {"ok": "green", "degraded": "yellow", "unknown": "magenta", "bad": "red"}
    for n in nodes:
        style = "red" if n.drained and not n.drained_by_us else ("yellow" if n.drained else "")
        verdict = health.get(n.name)
        table.add_row(
            verbatim(n.name),
            f"[{style}]{verbatim(n.state)}[/]" if style else verbatim(n.state),
            f"[{colour[verdict]}]{verdict}[/]" if verdict in colour else "-",
            verbatim(n.reason),
            verbatim(n.reason_user),
            verbatim(n.reason_time),
            verbatim(n.gres),
            verbatim(",".join(n.jobs)),
        )
    from intellect.cli.output import data_console

    data_console().print(table)


def _health(names: list[str]) -> dict[str, str]:
    """Each node's health verdict from one Prometheus query, when the site file says where Prometheus is (else
    none: the column shows '-'). A Prometheus that does not answer makes every verdict unknown, said once."""
    from intellect.site import load_site

    url = load_site().prometheus_url
    if not url or not names:
        return {}
    from intellect.health.config import load_thresholds
    from intellect.health.prom import PrometheusClient
    from intellect.health.rules import evaluate

    with PrometheusClient(url) as client:
        report = evaluate(client, load_thresholds(os.environ.get("INTELLECT_HEALTH_THRESHOLDS")), names)
    if report.error:
        status(f"health: {verbatim(report.error)} (every verdict is unknown)")
    return {name: v.status for name, v in report.verdicts.items()}


@click.command("drain")
@click.argument("nodes")
@click.option("--reason", required=True, help="Why: stored as '[intellect] <user> <UTC time>: REASON'.")
@click.option(
    "--requeue", is_flag=True, help="Also requeue our launches running there (they resume elsewhere)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
def drain_cmd(nodes: str, reason: str, requeue: bool, as_json: bool) -> None:
    """Drain NODES (a hostlist) with a reason; running jobs finish, no new job lands."""
    from intellect.slurm.nodes import expand_nodes
    from intellect.slurm.ops import drain

    names = expand_nodes(nodes)
    result = drain(names, reason)
    requeued: list[str] = []
    if requeue and result.changed:
        from intellect.runs import requeue_on

        requeued = requeue_on(result.changed)
    if as_json:
        emit_json({**result.to_json(), "requeued": requeued})
        return
    _report("drained", result, as_json)
    for job_id in requeued:
        status(f"requeued job {job_id}: it restarts on healthy nodes from its last checkpoint")


@click.command("resume")
@click.argument("nodes")
@click.option(
    "--force", is_flag=True, help="Also resume nodes a person drained (their reason lacks our prefix)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
def resume_cmd(nodes: str, force: bool, as_json: bool) -> None:
    """Resume NODES that intellect drained; refuses a person's drain unless --force."""
    from intellect.slurm.nodes import expand_nodes
    from intellect.slurm.ops import resume

    result = resume(expand_nodes(nodes), force=force)
    _report("resumed", result, as_json)


def _report(verb: str, result, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    if as_json:
        emit_json(result.to_json())
        return
    import hostlist

    if result.changed:
        status(
            f"{verb} {verbatim(hostlist.collect_hostlist(result.changed))}"
            + (f": {verbatim(result.reason)}" if result.reason else "")
        )
    for node, why in result.skipped.items():
        status(f"skipped {verbatim(node)}: {verbatim(why)}")


@click.command("why")
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def why_cmd(node: str, as_json: bool) -> None:
    """Why NODE is in its state: reason, our drain/resume history, recent jobs."""
    from intellect.slurm.nodes import expand_nodes, known, query_nodes, recent_jobs
    from intellect.slurm.ops import history

    (name,) = expand_nodes(node)[:1] or [node]
    nodes = query_nodes()
    known([name], nodes)
    n = nodes[name]
    hist, recent = history(name), recent_jobs(name)
    data = {"node": n.to_json(), "history": hist, "recent_jobs": recent}
    if as_json:
        emit_json(data)
        return
    con = status_console()
    con.print(
        f"[bold]{verbatim(name)}[/]: {verbatim(n.state)}"
        + (
            f" — {verbatim(n.reason)} (by {verbatim(n.reason_user)} at {verbatim(n.reason_time)})"
            if n.reason
            else ""
        )
    )
    con.print(
        "drained by intellect" if n.drained_by_us else ("drained by a person" if n.drained else "not drained")
    )
    con.print(f"running jobs: {verbatim(', '.join(n.jobs) or 'none')}")
    con.print("history (intellect journal):" if hist else "history: no drain/resume by intellect")
    for e in hist:
        con.print(verbatim(f"  {e['time']}  {e['user']:<10} {e['action']:<7} {e.get('reason') or ''}"))
    for j in recent:
        con.print(
            verbatim(
                f"  job {j.get('JobID')} {j.get('JobName')} {j.get('State')} {j.get('Start')} → {j.get('End')}"
            )
        )
