"""``intellect health [NODES]`` (verdict table) and ``intellect watchdog`` (the long-running drainer)."""

from __future__ import annotations

import click

from intellect.cli.output import emit_json

PROM_HELP = (
    "Prometheus base URL, e.g. http://127.0.0.1:9090 (default: prometheus_url of /etc/intellect/site.yaml)."
)
THRESH_HELP = "YAML file overriding the health thresholds (see intellect/health/config.py for defaults)."


@click.command("health")
@click.argument("nodes", required=False)
@click.option("--prometheus", "url", envvar="INTELLECT_PROMETHEUS_URL", show_envvar=True, default=None,
              help=PROM_HELP)  # fmt: skip
@click.option("--thresholds", envvar="INTELLECT_HEALTH_THRESHOLDS", show_envvar=True, default=None,
              type=click.Path(dir_okay=False), help=THRESH_HELP)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable verdicts on stdout.")
def health_cmd(nodes: str | None, url: str | None, thresholds: str | None, as_json: bool) -> None:
    """Per-node verdicts (ok / degraded / bad / unknown, with reasons) from ONE Prometheus query.

    NODES is a hostlist (node-[1-3]); without it, every node Slurm knows, or else every node Prometheus knows.
    No data is unknown, never ok. Exit 0 whatever the verdicts; read them from --json.
    """
    from intellect.health.config import load_thresholds
    from intellect.health.prom import PrometheusClient
    from intellect.health.rules import evaluate

    th = load_thresholds(thresholds)
    names = _nodes(nodes)
    with PrometheusClient(prometheus_url(url)) as client:
        report = evaluate(client, th, names)
    if report.error and not report.verdicts:
        from intellect.errors import IntellectError

        raise IntellectError(report.error, hint="intellect health NODES lists them as unknown")
    if as_json:
        emit_json(report.to_json())
        return
    _table(report)


def prometheus_url(flag: str | None) -> str:
    """--prometheus (or $INTELLECT_PROMETHEUS_URL), else the site file's prometheus_url; UsageError if neither."""
    from intellect.errors import UsageError
    from intellect.site import load_site, site_path

    url = flag or load_site().prometheus_url
    if not url:
        raise UsageError(
            f"no Prometheus to ask: {site_path() or 'the site file'} has no prometheus_url",
            hint="--prometheus http://HOST:9090, or provision the cluster (the monitoring role writes it)",
        )
    return url


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

    from intellect.cli.output import data_console, status_console, verbatim

    colour = {"ok": "green", "degraded": "yellow", "unknown": "magenta", "bad": "red"}
    table = Table(title=f"{len(report.verdicts)} nodes ({report.seconds * 1000:.0f} ms, one query)")
    for col in ("node", "verdict", "reasons"):
        table.add_column(col)
    for v in report.verdicts.values():
        table.add_row(
            verbatim(v.node),
            f"[{colour[v.status]}]{v.status}[/]",
            verbatim(v.summary) if v.status != "ok" else "",
        )
    data_console().print(table)
    if report.error:
        status_console().print(f"[red]error:[/] {verbatim(report.error)}")


@click.command("watchdog")
@click.option("--prometheus", "url", envvar="INTELLECT_PROMETHEUS_URL", show_envvar=True, default=None,
              help=PROM_HELP)  # fmt: skip
@click.option("--thresholds", envvar="INTELLECT_HEALTH_THRESHOLDS", show_envvar=True, default=None,
              type=click.Path(dir_okay=False), help=THRESH_HELP)  # fmt: skip
@click.option("--poll", "poll_s", type=float, default=15.0, show_default=True, show_envvar=True,
              help="Seconds between evaluations (an Alertmanager webhook wakes it earlier).")  # fmt: skip
@click.option("--hold", "hold_s", type=float, default=300.0, show_default=True, show_envvar=True,
              help="Seconds a node it drained must stay ok without a break before it is resumed.")  # fmt: skip
@click.option("--listen", default="127.0.0.1:9419", show_default=True, show_envvar=True,
              help="HOST:PORT for the webhook (POST /alerts) and /metrics.")  # fmt: skip
@click.option("--max-drain-fraction", type=float, default=0.25, show_default=True, show_envvar=True,
              help="Stop draining once this share of the nodes is unavailable for any cause (people's drains, "
                   "DOWN, its own); at least one node.")  # fmt: skip
@click.option("--max-unavailable", type=int, default=None, show_envvar=True,
              help="Never let more than this many nodes be unavailable for any cause (the smaller bound wins).")  # fmt: skip
@click.option("--max-drains-per-cycle", type=int, default=2, show_default=True, show_envvar=True,
              help="Drain at most this many nodes per cycle (bad first, then exporter down).")  # fmt: skip
@click.option("--unknown-grace", "unknown_grace_s", type=float, default=300.0, show_default=True,
              show_envvar=True,
              help="Seconds a node may stay unknown (exporter down, no metrics) before it is drained as "
                   "'exporter down'.")  # fmt: skip
@click.option("--unknown-outage-fraction", type=float, default=0.5, show_default=True, show_envvar=True,
              help="More nodes than this share unknown at once is a monitoring outage: none is drained for it.")  # fmt: skip
@click.option("--state-file", type=click.Path(dir_okay=False), default=None, show_envvar=True,
              help="Hold state (default: $INTELLECT_STATE_DIR/watchdog-state.json).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Log what it would drain or resume; change nothing.")
def watchdog_cmd(
    url: str | None, thresholds: str | None, poll_s: float, hold_s: float, listen: str,
    max_drain_fraction: float, max_unavailable: int | None, max_drains_per_cycle: int, unknown_grace_s: float,
    unknown_outage_fraction: float, state_file: str | None, dry_run: bool,
) -> None:  # fmt: skip
    """Drain nodes as soon as they turn bad ('[intellect] ...: watchdog: Xid 79 on GPU 3 (wd-token ...)');
    resume only the nodes it drained (its token in their reason), once ok for --hold seconds; never touch a node
    a person drained."""
    from intellect.errors import UsageError
    from intellect.health.config import load_thresholds
    from intellect.health.watchdog import Watchdog, WatchdogConfig

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"bad --listen {listen!r}: use HOST:PORT")
    if poll_s <= 0 or hold_s < 0 or not 0 < max_drain_fraction <= 1:
        raise UsageError("--poll must be > 0, --hold >= 0, --max-drain-fraction in (0, 1]")
    if (
        (max_unavailable is not None and max_unavailable < 0)
        or max_drains_per_cycle < 1
        or unknown_grace_s < 0
    ):
        raise UsageError("--max-unavailable must be >= 0, --max-drains-per-cycle >= 1, --unknown-grace >= 0")
    if not 0 < unknown_outage_fraction <= 1:
        raise UsageError("--unknown-outage-fraction must be in (0, 1]")
    from pathlib import Path

    cfg = WatchdogConfig(
        prometheus_url=prometheus_url(url), thresholds=load_thresholds(thresholds), hold_s=hold_s, poll_s=poll_s,
        listen_host=host, listen_port=int(port), max_drain_fraction=max_drain_fraction,
        max_unavailable=max_unavailable, max_drains_per_cycle=max_drains_per_cycle, unknown_grace_s=unknown_grace_s,
        unknown_outage_fraction=unknown_outage_fraction, state_path=Path(state_file) if state_file else None,
        dry_run=dry_run,
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
