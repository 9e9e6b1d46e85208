"""Run a playbook through ansible-runner and fold its events into a per-host recap.

``run_playbook`` is the one place an Ansible run starts. It takes an ``on_event`` callback (the CLI feeds a rich
progress display with it) and returns a ``ProvisionResult`` with the recap of every host and the failures.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intellect.errors import IntellectError
from intellect.provision.paths import ansible_env, fact_cache_dir, playbooks_dir

EventHandler = Callable[[dict[str, Any]], None]


@dataclass
class HostRecap:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0

    @property
    def healthy(self) -> bool:
        return self.failed == 0 and self.unreachable == 0


@dataclass
class Failure:
    host: str
    task: str
    message: str


@dataclass
class Diff:
    """One file difference reported with --diff (before is empty for a new file)."""

    host: str
    task: str
    path: str
    before: str
    after: str


@dataclass
class TaskTime:
    """How long one task took: on its slowest host, and summed over hosts."""

    task: str
    max_s: float = 0.0
    total_s: float = 0.0
    hosts: int = 0


@dataclass
class ProvisionResult:
    rc: int
    recap: dict[str, HostRecap] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    changed_tasks: list[tuple[str, str]] = field(default_factory=list)
    diffs: list[Diff] = field(default_factory=list)
    task_times: list[TaskTime] = field(default_factory=list)

    def slowest(self, count: int = 10) -> list[TaskTime]:
        return sorted(self.task_times, key=lambda t: -t.max_s)[:count]

    @property
    def ok(self) -> bool:
        return self.rc == 0 and all(r.healthy for r in self.recap.values())

    @property
    def failed_hosts(self) -> list[str]:
        """Every host that failed a task or was unreachable, sorted."""
        bad = {h for h, r in self.recap.items() if not r.healthy} | {f.host for f in self.failures if f.host}
        return sorted(bad)

    def failure_groups(self) -> list[tuple[str, str, list[str]]]:
        """The failures as (task, message, hosts), one entry per distinct task and message, most hosts first."""
        groups: dict[tuple[str, str], set[str]] = {}
        for f in self.failures:
            groups.setdefault((f.task, f.message), set()).add(f.host)
        return sorted(((t, m, sorted(h)) for (t, m), h in groups.items()), key=lambda g: (-len(g[2]), g[0]))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rc": self.rc,
            "hosts": {h: vars(r) for h, r in sorted(self.recap.items())},
            "failed_hosts": self.failed_hosts,
            "failures": [vars(f) for f in self.failures],
            "changed_tasks": [{"host": h, "task": t} for h, t in self.changed_tasks],
            "diffs": [vars(d) for d in self.diffs],
            "slowest_tasks": [
                {"task": t.task, "max_s": round(t.max_s, 2), "total_s": round(t.total_s, 2), "hosts": t.hosts}
                for t in self.slowest()
            ],
        }


class EventCollector:
    """Turns ansible-runner events into failures and changed tasks; forwards each event to ``on_event``."""

    def __init__(self, on_event: EventHandler | None) -> None:
        self.on_event = on_event
        self.failures: list[Failure] = []
        self.changed: list[tuple[str, str]] = []
        self.stats: dict[str, dict[str, int]] = {}
        self.diffs: list[Diff] = []
        self.times: dict[str, TaskTime] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host, task = data.get("host", ""), data.get("task", "")
        if kind.startswith("runner_on_") and isinstance(data.get("duration"), int | float):
            timing = self.times.setdefault(task, TaskTime(task))
            timing.max_s = max(timing.max_s, float(data["duration"]))
            timing.total_s += float(data["duration"])
            timing.hosts += 1
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            self.failures.append(Failure(host, task, _message(data.get("res", {}))))
        elif kind == "runner_on_unreachable":
            self.failures.append(Failure(host, task, "unreachable: " + _message(data.get("res", {}))))
        elif kind == "runner_on_ok" and data.get("res", {}).get("changed"):
            self.changed.append((host, task))
            self._collect_diffs(host, task, data.get("res", {}))
        elif kind == "playbook_on_stats":
            self.stats = {k: data.get(k) or {} for k in ("ok", "changed", "failures", "dark", "skipped")}
        if self.on_event is not None:
            self.on_event(event)
        return True

    def _collect_diffs(self, host: str, task: str, res: dict[str, Any]) -> None:
        for item in [res, *(r for r in res.get("results", []) if isinstance(r, dict))]:
            diffs = item.get("diff") or []
            for d in diffs if isinstance(diffs, list) else [diffs]:
                if isinstance(d, dict) and ("after" in d or "before" in d):
                    args = (item.get("invocation") or {}).get("module_args") or {}
                    header = (
                        args.get("dest")
                        or args.get("path")
                        or d.get("before_header")
                        or d.get("after_header")
                    )
                    path = str(header or "").removesuffix(" (content)")
                    self.diffs.append(
                        Diff(host, task, path, str(d.get("before", "")), str(d.get("after", "")))
                    )

    def recap(self) -> dict[str, HostRecap]:
        hosts = set().union(*(set(v) for v in self.stats.values())) if self.stats else set()
        return {
            h: HostRecap(
                ok=self.stats["ok"].get(h, 0),
                changed=self.stats["changed"].get(h, 0),
                failed=self.stats["failures"].get(h, 0),
                unreachable=self.stats["dark"].get(h, 0),
                skipped=self.stats["skipped"].get(h, 0),
            )
            for h in sorted(hosts)
        }


def _message(res: dict[str, Any]) -> str:
    failed_items = [r for r in res.get("results", []) if isinstance(r, dict) and r.get("failed")]
    if failed_items:
        res = failed_items[0]
    msg = res.get("msg") or res.get("stderr") or res.get("module_stderr") or "failed"
    return " ".join(str(msg).split())[:300]


def run_playbook(
    inventory: Path,
    playbook: str = "site.yml",
    *,
    limit: str | None = None,
    tags: str | None = None,
    check: bool = False,
    diff: bool = False,
    extravars: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    on_event: EventHandler | None = None,
) -> ProvisionResult:
    """Run ``playbooks/<playbook>`` against ``inventory`` and return the recap of every host."""
    try:
        import ansible_runner
    except ImportError as exc:
        raise IntellectError("ansible-runner is not installed", hint="pip install 'intellect[ops]'") from exc
    flags = [f for f, on in (("--check", check), ("--diff", diff)) if on]
    collector = EventCollector(on_event)
    with tempfile.TemporaryDirectory(prefix="intellect-provision-") as private:
        runner = ansible_runner.run(
            private_data_dir=private,
            project_dir=str(playbooks_dir()),
            playbook=str(playbooks_dir() / playbook),
            inventory=str(Path(inventory).resolve()),
            limit=limit,
            tags=tags,
            cmdline=" ".join(flags) or None,
            extravars=extravars or {},
            envvars=ansible_env(
                {"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(fact_cache_dir(inventory)), **(env or {})}
            ),
            event_handler=collector,
            quiet=True,
            rotate_artifacts=1,
        )
        rc = int(runner.rc if runner.rc is not None else 1)
    return ProvisionResult(
        rc,
        collector.recap(),
        collector.failures,
        collector.changed,
        collector.diffs,
        list(collector.times.values()),
    )
