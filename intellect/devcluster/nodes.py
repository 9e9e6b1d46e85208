"""Host-side plumbing of the dev cluster: the private bridge, overlay roots, nspawn nodes and their cgroups.

Every function here is safe to call on a half-built or half-torn-down cluster: ``down`` and ``up`` both use
them to clean up what an earlier failed run left. Nothing is ever routed out of the bridge: no NAT, no
forwarding, and an ``unreachable`` route for the subnet stays behind the bridge's own route.

The faults (``power-off``, ``power-on``, ``degrade``) use the same handles: a node is gone when its nspawn has
exited, its cgroups are empty (cgroup v2's ``populated`` flag, which also counts processes in their last exit
steps) and its link is gone; a slow link is a tbf qdisc on both ends of the node's veth.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from intellect.errors import IntellectError

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
CGROUP_NAME = "intellect-devcluster"
UNREACHABLE_METRIC = "4000"
NODE_LINK = "host0"  # nspawn's name for the node's end of its veth
ZOMBIE_GRACE = 10.0  # seconds to let PID 1 reap an exited nspawn (a zombie holds nothing; ps still lists it)
# tc's rate units (SI: kbit = 1000 bit/s, kbps = 1000 bytes/s), in bits per second
RATE_UNITS = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
}
MAX_RATE = 100 * 10**9
_RATE = re.compile(r"(\d+(?:\.\d+)?)(" + "|".join(sorted(RATE_UNITS, key=len, reverse=True)) + ")")
TBF_LATENCY = "50ms"  # how long a packet may wait in the tbf queue before it is dropped
TBF_MIN_BURST = 15_000  # bytes: ten full frames


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


def machine_name(cluster: str, node: str) -> str:
    """nspawn's machine name for a node: prefixed by the bridge, so that two dev clusters never collide."""
    return f"{cluster}-{node}"


def veth_altname(cluster: str, node: str) -> str:
    """The name of the host's end of a node's link: nspawn's "vb-" + machine name. That is over 15 characters,
    so nspawn names the link ``vb-<bridge><hash>`` and gives it this one as its alternative name: ``ip``
    resolves it, tc does not (see ``host_link``)."""
    return f"vb-{machine_name(cluster, node)}"


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
        f"--machine={machine_name(net.bridge, name)}",  # it also names the host's end of the veth
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


def node_cgroups_present(cluster: str) -> list[str]:
    """Names of the nodes that have a cgroup folder in the dev cluster's tree (booted once, maybe not in state)."""
    found: set[str] = set()
    for root in CGROUP_ROOTS:
        base = root / CGROUP_NAME / cluster
        if base.is_dir():
            found |= {d.name for d in base.iterdir() if d.is_dir()}
    return sorted(found)


def cgroup_populated(cluster: str, node: str) -> bool:
    """cgroup v2's ``populated`` flag of a node's subtree: still 1 while a process is in its last exit steps,
    when ``cgroup.procs`` no longer lists it."""
    for d in cgroup_dirs(cluster, node):
        with contextlib.suppress(OSError):
            for line in (d / "cgroup.events").read_text().splitlines():
                if line.split() == ["populated", "1"]:
                    return True
    return False


def is_node_nspawn(pid: int, cluster: str, node: str) -> bool:
    """Whether ``pid`` is this node's running nspawn (not an exited one, and not a reused PID)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"--machine={machine_name(cluster, node)}".encode() in argv and alive(pid)


def _unreaped(pid: int) -> bool:
    """An nspawn that has exited (its cgroups are empty) but is still in the process table: a zombie that its
    parent (PID 1, once the command that booted it has gone) has not reaped yet, or one a moment from being one."""
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().split("(", 1)[1].rsplit(")", 1)[0] == "systemd-nspawn":
            alive(pid)  # reaps it when it is our own child
            return Path(f"/proc/{pid}").exists()
    return False


@dataclass
class Remains:
    """What is left of a node that should be off; false when nothing is."""

    pids: set[int] = field(default_factory=set)
    exiting: bool = False  # its cgroup is still populated though no process is listed: processes exiting
    link: bool = False  # the host's end of its veth

    def __bool__(self) -> bool:
        return bool(self.pids or self.exiting or self.link)

    def describe(self) -> str:
        parts = [f"processes {', '.join(map(str, sorted(self.pids)))}"] if self.pids else []
        parts += ["processes still exiting in its cgroup"] if self.exiting and not self.pids else []
        return ", ".join(parts + (["its link"] if self.link else [])) or "nothing"


def remains(cluster: str, node: str, nspawn_pid: int | None) -> Remains:
    pids = pids_in_cgroups(cluster, node)
    if nspawn_pid and is_node_nspawn(nspawn_pid, cluster, node):
        pids.add(nspawn_pid)
    return Remains(pids, cgroup_populated(cluster, node), link_exists(veth_altname(cluster, node)))


def kill_node(cluster: str, node: str, nspawn_pid: int | None) -> None:
    """SIGKILL every process of a node at once, as a power cut: ``cgroup.kill`` on its cgroup v2 subtree (one
    atomic kill, forks included), then SIGKILL to whatever a hierarchy still lists, and to its nspawn."""
    for d in cgroup_dirs(cluster, node):
        if (d / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (d / "cgroup.kill").write_text("1")
    for pid in remains(cluster, node, nspawn_pid).pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def settle(
    cluster: str, nspawn_pids: dict[str, int | None], timeout: float, kill: bool
) -> dict[str, Remains]:
    """Wait until every node named is gone (``kill``: SIGKILL them first, and again on each round); what is
    left of those that are not after ``timeout``. Once a node's processes are gone, the host's end of its
    link is deleted if the kernel has not yet done so (its network namespace is cleaned up asynchronously),
    and its nspawn gets ``ZOMBIE_GRACE`` to be reaped."""
    pending = dict(nspawn_pids)
    deadline = time.monotonic() + timeout
    while pending:
        for node, pid in list(pending.items()):
            if kill:
                kill_node(cluster, node, pid)
            left = remains(cluster, node, pid)
            if left.link and not left.pids and not left.exiting:
                _ip("link", "del", veth_altname(cluster, node), check=False)
                left = remains(cluster, node, pid)
            if not left:
                del pending[node]
        if pending and time.monotonic() > deadline:
            return {node: remains(cluster, node, pid) for node, pid in pending.items()}
        if pending:
            time.sleep(0.1)
    grace = time.monotonic() + ZOMBIE_GRACE
    while any(p and _unreaped(p) for p in nspawn_pids.values()) and time.monotonic() < grace:
        time.sleep(0.2)
    return {}


def power_off(cluster: str, node: str, nspawn_pid: int | None, timeout: float = 30.0) -> None:
    """Cut a node's power: every process of it SIGKILLed at once; returns when none is left, nor its link."""
    left = settle(cluster, {node: nspawn_pid}, timeout, kill=True)
    if left:
        pids = ",".join(map(str, sorted(left[node].pids)))
        raise IntellectError(
            f"dev-cluster node {node} did not power off within {timeout:.0f} s: {left[node].describe()} left",
            hint=f"ps -o pid,stat,wchan,cmd -p {pids}" if pids else f"intellect dev-cluster power-off {node}",
        )
    remove_cgroups(cluster, node)


def stop_nodes(cluster: str, nspawn_pids: dict[str, int], timeout: float = 30.0) -> None:
    """SIGTERM every nspawn at once (the nodes shut down cleanly, in parallel); after ``timeout``, SIGKILL what
    is left of them. Returns when every node is gone (``settle``): nodes in the state, and any other node
    that still has a cgroup in this dev cluster's tree."""
    names = sorted(set(nspawn_pids) | set(node_cgroups_present(cluster)))
    pids: dict[str, int | None] = {n: nspawn_pids.get(n) for n in names}
    for node, pid in pids.items():
        if pid and is_node_nspawn(pid, cluster, node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    left = settle(cluster, pids, timeout, kill=False)
    if left:
        left = settle(cluster, {n: pids[n] for n in left}, 10.0, kill=True)
    if left:
        raise IntellectError(
            "dev-cluster nodes did not stop after SIGKILL: "
            + "; ".join(f"{n}: {r.describe()}" for n, r in sorted(left.items())),
            hint="find what holds them (ps -ef), then run intellect dev-cluster down again",
        )


def remove_cgroups(cluster: str, node: str | None = None) -> None:
    """rmdir a dev cluster's cgroups (or one node's) bottom-up (only empty ones can go); for a whole cluster,
    the shared parent too if empty."""
    for root in CGROUP_ROOTS:
        base = root / CGROUP_NAME / cluster / node if node else root / CGROUP_NAME / cluster
        if base.is_dir():
            dirs = [Path(dirpath) for dirpath, _d, _f in os.walk(base, topdown=False)]
            for d in dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()
        if node is None:
            with contextlib.suppress(OSError):
                (root / CGROUP_NAME).rmdir()


# ------------------------------------------------------------------------------------------ a slow link
def parse_rate(text: str) -> int:
    """A tc rate, a number and one of ``RATE_UNITS`` (``10mbit``, ``1.5mbit``, ``500kbps``), in bits per
    second. Raises ValueError saying what is wrong."""
    match = _RATE.fullmatch(text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a rate: a number and one of {', '.join(RATE_UNITS)} (e.g. 10mbit)")
    bits = int(Decimal(match[1]) * RATE_UNITS[match[2]])
    if not 1 <= bits <= MAX_RATE:
        raise ValueError(f"{text!r} is out of range: from 1bit to {MAX_RATE // 10**9}gbit")
    return bits


def format_rate(bits: int) -> str:
    """Bits per second as tc prints them: 10Mbit, 1.5Mbit, 800bit."""
    for unit, name in ((10**9, "Gbit"), (10**6, "Mbit"), (10**3, "Kbit")):
        if bits >= unit:
            return f"{bits / unit:g}{name}"
    return f"{bits}bit"


def tbf_args(bits: int) -> list[str]:
    """tc's arguments for a tbf root qdisc at ``bits``/s: a burst of 10 ms of traffic (at least ten frames),
    and packets that wait over ``TBF_LATENCY`` dropped, as a saturated slow link drops them."""
    burst = max(TBF_MIN_BURST, bits // 8 // 100)
    return ["root", "tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", TBF_LATENCY]


@dataclass(frozen=True)
class Qdisc:
    kind: str  # "tbf", or the link's default ("noqueue" on a veth)
    handle: str = ""
    rate: int | None = None  # tbf's rate, bits/s

    def describe(self) -> str:
        return f"{self.kind} {self.handle} rate {format_rate(self.rate)}" if self.rate else self.kind


def parse_root_qdisc(tc_json: str) -> Qdisc:
    """The root qdisc in ``tc -j qdisc show dev X`` (tc reports tbf's rate in bytes/s)."""
    for q in json.loads(tc_json or "[]"):
        if q.get("root"):
            rate = q.get("options", {}).get("rate") if q.get("kind") == "tbf" else None
            return Qdisc(
                str(q.get("kind")), str(q.get("handle", "")), int(rate) * 8 if rate is not None else None
            )
    return Qdisc("noqueue")


def parse_link_name(ip_json: str, bridge: str) -> str | None:
    """The kernel's name of a link in ``ip -j link show dev X`` when it is a port of ``bridge``, else None."""
    links = json.loads(ip_json or "[]")
    return str(links[0]["ifname"]) if links and links[0].get("master") == bridge else None


def host_link(cluster: str, node: str) -> str | None:
    """The kernel's name of the host's end of a node's link (tc takes only that one), None when it has none."""
    res = _ip("-j", "link", "show", "dev", veth_altname(cluster, node), check=False)
    return parse_link_name(res.stdout, cluster) if res.returncode == 0 else None


def _tc(argv: list[str], netns_pid: int | None = None) -> subprocess.CompletedProcess[str]:
    """tc on the host, or (``netns_pid``) in the network namespace of that process: the node's side."""
    enter = ["nsenter", f"--target={netns_pid}", "--net"] if netns_pid else []
    return subprocess.run([*enter, "tc", *argv], capture_output=True, text=True, check=False)


def node_netns_pid(nspawn_pid: int) -> int | None:
    """The node's init (nspawn's child): a process in the node's network namespace."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()[0])
    return None


def link_ends(cluster: str, node: str, nspawn_pid: int) -> list[tuple[str, int | None]]:
    """Both ends of a node's link, as (device, network namespace PID or None for the host's): the host's end
    shapes traffic to the node, the node's host0 traffic from it."""
    host, inner = host_link(cluster, node), node_netns_pid(nspawn_pid)
    if host is None or inner is None:
        raise IntellectError(f"dev-cluster node {node} has no link on {cluster} (is it powered on?)")
    return [(host, None), (NODE_LINK, inner)]


def root_qdisc(dev: str, netns_pid: int | None = None) -> Qdisc:
    res = _tc(["-j", "qdisc", "show", "dev", dev], netns_pid)
    if res.returncode != 0:
        raise IntellectError(f"tc qdisc show dev {dev} failed: {res.stderr.strip()}")
    return parse_root_qdisc(res.stdout)


def shape(dev: str, bits: int | None, netns_pid: int | None = None) -> Qdisc:
    """Put a tbf qdisc at ``bits``/s on ``dev`` (replacing any), or (None) remove it; the root qdisc now."""
    if bits is not None:
        res = _tc(["qdisc", "replace", "dev", dev, *tbf_args(bits)], netns_pid)
    elif root_qdisc(dev, netns_pid).kind == "tbf":
        res = _tc(["qdisc", "del", "dev", dev, "root"], netns_pid)
    else:
        return root_qdisc(dev, netns_pid)
    if res.returncode != 0:
        raise IntellectError(f"tc on {dev} failed: {res.stderr.strip()}")
    return root_qdisc(dev, netns_pid)


def wait_for_port(addr: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((addr, port), timeout=1):
            return True
        time.sleep(0.3)
    return False
