"""Job commands: ``jobs`` (our launches and their role split), ``logs``, ``cancel``."""

from __future__ import annotations

import sys
import time

import click

from intellect.cli.output import emit_json, status


@click.command("jobs")
@click.option("--user", default=None, help="Only launches by this user.")
@click.option("--all", "all_jobs", is_flag=True, help="Include finished launches.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def jobs_cmd(user: str | None, all_jobs: bool, as_json: bool) -> None:
    """Our launches with their state and which nodes hold which role."""
    from intellect.runs import list_jobs

    rows = list_jobs(user=user, all_jobs=all_jobs)
    if as_json:
        emit_json({"jobs": rows})
        return
    from rich.markup import escape
    from rich.table import Table

    from intellect.cli.output import data_console

    table = Table(title=f"{len(rows)} launches")
    for col in (
        "job",
        "name",
        "user",
        "state",
        "executor",
        "trainer",
        "inference",
        "orchestrator",
        "run dir",
    ):
        table.add_column(col)
    for r in rows:
        roles = r["roles"]
        table.add_row(
            r["job_id"],
            r["name"],
            r["user"],
            r["state"],
            r["executor"],
            " ".join(roles.get("trainer", [])),
            " ".join(roles.get("inference", [])),
            " ".join(roles.get("orchestrator", [])),
            escape(r["run_dir"]),
        )
    con = data_console()
    con.print(table)
    for r in rows:  # whole lines under the table: a cause is a sentence, too long for a column
        for proc, why in r["causes"].items():
            con.print(escape(f"job {r['job_id']}: {proc} failed: {why}"), soft_wrap=True)


@click.command("logs")
@click.argument("job_id")
@click.option("--role", type=click.Choice(["trainer", "inference", "orchestrator"]), default="orchestrator")
@click.option("--rank", type=int, default=0, help="Rank within the role.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
def logs_cmd(job_id: str, role: str, rank: int, follow: bool) -> None:
    """Print a role's log from the run directory of JOB_ID."""
    from intellect.rl.failure import read_causes
    from intellect.runs import log_path

    path = log_path(job_id, role, rank)
    for proc, why in read_causes(path.parent.parent).items():
        click.echo(f"{proc} failed: {why}", err=True)  # plain: the cause is the run's text, not markup
    with path.open() as fh:
        sys.stdout.write(fh.read())
        while follow:
            line = fh.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.3)


@click.command("cancel")
@click.argument("job_id")
def cancel_cmd(job_id: str) -> None:
    """Cancel one of our launches (scancel): every role stops."""
    from intellect.runs import cancel

    entry = cancel(job_id)
    status(f"cancelled job {job_id} ({entry['name']}); its run directory stays: {entry['run_dir']}")
