"""The sandbox's read-only root: the interpreter, its standard library and the shared libraries they load,
found on this host once per interpreter, and nothing else.

``root_for(python)`` asks the interpreter where its standard library lives, asks ``ldd`` which libraries the
interpreter, its extension modules and ``prlimit`` load, and turns those paths into a plan of bind mounts and
symlinks that reproduces each path exactly as the host resolves it (``/lib -> usr/lib``, ``libz.so.1 ->
libz.so.1.2.13``). Only those files and directories are visible inside; ``/etc``, ``/home``, ``/root``, the
repository and the virtualenv are not.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intellect.sandbox.api import SandboxUnavailable

HELPERS = ("prlimit",)  # run inside the sandbox before the program: sets the rlimits once in its namespaces

_FACTS = (
    "import json, sys, sysconfig; print(json.dumps({'executable': sys.executable, "
    "'stdlib': sysconfig.get_path('stdlib'), 'platstdlib': sysconfig.get_path('platstdlib'), "
    "'path': sys.path, 'version': '%d.%d' % sys.version_info[:2]}))"
)
_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


@dataclass(frozen=True)
class Mount:
    kind: str  # "ro-bind" (src, dest equal) or "symlink" (src is the link's target)
    src: str
    dest: str


@dataclass(frozen=True)
class Root:
    python: str  # the interpreter's path inside the sandbox (the same as on the host)
    version: str
    helpers: dict[str, str]  # helper name -> its path inside
    mounts: tuple[Mount, ...]


def find_interpreter(python: str | None) -> str:
    """The interpreter programs get: ``python`` when given (a path or a name on PATH), else the system's
    ``/usr/bin/python3`` (readable by any user), else the one running this code."""
    if python:
        found = python if "/" in python else shutil.which(python)
        if not found or not os.access(found, os.X_OK):
            raise SandboxUnavailable(f"sandbox: no Python interpreter {python!r} on this host")
        return os.path.abspath(found)
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    import sys

    return sys.executable


@functools.cache
def root_for(python: str) -> Root:
    """The mounts that make ``python`` (and the helpers) run inside an otherwise empty root."""
    facts = _facts(python)
    executable, version = os.path.abspath(python), str(facts["version"])
    helpers = {name: _which(name) for name in HELPERS}
    stdlib_dirs = _dirs([facts["stdlib"], facts["platstdlib"], *facts["path"]])
    dynload = [p for d in stdlib_dirs for p in _extension_modules(d)]
    libs = ldd([executable, *helpers.values(), *dynload])
    wanted = [executable, *helpers.values(), *stdlib_dirs, *libs]
    return Root(executable, version, helpers, tuple(plan(wanted)))


def _facts(python: str) -> dict[str, Any]:
    try:
        out = subprocess.run(
            [python, "-I", "-S", "-c", _FACTS], capture_output=True, text=True, timeout=30, env={}, check=True
        )
        facts = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxUnavailable(f"sandbox: cannot run the interpreter {python}: {exc}") from exc
    if not isinstance(facts, dict) or not isinstance(facts.get("path"), list):
        raise SandboxUnavailable(f"sandbox: the interpreter {python} did not describe itself")
    return facts


def _which(name: str) -> str:
    found = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not found:
        raise SandboxUnavailable(f"sandbox: {name} not found on this host (Debian: apt install util-linux)")
    return os.path.realpath(found)


def _dirs(paths: Iterable[object]) -> list[str]:
    """Existing directories among ``paths``, without any that lies inside another."""
    found = sorted({os.path.realpath(str(p)) for p in paths if isinstance(p, str) and os.path.isdir(p)})
    return [d for d in found if not any(d != o and d.startswith(o + "/") for o in found)]


def _extension_modules(directory: str) -> list[str]:
    return [str(p) for p in Path(directory).rglob("*.so") if p.is_file() and "site-packages" not in p.parts]


def ldd(files: list[str]) -> list[str]:
    """Every shared library (and the dynamic loader) that ``files`` load, as ``ldd`` resolves them here."""
    if not files:
        return []
    try:
        out = subprocess.run(["ldd", *files], capture_output=True, text=True, timeout=60, env={"LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"sandbox: cannot list the interpreter's libraries with ldd: {exc}") from exc
    return parse_ldd(out.stdout)


def parse_ldd(text: str) -> list[str]:
    """The library paths in ``ldd`` output (``libz.so.1 => /lib/.../libz.so.1 (0x...)`` and the loader's own
    ``/lib64/ld-linux-x86-64.so.2 (0x...)``), once each, in order."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        match = _LDD_LINE.match(line)
        if match:
            seen.setdefault(match.group(1))
    return list(seen)


def plan(paths: Iterable[str], readlink: Callable[[str], str | None] | None = None) -> list[Mount]:
    """Mounts that make each of ``paths`` resolve inside the sandbox as it does on the host: every symlink
    met on the way is recreated, and the real file or directory at the end is bound read-only. Binds are
    ordered parents first, and one inside a directory already bound is dropped."""
    link = readlink or _readlink
    links: dict[str, str] = {}
    binds: set[str] = set()
    for path in paths:
        real = _resolve(os.path.normpath(path), link, links)
        if real:
            binds.add(real)
    kept: list[str] = []
    for path in sorted(binds):
        if not any(path == k or path.startswith(k + "/") for k in kept):
            kept.append(path)
    return [Mount("ro-bind", p, p) for p in kept] + [
        Mount("symlink", t, at) for at, t in sorted(links.items())
    ]


def _resolve(
    path: str, link: Callable[[str], str | None], links: dict[str, str], depth: int = 0
) -> str | None:
    if depth > 40:
        return None  # a symlink loop: leave the path out
    parts = path.strip("/").split("/")
    cur = ""
    for i, part in enumerate(parts):
        nxt = f"{cur}/{part}"
        target = link(nxt)
        if target is not None:
            links[nxt] = target
            base = os.path.normpath(os.path.join(cur or "/", target))  # an absolute target replaces cur
            return _resolve(os.path.join(base, *parts[i + 1 :]), link, links, depth + 1)
        cur = nxt
    return cur or None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
