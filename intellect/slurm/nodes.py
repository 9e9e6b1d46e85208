"""Node and job state from Slurm: parsers of machine-readable output (pure) and the batched queries.

Debian's Slurm 22.05 is built without the JSON plugins, so we read ``sinfo``/``squeue`` with a ``|``-separated
format whose free-text field (the reason) comes last, and ``sacct --parsable2``. One call covers every node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import hostlist

from intellect.errors import SlurmError, UsageError
from intellect.slurm import run as slurm

PREFIX = "[intellect]"
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STATE_FLAGS = "*~#!%$@^-"  # sinfo(1) NODE STATE CODES suffixes
SINFO_FORMAT = "%N|%T|%u|%H|%G|%c|%m|%E"
SQUEUE_FORMAT = "%A|%j|%u|%T|%M|%D|%N|%r"
SACCT_FIELDS = "JobID,JobName,User,State,Start,End,NodeList,ExitCode"


@dataclass
class Node:
    name: str
    state: str
    reason: str | None
    reason_user: str | None
    reason_time: str | None
    gres: str | None
    cpus: int
    memory_mb: int
    jobs: list[str] = field(default_factory=list)
    verdict: str | None = None
    flags: str = (
        ""  # sinfo's state suffixes, e.g. "*" (not responding), "~" (powered down), "@" (reboot pending)
    )

    @property
    def responding(self) -> bool:
        """False while slurmctld hears nothing from the node's slurmd (``idle*``): it gets no new work."""
        return "*" not in self.flags

    @property
    def drained_by_us(self) -> bool:
        return bool(self.reason and self.reason.startswith(PREFIX))

    @property
    def drained(self) -> bool:
        return any(s in self.state for s in ("drain", "drng"))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["drained_by_intellect"] = self.drained_by_us
        return out


@dataclass
class Job:
    job_id: str
    name: str
    user: str
    state: str
    elapsed: str
    nodes: int
    nodelist: list[str]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _none(value: str) -> str | None:
    return None if value in ("", "none", "Unknown", "(null)", "N/A") else value


def _count(value: str) -> int:
    return int(value) if value.isdigit() else 0


def _rows(text: str, command: str) -> Iterator[list[str]]:
    """The eight ``|``-separated fields of each non-blank line of ``command``'s output; the last field (the
    free-text reason) may itself hold ``|``."""
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 7)
        if len(parts) != 8:
            raise SlurmError(f"unexpected {command} line: {line[:80]!r}")
        yield parts


def parse_sinfo(text: str) -> dict[str, Node]:
    """Parse ``sinfo -N -h -o SINFO_FORMAT``. A node in several partitions appears once."""
    nodes: dict[str, Node] = {}
    for name, state, user, when, gres, cpus, mem, reason in _rows(text, "sinfo"):
        if name in nodes:
            continue
        base = state.rstrip(STATE_FLAGS)
        nodes[name] = Node(
            name=name,
            state=base,
            flags=state[len(base) :],
            reason=_none(reason),
            reason_user=_none(user),
            reason_time=_none(when),
            gres=_none(gres),
            cpus=_count(cpus),
            memory_mb=_count(mem),
        )
    return nodes


def parse_squeue(text: str) -> list[Job]:
    jobs = []
    for job_id, name, user, state, elapsed, n, nodelist, reason in _rows(text, "squeue"):
        jobs.append(
            Job(
                job_id=job_id,
                name=name,
                user=user,
                state=state,
                elapsed=elapsed,
                nodes=_count(n),
                nodelist=hostlist.expand_hostlist(nodelist) if _none(nodelist) else [],
                reason=reason,
            )
        )
    return jobs


def parse_sacct(text: str) -> list[dict[str, str]]:
    """Parse ``sacct --parsable2 -o SACCT_FIELDS`` (header line first)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0].split("|")
    return [dict(zip(header, ln.split("|"), strict=False)) for ln in lines[1:]]


def expand_nodes(spec: str) -> list[str]:
    """Expand a hostlist such as ``node-[17,20-22]``; refuse anything that is not a plain node name."""
    if not spec or any(c.isspace() for c in spec):
        raise UsageError(f"bad node list {spec!r}: no spaces or newlines; use a hostlist like node-[1-3]")
    try:
        names = hostlist.expand_hostlist(spec)
    except hostlist.BadHostlist as exc:
        raise UsageError(f"bad node list {spec!r}: {exc}; use a hostlist like node-[17,20-22]") from exc
    bad = [n for n in names if not NODE_NAME.match(n)]
    if bad:
        raise UsageError(f"bad node name {bad[0]!r}: letters, digits, '.', '_' and '-' only")
    return names


# --------------------------------------------------------------------------------------------- queries


def query_nodes() -> dict[str, Node]:
    """Every node with its state, reason and running jobs: one sinfo call and one squeue call."""
    nodes = parse_sinfo(slurm.run(["sinfo", "-N", "-h", "-o", SINFO_FORMAT]).stdout)
    for job in query_jobs(all_users=True):
        if job.state in ("RUNNING", "COMPLETING"):
            for name in job.nodelist:
                if name in nodes:
                    nodes[name].jobs.append(job.job_id)
    return nodes


def query_jobs(
    all_users: bool = True, user: str | None = None, job_ids: list[str] | None = None
) -> list[Job]:
    argv = ["squeue", "-h", "-o", SQUEUE_FORMAT]
    if user:
        argv += ["-u", user]
    elif all_users:
        argv += ["-a"]
    if job_ids:
        argv += ["-j", ",".join(job_ids)]
    return parse_squeue(slurm.run(argv).stdout)


def recent_jobs(node: str, days: int = 2) -> list[dict[str, str]]:
    """Jobs that ran on ``node`` lately (sacct); empty when accounting is off."""
    res = slurm.run(
        ["sacct", "--parsable2", "-X", "-a", "-N", node, "-S", f"now-{days}days", "-o", SACCT_FIELDS],
        check=False,
    )
    if res.returncode != 0:
        return []
    return parse_sacct(res.stdout)


def known(nodes: list[str], all_nodes: dict[str, Node]) -> None:
    unknown = [n for n in nodes if n not in all_nodes]
    if unknown:
        raise SlurmError(
            f"unknown node{'s' if len(unknown) > 1 else ''}: {hostlist.collect_hostlist(unknown)}",
            hint="intellect nodes",
        )
