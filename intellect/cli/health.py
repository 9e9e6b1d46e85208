"""``intellect health [NODES]`` (verdict table) and ``intellect watchdog`` (the long-running drainer)."""

from __future__ import annotations

import click

from intellect.cli.output import emit_json

PROM_HELP = "Prometheus base URL, e.g. http://127.0.0.1:9090."
THRESH_HELP = "YAML file overriding the health thresholds (see intellect/health/config.py for defaults)."


@click.command("health")
@click.argument("nodes", required=False)
@click.option("--prometheus", "url", envvar="INTELLECT_PROMETHEUS_URL", show_envvar=True, required=True,
              help=PROM_HELP)  # fmt: skip
@click.option("--thresholds", envvar="INTELLECT_HEALTH_THRESHOLDS", show_envvar=True, default=None,
              type=click.Path(dir_okay=False), help=THRESH_HELP)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable verdicts on stdout.")
def health_cmd(nodes: str | None, url: str, thresholds: str | None, as_json: bool) -> None:
    """Per-node verdicts (ok / degraded / bad / unknown, with reasons) from ONE Prometheus query.

    NODES is a hostlist (node-[1-3]); without it, every node Slurm knows, or else every node Prometheus knows.
    No data is unknown, never ok. Exit 0 whatever the verdicts; read them from --json.
    """
    from intellect.health.config import load_thresholds
    from intellect.health.prom import PrometheusClient
    from intellect.health.rules import evaluate

    th = load_thresholds(thresholds)
    names = _nodes(nodes)
    with PrometheusClient(url) as client:
        report = evaluate(client, th, names)
    if report.error and not report.verdicts:
        from intellect.errors import IntellectError

        raise IntellectError(report.error, hint="intellect health NODES lists them as unknown")
    if as_json:
        emit_json(report.to_json())
        return
    _table(report)


def _nodes(spec: str | None) -> list[str] | None:
    from intellect.errors import SlurmUnreachable
    from intellect.slurm.nodes import expand_nodes, query_nodes

    if spec:
        return expand_nodes(spec)
    try:
        return sorted(query_nodes())
    except SlurmUnreachable:
        return None  # every node Prometheus knows


def _table(report) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    from intellect.cli.output import data_console, status_console

    colour = {"ok": "green", "degraded": "yellow", "unknown": "magenta", "bad": "red"}
    table = Table(title=f"{len(report.verdicts)} nodes ({report.seconds * 1000:.0f} ms, one query)")
    for col in ("node", "verdict", "reasons"):
        table.add_column(col)
    for v in report.verdicts.values():
        table.add_row(v.node, f"[{colour[v.status]}]{v.status}[/]", v.summary if v.status != "ok" else "")
    data_console().print(table)
    if report.error:
        status_console().print(f"[red]error:[/] {report.error}")


@click.command("watchdog")
@click.option("--prometheus", "url", envvar="INTELLECT_PROMETHEUS_URL", show_envvar=True, required=True,
              help=PROM_HELP)  # fmt: skip
@click.option("--thresholds", envvar="INTELLECT_HEALTH_THRESHOLDS", show_envvar=True, default=None,
              type=click.Path(dir_okay=False), help=THRESH_HELP)  # fmt: skip
@click.option("--poll", "poll_s", type=float, default=15.0, show_default=True, show_envvar=True,
              help="Seconds between evaluations (an Alertmanager webhook wakes it earlier).")  # fmt: skip
@click.option("--hold", "hold_s", type=float, default=300.0, show_default=True, show_envvar=True,
              help="Seconds a node it drained must stay healthy before it is resumed.")  # fmt: skip
@click.option("--listen", default="127.0.0.1:9419", show_default=True, show_envvar=True,
              help="HOST:PORT for the webhook (POST /alerts) and /metrics.")  # fmt: skip
@click.option("--max-drain-fraction", type=float, default=0.25, show_default=True, show_envvar=True,
              help="Never hold more than this share of the nodes drained (at least one).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Log what it would drain or resume; change nothing.")
def watchdog_cmd(
    url: str, thresholds: str | None, poll_s: float, hold_s: float, listen: str,
    max_drain_fraction: float, dry_run: bool,
) -> None:  # fmt: skip
    """Drain nodes as soon as they turn bad ('[intellect] ...: watchdog: Xid 79 on GPU 3'); resume only the
    nodes it drained, once healthy for --hold seconds; never touch a node a person drained."""
    from intellect.errors import UsageError
    from intellect.health.config import load_thresholds
    from intellect.health.watchdog import Watchdog, WatchdogConfig

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"bad --listen {listen!r}: use HOST:PORT")
    if poll_s <= 0 or hold_s < 0 or not 0 < max_drain_fraction <= 1:
        raise UsageError("--poll must be > 0, --hold >= 0, --max-drain-fraction in (0, 1]")
    cfg = WatchdogConfig(
        prometheus_url=url, thresholds=load_thresholds(thresholds), hold_s=hold_s, poll_s=poll_s,
        listen_host=host, listen_port=int(port), max_drain_fraction=max_drain_fraction, dry_run=dry_run,
    )  # fmt: skip
    dog = Watchdog(cfg)
    import signal

    def _stop(*_: object) -> None:
        dog.stop.set()
        dog.wake.set()

    signal.signal(signal.SIGTERM, _stop)
    dog.run()


if __name__ == "__main__":  # python -m intellect.cli.health health ... is the same as intellect health ...
    import runpy

    runpy.run_module("intellect.cli.main", run_name="__main__")
