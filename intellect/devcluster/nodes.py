"""Host-side plumbing of the dev cluster: the private bridge, overlay roots, nspawn nodes and their cgroups.

Every function here is safe to call on a half-built or half-torn-down cluster: ``down`` and ``up`` both use
them to clean up what an earlier failed run left. Nothing is ever routed out of the bridge: no NAT, no
forwarding, and an ``unreachable`` route for the subnet stays behind the bridge's own route.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from intellect.errors import IntellectError

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
CGROUP_NAME = "intellect-devcluster"
UNREACHABLE_METRIC = "4000"


@dataclass(frozen=True)
class Net:
    bridge: str = "itl-dev0"
    prefix: str = "10.213.0"

    @property
    def subnet(self) -> str:
        return f"{self.prefix}.0/24"

    @property
    def host_addr(self) -> str:
        return f"{self.prefix}.1"

    def node_addr(self, index: int) -> str:
        return f"{self.prefix}.{10 + index}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise IntellectError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def link_exists(name: str) -> bool:
    return _ip("link", "show", name, check=False).returncode == 0


def bridge_up(net: Net) -> None:
    """The private bridge with the host's address on it, and the unreachable safety route."""
    if not link_exists(net.bridge):
        _ip("link", "add", net.bridge, "type", "bridge")
    addrs = _ip("-br", "addr", "show", net.bridge).stdout
    if f"{net.host_addr}/24" not in addrs:
        _ip("addr", "add", f"{net.host_addr}/24", "dev", net.bridge)
    _ip("link", "set", net.bridge, "up")
    routes = _ip("route", "show", "table", "main").stdout
    if f"unreachable {net.subnet}" not in routes:
        _ip("route", "add", "unreachable", net.subnet, "metric", UNREACHABLE_METRIC)


def bridge_down(net: Net) -> None:
    if link_exists(net.bridge):
        _ip("link", "del", net.bridge, check=False)
    _ip("route", "del", "unreachable", net.subnet, "metric", UNREACHABLE_METRIC, check=False)


def overlay_mount(lower: Path, node_dir: Path) -> Path:
    root = node_dir / "root"
    for sub in ("upper", "work", "root"):
        (node_dir / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(root):
        opts = f"lowerdir={lower},upperdir={node_dir / 'upper'},workdir={node_dir / 'work'}"
        res = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], capture_output=True, text=True
        )
        if res.returncode != 0:
            raise IntellectError(f"overlay mount of {root} failed: {res.stderr.strip()}")
    return root


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == str(path) or point.startswith(prefix):
                points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def unmount_all(path: Path) -> None:
    for point in mounts_under(path):
        res = subprocess.run(["umount", point], capture_output=True, text=True)
        if res.returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, text=True)


def cgroup_dirs(cluster: str, node: str) -> list[Path]:
    """The cgroups of one node: <hierarchy>/intellect-devcluster/<cluster (its bridge)>/<node>."""
    return [root / CGROUP_NAME / cluster / node for root in CGROUP_ROOTS if root.is_dir()]


def spawn_node(name: str, root: Path, net: Net, binds: list[str], log: Path) -> int:
    """Boot one node with systemd-nspawn in its own cgroups; returns nspawn's PID."""
    for d in cgroup_dirs(net.bridge, name):
        d.mkdir(parents=True, exist_ok=True)
    join = " ".join(f"echo $$ > {d}/cgroup.procs;" for d in cgroup_dirs(net.bridge, name))
    argv = [
        "systemd-nspawn",
        "-D",
        str(root),
        "-b",
        # The machine name also names the host's end of the veth ("vb-" + name, shortened with a hash when
        # too long): prefixed by the bridge, so that two dev clusters on one host never collide.
        f"--machine={net.bridge}-{name}",
        f"--hostname={name}",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={net.bridge}",
        "--console=passive",
        *binds,
    ]
    script = f'{join} exec "$@"'
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["sh", "-c", script, "sh", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def pids_in_cgroups(cluster: str, node: str | None = None) -> set[int]:
    """Every process in a dev cluster's cgroups (one node's, or all of them)."""
    pids: set[int] = set()
    for root in CGROUP_ROOTS:
        base = root / CGROUP_NAME / cluster / node if node else root / CGROUP_NAME / cluster
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):  # os.walk skips folders that vanish while it walks
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()}
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def stop_nodes(cluster: str, nspawn_pids: dict[str, int], timeout: float = 30.0) -> None:
    """SIGTERM every nspawn at once (the nodes power off in parallel); after ``timeout``, SIGKILL what is left
    in the cluster's cgroups, init first, then nspawn."""
    for pid in nspawn_pids.values():
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def left() -> set[int]:
        return pids_in_cgroups(cluster) | {p for p in nspawn_pids.values() if alive(p)}

    deadline = time.monotonic() + timeout
    while left() and time.monotonic() < deadline:
        time.sleep(0.3)
    for _ in range(3):
        stragglers = left()
        if not stragglers:
            return
        for pid in sorted(stragglers, key=lambda p: p in nspawn_pids.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while left() and time.monotonic() < deadline:
            time.sleep(0.2)
    if left():
        raise IntellectError(f"processes {sorted(left())} of the dev cluster did not exit after SIGKILL")


def remove_cgroups(cluster: str) -> None:
    """rmdir a dev cluster's cgroups bottom-up (only empty ones can go), and the shared parent if empty."""
    for root in CGROUP_ROOTS:
        base = root / CGROUP_NAME / cluster
        if base.is_dir():
            dirs = [Path(dirpath) for dirpath, _d, _f in os.walk(base, topdown=False)]
            for d in dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()
        with contextlib.suppress(OSError):
            (root / CGROUP_NAME).rmdir()


def wait_for_port(addr: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((addr, port), timeout=1):
            return True
        time.sleep(0.3)
    return False
