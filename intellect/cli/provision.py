"""``intellect provision``: check the inventory, run the playbooks, show progress and a recap per host."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import click

from intellect.cli.output import emit_json, status_console, verbatim
from intellect.errors import IntellectError

DEFAULT_INVENTORY = "inventory/production"


class _Progress:
    """A rich live display fed by ansible-runner events: the current play and task, and host counts."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tasks = 0
        self.changed = 0
        self.failed = 0
        self._progress: Any = None
        self._task_id: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=status_console(),
                transient=True,
            )
            self._progress.__enter__()
            self._task_id = self._progress.add_task("starting ansible", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_task_start":
            self.tasks += 1
        elif kind == "runner_on_ok" and data.get("res", {}).get("changed"):
            self.changed += 1
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            self.failed += 1
        if self._progress is not None and kind in ("playbook_on_task_start", "playbook_on_play_start"):
            what = data.get("task") or data.get("play") or ""
            self._progress.update(
                self._task_id,
                description=f"[{self.tasks} tasks, {self.changed} changed, {self.failed} failed] {what}",
            )


def recap_table(result: Any) -> Any:
    from rich.table import Table

    table = Table(title="provision recap", title_justify="left")
    for col in ("host", "ok", "changed", "failed", "unreachable", "skipped"):
        table.add_column(col, justify="left" if col == "host" else "right")
    for host, r in sorted(result.recap.items()):
        style = "red" if not r.healthy else ("yellow" if r.changed else "")
        table.add_row(
            host, str(r.ok), str(r.changed), str(r.failed), str(r.unreachable), str(r.skipped), style=style
        )
    return table


def print_diffs(result: Any) -> None:
    """Unified diffs of the files that changed (or would change), on stdout: they are the data of --diff."""
    for d in result.diffs:
        lines = difflib.unified_diff(
            d.before.splitlines(keepends=True),
            d.after.splitlines(keepends=True),
            fromfile=f"{d.host}:{d.path} (before)",
            tofile=f"{d.host}:{d.path} (after)",
        )
        click.echo("".join(lines), nl=False)


def print_failures(console: Any, result: Any, most: int = 10) -> None:
    """One line per distinct failure (task and message), naming its hosts as a hostlist."""
    from intellect.provision.limits import compress

    groups = result.failure_groups()
    for task, message, hosts in groups[:most]:
        console.print(
            f"[red]failed[/red] {verbatim(compress(hosts))} ({len(hosts)}): {verbatim(task)}: {verbatim(message)}"
        )
    if len(groups) > most:
        console.print(
            f"[red]... and {len(groups) - most} more distinct failures (--json lists them all)[/red]"
        )


def failed_error(result: Any, inventory: Path) -> IntellectError:
    """The error of a failed provision: every failed host as one hostlist, and the rerun on just those."""
    from intellect.provision.limits import compress, limit_hint

    bad = result.failed_hosts
    first = result.failure_groups()[0] if result.failures else None
    if first is not None:
        detail = f": {first[0]}: {first[1]}" + (f" ({len(first[2])} host(s))" if len(first[2]) > 1 else "")
    else:
        detail = f" (ansible exited {result.rc})"
    where = f"on {len(bad)} host(s) {compress(bad)}" if bad else "(no recap)"
    hint = f"fix it, then rerun: {limit_hint(inventory, bad)}" if bad else "rerun with INTELLECT_DEBUG=1"
    return IntellectError(f"provisioning failed {where}{detail}", hint=hint)


def provision(
    inventory: Path,
    *,
    limit: str | None = None,
    tags: str | None = None,
    check: bool = False,
    diff: bool = False,
    as_json: bool = False,
    env: dict[str, str] | None = None,
) -> Any:
    """Validate the inventory, then run site.yml with progress; raise when any host failed.

    ``limit`` is a hostlist (``gpu-[001-064]``) or an Ansible host pattern, or a mix of both.
    """
    from intellect.provision.inventory import check_inventory, load_inventory
    from intellect.provision.limits import ansible_limit
    from intellect.provision.runner import run_playbook

    pattern = ansible_limit(limit)
    check_inventory(load_inventory(inventory))
    interactive = not as_json
    with _Progress(enabled=interactive) as progress:
        result = run_playbook(
            inventory, limit=pattern, tags=tags, check=check, diff=diff, env=env, on_event=progress
        )
    if as_json:
        emit_json(result.to_json())
    else:
        console = status_console()
        if diff:
            print_diffs(result)
        console.print(recap_table(result))
        slow = ", ".join(f"{t.task} {t.max_s:.1f} s" for t in result.slowest(5))
        if slow:
            console.print(f"[dim]slowest tasks (on their slowest host): {slow}[/dim]", highlight=False)
        print_failures(console, result)
    if not result.ok:
        raise failed_error(result, inventory)
    return result


@click.command("provision")
@click.option(
    "-i",
    "--inventory",
    type=click.Path(path_type=Path),
    default=DEFAULT_INVENTORY,
    show_envvar=True,
    help="Ansible inventory (a folder or a file).",
)
@click.option(
    "--limit",
    default=None,
    help="Only these hosts: a hostlist (gpu-[001-064],storage01) or an Ansible host pattern (slurm_compute).",
)
@click.option(
    "--tags",
    default=None,
    help="Only these phases or roles (validate, install, configure, service, slurm...).",
)
@click.option("--check", is_flag=True, help="Change nothing; report what would change.")
@click.option("--diff", is_flag=True, help="Show the differences in files that change (or would change).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-host recap as JSON on stdout.")
def provision_cmd(
    inventory: Path, limit: str | None, tags: str | None, check: bool, diff: bool, as_json: bool
) -> None:
    """Provision the cluster with the playbooks: validate the inventory first, then run site.yml.

    Exits 1 when the inventory is invalid (nothing is changed) or when any host fails.
    """
    provision(inventory, limit=limit, tags=tags, check=check, diff=diff, as_json=as_json)
