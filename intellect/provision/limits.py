"""Host sets between Slurm's hostlists and Ansible's host patterns.

A failed provision names its hosts as one compressed hostlist (``gpu-[001-064],storage01``), the form every other
``intellect`` command takes. Ansible's ``--limit`` does not read hostlist ranges (``gpu-[001-003]`` is, to Ansible, a
subscript of a group named ``gpu-``), so ``ansible_limit`` expands them before Ansible sees the pattern; the rest of
Ansible's pattern language (groups, ``!``/``&``, globs, ``~regex``, ``group[0:3]``) passes through unchanged.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

import hostlist

from intellect.errors import UsageError

# A bracket that holds a hostlist range or list: [001-064], [1,3,5-7]. A single index ([0]) and a slice ([0:3])
# stay Ansible subscripts.
_HOSTLIST_BRACKET = re.compile(r"\[[0-9]+(?:[-,][0-9]+)+\]")


def compress(hosts: Iterable[str]) -> str:
    """Hosts as one sorted, compressed hostlist (``gpu-[001-003,007],login01``)."""
    return str(hostlist.collect_hostlist(sorted(set(hosts))))


def limit_hint(inventory: object, hosts: Iterable[str]) -> str:
    """The command that reruns the provision on just these hosts, quoted for a shell."""
    return f"intellect provision -i {shlex.quote(str(inventory))} --limit {shlex.quote(compress(hosts))}"


def _terms(spec: str) -> list[str]:
    """Split a pattern at the commas and colons outside brackets (Ansible's union separators)."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += ch == "["
        depth -= ch == "]"
        if ch in ",:" and depth == 0:
            terms.append(spec[start:i])
            start = i + 1
    terms.append(spec[start:])
    return [t for t in terms if t]


def _is_hostlist(term: str) -> bool:
    """A term (less its ``!``/``&``) with a hostlist range in it that is no Ansible regex or glob."""
    body = term.lstrip("!&")
    return (
        not body.startswith("~")
        and "*" not in body
        and "?" not in body
        and bool(_HOSTLIST_BRACKET.search(body))
    )


def ansible_limit(spec: str | None) -> str | None:
    """An Ansible ``--limit`` pattern for ``spec``, with every hostlist range in it expanded to host names."""
    if spec is None or not any(_is_hostlist(t) for t in _terms(spec)):
        return spec  # Ansible reads it as it is
    out: list[str] = []
    for term in _terms(spec):
        if not _is_hostlist(term):
            out.append(term)  # a name, a group, a regex or a glob
            continue
        prefix = term[0] if term[0] in "!&" else ""
        try:
            names = hostlist.expand_hostlist(term[len(prefix) :])
        except hostlist.BadHostlist as exc:
            raise UsageError(
                f"bad --limit {spec!r}: {term!r} is not a hostlist ({exc})",
                hint="use a hostlist like gpu-[001-064],storage01 or an Ansible pattern like slurm_compute",
            ) from exc
        out += [prefix + name for name in names]
    return ",".join(out)
