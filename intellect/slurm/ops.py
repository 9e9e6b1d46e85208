"""Drain and resume with a reason, and the journal of what we did.

Automation and ``intellect drain`` write reasons ``[intellect] <user> <UTC time>: <text>``. We resume only
nodes whose reason carries that prefix; a node a person drained by hand stays drained unless ``force``.
Every action is appended to a JSONL journal (who, what, why, when) under the state directory.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hostlist

from intellect.errors import IntellectError, UsageError
from intellect.slurm import run as slurm
from intellect.slurm.nodes import PREFIX, Node, known, query_nodes

MAX_REASON = 200


def state_dir() -> Path:
    base = os.environ.get("INTELLECT_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "intellect"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def journal_path() -> Path:
    return state_dir() / "journal.jsonl"


def record(action: str, nodes: list[str], reason: str | None, **extra: Any) -> dict[str, Any]:
    entry = {
        "time": _utc(),
        "user": getpass.getuser(),
        "action": action,
        "nodes": nodes,
        "reason": reason,
        **extra,
    }
    with journal_path().open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return entry


def history(node: str) -> list[dict[str, Any]]:
    path = journal_path()
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if node in entry.get("nodes", []):
            out.append(entry)
    return out


def drained_by(source: str) -> set[str]:
    """Nodes whose last journalled drain/resume is a drain by ``source`` (e.g. the watchdog's own drains).

    A later resume by anyone, or a later drain by another source, takes the node out of the set."""
    path = journal_path()
    owned: set[str] = set()
    if not path.exists():
        return owned
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        nodes = entry.get("nodes") if isinstance(entry, dict) else None
        if not isinstance(nodes, list):
            continue
        if entry.get("action") == "drain" and entry.get("source") == source:
            owned.update(nodes)
        elif entry.get("action") in ("drain", "resume"):
            owned.difference_update(nodes)
    return owned


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_reason(text: str, user: str | None = None) -> str:
    """``[intellect] <user> <UTC time>: <text>``; one line, printable, bounded."""
    text = text.strip()
    if not text:
        raise UsageError("a drain needs a reason: --reason 'what is wrong'")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UsageError("the reason must be one printable line (no newlines or control characters)")
    if len(text) > MAX_REASON:
        raise UsageError(f"the reason is {len(text)} characters; keep it under {MAX_REASON}")
    return f"{PREFIX} {user or getpass.getuser()} {_utc()}: {text}"


@dataclass
class ActionResult:
    changed: list[str]
    skipped: dict[str, str]
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "skipped": self.skipped, "reason": self.reason}


def drain(nodes: list[str], text: str, source: str = "cli") -> ActionResult:
    """Drain ``nodes`` with our prefixed reason. Nodes already drained by a person keep their reason."""
    reason = make_reason(text)
    current = query_nodes()
    known(nodes, current)
    skipped = {n: f"drained by someone else: {current[n].reason}" for n in nodes if _human_drain(current[n])}
    targets = [n for n in nodes if n not in skipped]
    if targets:
        _update(targets, "DRAIN", reason)
        record("drain", targets, reason, source=source)
    return ActionResult(changed=targets, skipped=skipped, reason=reason)


def resume(nodes: list[str], force: bool = False, source: str = "cli") -> ActionResult:
    """Resume drained nodes we drained; a person's drain needs ``force``."""
    current = query_nodes()
    known(nodes, current)
    skipped: dict[str, str] = {}
    for n in nodes:
        node = current[n]
        if not node.drained:
            skipped[n] = f"not drained (state {node.state})"
        elif not node.drained_by_us and not force:
            skipped[n] = f"drained by someone else ({node.reason!r}); add --force to override"
    targets = [n for n in nodes if n not in skipped]
    if not targets and any("someone else" in v for v in skipped.values()):
        first = next(n for n, v in skipped.items() if "someone else" in v)
        raise IntellectError(
            f"refusing to resume {first}: drained by someone else ({current[first].reason!r})",
            hint=f"intellect why {first}; intellect resume {first} --force if you are sure",
        )
    if targets:
        _update(targets, "RESUME", None)
        record("resume", targets, None, source=source, forced=force)
    return ActionResult(changed=targets, skipped=skipped, reason=None)


def _human_drain(node: Node) -> bool:
    return node.drained and not node.drained_by_us


def _update(nodes: list[str], state: str, reason: str | None) -> None:
    argv = ["scontrol", "update", f"NodeName={hostlist.collect_hostlist(nodes)}", f"State={state}"]
    if reason is not None:
        argv.append(f"Reason={reason}")  # one argv item: never reaches a shell
    slurm.run(argv)
