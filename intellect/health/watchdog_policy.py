"""The watchdog's pure side: its saved state (``watchdog-state.json``), its settings, and ``decide``.

``decide`` turns verdicts + Slurm's view + the state into what to drain, resume and hold back; the loop that queries
and acts is ``intellect.health.watchdog`` (its docstring says why none of this can do harm).

The state file (one writer: ``save_state``, atomic; one reader: ``load_state``)::

    {"version": 1, "observed_at": 1767225600.0,
     "held": {"node-2": {"token": "3f9a0c1d2e4b", "text": "watchdog: Xid 79 on GPU 3 (wd-token 3f9a0c1d2e4b)",
                         "reason": "[intellect] slurm 2026-01-01T00:00:00Z: watchdog: Xid 79 on GPU 3 (wd-token ...)",
                         "reason_user": "slurm", "reason_time": "2026-01-01T00:00:00", "seen": true,
                         "drained_at": 1767225600.0, "rules": ["xid"], "ok_since": null}},
     "unknown_since": {"node-7": 1767225000.0}}
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from intellect.health.config import Thresholds
from intellect.health.rules import BAD, DEGRADED, OK, UNKNOWN, Verdict
from intellect.slurm import ops
from intellect.slurm.nodes import Node

SOURCE = "watchdog"
STATE_FILE = "watchdog-state.json"
EXPORTER_DOWN = "exporter_down"  # the rule label of a drain for a node unknown past the grace period
TOKEN = re.compile(r"\(wd-token ([0-9a-f]{12})\)")
# sinfo %T states (split on '+') in which a node runs no jobs; drained/draining are read from Node.drained
DOWN_STATES = frozenset(
    {"down", "fail", "failing", "maint", "not_responding", "no_respond", "unknown", "inval", "reboot_issued"}
)
HELD_BACK_KINDS = ("cap", "per_cycle", "outage")
CAUSES = ("people", "down", "watchdog")


# ------------------------------------------------------------------------------------------------ state


class Hold(BaseModel):
    """A node the watchdog drained and still owns."""

    model_config = ConfigDict(extra="forbid")
    token: str = Field(description="Random token, also in the Slurm reason.")
    text: str = Field(description="The text given to ops.drain (after '<prefix> <user> <time>: ').")
    reason: str | None = Field(
        None, description="The full Slurm reason it set; None until the drain returns."
    )
    reason_user: str | None = Field(None, description="Slurm's reason user (sinfo %u), seen after the drain.")
    reason_time: str | None = Field(None, description="Slurm's reason time (sinfo %H), seen after the drain.")
    seen: bool = Field(
        False, description="Slurm's user and time for the drain are recorded (first look only)."
    )
    drained_at: float = Field(description="Unix time of the drain.")
    rules: list[str] = Field(description="The rules that made it drain (e.g. xid, exporter_down).")
    ok_since: float | None = Field(None, description="Unix time since when the node counts as repaired.")


class WatchdogState(BaseModel):
    """``watchdog-state.json``: what the watchdog holds, and since when nodes are unknown."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    observed_at: float | None = Field(None, description="Unix time of the last successful cycle.")
    held: dict[str, Hold] = Field(default_factory=dict, description="node → its hold.")
    unknown_since: dict[str, float] = Field(default_factory=dict, description="node → unknown since (Unix).")


def load_state(path: Path, log: Callable[[str], None]) -> WatchdogState:
    """The saved state; none yet gives an empty one. An unreadable file is moved aside (and said so): the nodes it
    listed stay drained until a person resumes them, which is the safe side."""
    try:
        return WatchdogState.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return WatchdogState()
    except (OSError, ValidationError, ValueError) as exc:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        try:
            path.replace(aside)
        except OSError:
            aside = path
        log(f"state file {path} unreadable ({type(exc).__name__}), kept as {aside}; starting with no holds: "
            "the nodes it drained before stay drained until a person resumes them")  # fmt: skip
        return WatchdogState()


def save_state(path: Path, state: WatchdogState) -> None:
    """Atomically: a temporary file in the same folder, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(state.model_dump_json(indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


# -------------------------------------------------------------------------------------- pure decisions


@dataclass
class WatchdogConfig:
    prometheus_url: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    hold_s: float = 300.0  # ok without a break this long before a resume
    poll_s: float = 15.0
    listen_host: str = "127.0.0.1"
    listen_port: int = 9419
    max_drain_fraction: float = 0.25  # of the cluster that may be unavailable for ANY cause (at least 1 node)
    max_unavailable: int | None = None  # and an absolute bound, if set
    max_drains_per_cycle: int = 2
    unknown_grace_s: float = 300.0  # unknown this long: drained as "exporter down"
    unknown_outage_fraction: float = 0.5  # more nodes than this unknown at once: an outage, no unknown drains
    state_path: Path | None = None  # default: <state dir>/watchdog-state.json
    dry_run: bool = False

    @property
    def max_gap_s(self) -> float:
        """Longer without a successful cycle, and the ok and unknown timers start again."""
        return max(4 * self.poll_s, 60.0)


@dataclass(frozen=True)
class Drain:
    summary: str  # what follows "watchdog: " in the reason
    rules: tuple[str, ...]


@dataclass(frozen=True)
class HeldBack:
    kind: str  # one of HELD_BACK_KINDS
    why: str


@dataclass
class Decision:
    drain: dict[str, Drain] = field(default_factory=dict)
    resume: list[str] = field(default_factory=list)
    held_back: dict[str, HeldBack] = field(default_factory=dict)  # nodes that should drain, and why not
    released: dict[str, str] = field(default_factory=dict)  # holds it let go of, and why
    unavailable: dict[str, int] = field(default_factory=dict)  # cause → nodes
    limit: int = 0  # unavailable nodes allowed


def token_of(reason: str | None) -> str | None:
    found = TOKEN.findall(reason or "")
    return found[-1] if found else None


def reason_text(summary: str, token: str) -> str:
    """``watchdog: <summary> (wd-token <token>)``: one printable line that fits ``ops.MAX_REASON``."""
    head, tail = f"{SOURCE}: ", f" (wd-token {token})"
    clean = "".join(c if c.isprintable() else " " for c in summary).strip() or "bad"
    room = ops.MAX_REASON - len(head) - len(tail)
    return head + (clean if len(clean) <= room else clean[: room - 3] + "...") + tail


def unavailability(node: Node) -> str | None:
    """'drained', or the down-like state of a node that runs no jobs; None for an available node."""
    if node.drained:
        return "drained"
    if not node.responding:
        return "not_responding"
    parts = set(node.state.lower().split("+"))
    return node.state if parts & DOWN_STATES else None


def not_ours(node: Node | None, hold: Hold) -> str | None:
    """None while Slurm still shows the drain the watchdog made; otherwise why the node is no longer its own."""
    if node is None:
        return "no longer in Slurm"
    if not node.drained:
        return (
            "its drain did not happen" if hold.reason is None else f"resumed by someone else ({node.state})"
        )
    again = f"drained again by someone else: {node.reason!r}"
    if token_of(node.reason) != hold.token:
        return again
    if hold.reason is None:  # a drain whose answer we never saw (crash): our exact text, our token
        return None if (node.reason or "").endswith(": " + hold.text) else again
    if node.reason != hold.reason:
        return again
    for mine, now, what in (
        (hold.reason_user, node.reason_user, "by"),
        (hold.reason_time, node.reason_time, "at"),
    ):
        if mine is not None and now != mine:
            return f"drained again with the same text {what} {now} (was {mine})"
    return None


def repaired(verdict: Verdict | None, hold: Hold) -> bool:
    """Ok; or degraded by rules other than the ones it drained for. Unknown or bad never are."""
    if verdict is None or verdict.status not in (OK, DEGRADED):
        return False
    return not any(r.rule in hold.rules for r in verdict.reasons if r.status != OK)


def cap(total: int, cfg: WatchdogConfig) -> int:
    limit = max(1, math.floor(cfg.max_drain_fraction * total + 1e-9))
    return limit if cfg.max_unavailable is None else min(limit, cfg.max_unavailable)


def decide(
    verdicts: dict[str, Verdict],
    slurm: dict[str, Node],
    state: WatchdogState,
    now: float,
    cfg: WatchdogConfig,
) -> Decision:
    """Pure but for ``state``, whose holds and timers it updates: what to drain, resume and hold back."""
    d = Decision()
    _reconcile(state, slurm, d)
    restart = state.observed_at is None or now - state.observed_at > cfg.max_gap_s
    state.observed_at = now
    for name, hold in sorted(state.held.items()):
        if not repaired(verdicts.get(name), hold):
            hold.ok_since = None
            continue
        if hold.ok_since is None or restart:
            hold.ok_since = now
        if now - hold.ok_since >= cfg.hold_s:
            d.resume.append(name)
    _track_unknown(verdicts, slurm, state, now, restart)
    _plan_drains(verdicts, slurm, state, now, cfg, d)
    return d


def _reconcile(state: WatchdogState, slurm: dict[str, Node], d: Decision) -> None:
    for name, hold in sorted(state.held.items()):
        why = not_ours(slurm.get(name), hold)
        if why is not None:
            del state.held[name]
            d.released[name] = why
            continue
        if not hold.seen:  # the first look after the drain only: a later re-drain must not become "ours"
            node = slurm[name]
            hold.reason = hold.reason or node.reason
            hold.reason_user, hold.reason_time, hold.seen = node.reason_user, node.reason_time, True


def _track_unknown(
    verdicts: dict[str, Verdict], slurm: dict[str, Node], state: WatchdogState, now: float, restart: bool
) -> None:
    for name in list(state.unknown_since):
        if name not in slurm:
            del state.unknown_since[name]
    for name in slurm:
        v = verdicts.get(name)
        if v is not None and v.status != UNKNOWN:
            state.unknown_since.pop(name, None)
        elif restart or name not in state.unknown_since:
            state.unknown_since[name] = now


def _plan_drains(
    verdicts: dict[str, Verdict], slurm: dict[str, Node], state: WatchdogState, now: float,
    cfg: WatchdogConfig, d: Decision,
) -> None:  # fmt: skip
    d.unavailable = dict.fromkeys(CAUSES, 0)
    for name, node in slurm.items():
        if name in state.held:
            d.unavailable["watchdog"] += 1
        elif unavailability(node) == "drained":
            d.unavailable["people"] += 1
        elif unavailability(node):
            d.unavailable["down"] += 1
    total, d.limit = sum(d.unavailable.values()), cap(len(slurm), cfg)
    room, per_cycle = d.limit - total, cfg.max_drains_per_cycle
    free = [n for n in sorted(slurm) if unavailability(slurm[n]) is None and n not in state.held]
    bad = {n: _bad_drain(verdicts[n]) for n in free if n in verdicts and verdicts[n].status == BAD}
    n_unknown = sum(v is None or v.status == UNKNOWN for v in (verdicts.get(n) for n in slurm))
    outage = n_unknown > cfg.unknown_outage_fraction * len(slurm)
    ages = {n: now - state.unknown_since[n] for n in free if n in state.unknown_since}
    unknown = {n: _unknown_drain(verdicts.get(n), a) for n, a in ages.items() if a >= cfg.unknown_grace_s}
    u = d.unavailable
    full = (f"{total} of {len(slurm)} nodes unavailable ({u['people']} drained by people, {u['down']} down, "
            f"{u['watchdog']} by the watchdog); the cap is {d.limit}")  # fmt: skip
    for name, plan in [*bad.items(), *unknown.items()]:
        if name in unknown and outage:
            why = f"{n_unknown} of {len(slurm)} nodes are unknown at once: a monitoring outage, not dead exporters"
            d.held_back[name] = HeldBack("outage", why)
        elif room <= 0:
            d.held_back[name] = HeldBack("cap", full)
        elif per_cycle <= 0:
            d.held_back[name] = HeldBack("per_cycle", f"{cfg.max_drains_per_cycle} drain(s) per cycle")
        else:
            d.drain[name] = plan
            room, per_cycle = room - 1, per_cycle - 1


def _bad_drain(v: Verdict) -> Drain:
    rules = tuple(dict.fromkeys(r.rule for r in v.reasons if r.status == BAD)) or ("bad",)
    return Drain(v.summary, rules)


def _unknown_drain(v: Verdict | None, age_s: float) -> Drain:
    what = v.summary if v is not None else "no verdict"
    return Drain(f"exporter down for {_duration(age_s)}: {what}", (EXPORTER_DOWN,))


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
