"""The dev cluster's base image (debootstrap, cached as tar.zst) and its local apt repository.

Both are built on the host from Debian's registry and cached under ``cache_dir()``: the nodes never reach
outside. The repository is a plain folder of .deb files with a Packages index, bound read-only into each node.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from intellect.errors import IntellectError

SUITE = "bookworm"
BASE_INCLUDE = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "iproute2")
# What the playbooks install on dev nodes; the inventory turns off what needs other packages (chrony, GPUs).
NODE_PACKAGES = (
    "munge",
    "slurm-client",
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "mariadb-server",
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
    "numactl",
    "rsync",
)


def cache_dir() -> Path:
    return Path(os.environ.get("INTELLECT_DEVCLUSTER_CACHE", "/var/cache/intellect/devcluster"))


def mirror() -> str:
    return os.environ.get("INTELLECT_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def base_image_path() -> Path:
    return cache_dir() / f"base-{SUITE}-{_key(SUITE, 'minbase', *BASE_INCLUDE)}.tar.zst"


def _run(argv: list[str], what: str, timeout: float = 900) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if res.returncode != 0:
        tail = " ".join((res.stderr or res.stdout).strip().splitlines()[-2:])
        raise IntellectError(f"{what} failed ({res.returncode}): {tail}")


def ensure_base_image(log=print) -> Path:  # type: ignore[no-untyped-def]
    """The cached base image, built with debootstrap the first time (about 100 s)."""
    out = base_image_path()
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f"build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    log(f"building the base image with debootstrap (once, about 100 s) into {out}")
    try:
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_INCLUDE)}",
                SUITE,
                str(work),
                mirror(),
            ],
            "debootstrap",
        )
        tmp = out.with_suffix(".partial")
        _run(["tar", "--zstd", "-C", str(work), "-cf", str(tmp), "."], "tar of the base image")
        tmp.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def extract_base(image: Path, dest: Path) -> Path:
    """Unpack the base image once per cluster (the lower layer of every node's overlay)."""
    marker = dest / ".intellect-complete"
    if marker.exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    _run(["tar", "--zstd", "-C", str(dest), "-xpf", str(image)], "unpacking the base image")
    marker.write_text(image.name + "\n")
    return dest


def ensure_repo(base_root: Path, packages: tuple[str, ...] = NODE_PACKAGES, log=print) -> Path:  # type: ignore[no-untyped-def]
    """A file apt repository with ``packages`` and their dependencies missing from the base image."""
    repo = cache_dir() / f"repo-{SUITE}-{_key(base_image_path().name, *packages)}"
    if (repo / "Packages").exists():
        return repo
    log(f"downloading {len(packages)} packages and their dependencies into {repo}")
    partial = repo / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "apt-get",
            "-qq",
            "-o",
            f"Dir::State::status={base_root}/var/lib/dpkg/status",
            "-o",
            f"Dir::Cache::archives={repo}",
            "-o",
            "APT::Install-Recommends=false",
            "--download-only",
            "-y",
            "install",
            *packages,
        ],
        "apt-get --download-only",
    )
    shutil.rmtree(partial, ignore_errors=True)
    res = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."], cwd=repo, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise IntellectError(f"dpkg-scanpackages failed: {res.stderr.strip()[-200:]}")
    tmp = repo / "Packages.partial"
    tmp.write_text(res.stdout)
    tmp.rename(repo / "Packages")
    return repo
