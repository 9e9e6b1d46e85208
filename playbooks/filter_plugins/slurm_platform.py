"""Supported platforms, checked by the slurm role's validate.yml before any change on any node.

A Slurm node must run a distribution of ``slurm_supported_platforms`` (tested: Debian 12, Ubuntu 24.04), install with
apt, and get a Slurm of at least ``slurm_min_version`` (22.05, the first that loads cgroup/v2) from apt: the
distribution's, or a site repository's (``slurm_apt_repository``). The version is what ``apt-cache policy`` shows:
the installed one (``apt`` with state=present never upgrades it), else the candidate. Each problem is one line that
says what to do.
"""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = """
name: slurm_platform
short_description: the supported-platform and Slurm version checks of the slurm role
"""

BUILD_HINT = (
    "SchedMD's tarball of 23.11 or newer builds Debian packages (apt-get install build-essential fakeroot devscripts "
    "equivs; mk-build-deps -i debian/control; debuild -b -uc -us), named slurm-smd-* (set slurm_packages)"
)


def slurm_version_tuple(version: str) -> tuple[int, int] | None:
    """'22.05.8-4+deb12u3' -> (22, 5); '1:23.11.4-1.2ubuntu5' -> (23, 11); '' or '(none)' -> None."""
    upstream = version.split(":", 1)[-1].split("-", 1)[0]
    m = re.match(r"^(\d+)\.(\d+)", upstream)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_apt_policy(text: str) -> dict[str, str | None]:
    """``apt-cache policy PACKAGE`` -> {'installed': ..., 'candidate': ...}; None for '(none)' or no such package."""
    out: dict[str, str | None] = {"installed": None, "candidate": None}
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key in ("Installed", "Candidate") and value and value != "(none)":
            out[key.lower()] = value
    return out


def _platform(facts: dict[str, Any]) -> str:
    release = facts.get("distribution_release") or ""
    name = f"{facts.get('distribution', '?')} {facts.get('distribution_version', '?')}"
    return f"{name} ({release})" if release else name


def _supported(facts: dict[str, Any], supported: list[dict[str, Any]]) -> bool:
    versions = {str(facts.get("distribution_version", "")), str(facts.get("distribution_major_version", ""))}
    return any(
        p.get("distribution") == facts.get("distribution") and str(p.get("version")) in versions
        for p in supported
    )


def _version_problem(policy: str, package: str, min_version: str, where: str) -> str:
    found = parse_apt_policy(policy)
    version = found["installed"] or found["candidate"]
    fix = (
        f"use Debian 12 or Ubuntu 24.04, or set slurm_apt_repository to a site repository with Slurm {min_version} "
        f"or newer ({BUILD_HINT})"
    )
    if version is None:
        return f"{where}: apt offers no {package}: {fix}"
    have, want = slurm_version_tuple(version), slurm_version_tuple(min_version)
    if have is None or want is None or have >= want:
        return ""
    if found["installed"] and found["candidate"] and found["candidate"] != found["installed"]:
        cand = slurm_version_tuple(found["candidate"])
        if cand is not None and cand >= want:
            return (
                f"{where}: Slurm {version} is installed ({package}), older than {min_version}, and apt offers "
                f"{found['candidate']}: upgrade it (apt-get install --only-upgrade {package}), then provision again"
            )
    state = "is installed" if found["installed"] else "is what apt would install"
    return (
        f"{where}: Slurm {version} {state} ({package}), older than {min_version}: a Slurm before 22.05 cannot load "
        f"cgroup/v2 (CgroupPlugin=cgroup/v2). Fix: {fix}"
    )


def slurm_platform_problems(
    facts: dict[str, Any],
    supported: list[dict[str, Any]],
    policy: str = "",
    package: str = "slurm-client",
    min_version: str = "22.05",
    host: str = "",
    check_version: bool = True,
) -> list[str]:
    """Every reason ``host`` (with setup's ``ansible_facts``) cannot run the slurm role, one line each. ``policy``
    is the output of ``apt-cache policy PACKAGE``, checked when ``check_version`` (a site repository is checked
    only once it is added)."""
    where = f"{host} ({_platform(facts)})" if host else _platform(facts)
    if facts.get("pkg_mgr") != "apt":
        return [
            f"{where} installs packages with {facts.get('pkg_mgr', 'an unknown package manager')}: the slurm role "
            "supports apt only (Debian 12, Ubuntu 24.04)"
        ]
    problems = []
    if not _supported(facts, supported):
        listed = ", ".join(f"{p.get('distribution')} {p.get('version')}" for p in supported)
        problems.append(
            f"{where} is not a supported platform ({listed}): install one of them, or add it to "
            f"slurm_supported_platforms once it gets Slurm {min_version} or newer (slurm_apt_repository)"
        )
    if check_version:
        problem = _version_problem(policy, package, min_version, where)
        if problem:
            problems.append(problem)
    return problems


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "slurm_platform_problems": slurm_platform_problems,
            "slurm_version_tuple": slurm_version_tuple,
        }
