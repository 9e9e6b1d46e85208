"""``intellect dev-cluster``: N systemd-nspawn nodes on a private bridge, provisioned by our own playbooks.

Layout under the state folder (``INTELLECT_DEVCLUSTER_DIR``, default /var/lib/intellect/devcluster):
``nodes/<name>/{upper,work,root}`` (over the cached node image, unpacked, every node's lower layer), ``ssh/``,
``munge.key``, ``inventory/``, ``facts/``, ``logs/``, ``state.json``, and ``shared/``, bound into every node at
the same path (it stands for Lustre/NFS; ``down`` keeps it, it holds users' run folders).

``state.json`` records the node count, the bridge, each running node's nspawn PID, the nodes powered off
(``off``) and how a node is booted (its lower layer and binds), so that ``power-on`` boots a node again the way
``up`` did. The faults, one node at a time: ``power-off`` (every process SIGKILLed at once; the upper layer stays,
as a disk would), ``power-on``, and ``degrade`` (a tbf qdisc on both ends of the node's link).

The software share: the running intellect's checkout, its venv and the Python the venv was made from are bound
read-only into every node at their host paths, as a site's software share would be. So ``intellect`` on a node
(``/usr/local/bin/intellect``) and the roles of a job that Slurm starts there run the same code and interpreter
as the host, with nothing installed in the nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intellect.devcluster import image, nodes
from intellect.devcluster.inventory import dev_inventory, node_names, write_inventory
from intellect.devcluster.nodes import Net
from intellect.errors import IntellectError, UsageError
from intellect.provision.paths import fact_cache_dir

REPO_IN_NODE = "/srv/intellect-repo"
HOST_TOOLS = (
    "systemd-nspawn",
    "debootstrap",
    "zstd",
    "ip",
    "ssh",
    "ssh-keygen",
    "apt-get",
    "dpkg-scanpackages",
)
Log = Callable[[str], None]


def default_net() -> Net:
    """The bridge and /24 prefix (INTELLECT_DEVCLUSTER_BRIDGE, INTELLECT_DEVCLUSTER_PREFIX override them)."""
    return Net(
        bridge=os.environ.get("INTELLECT_DEVCLUSTER_BRIDGE", "itl-dev0"),
        prefix=os.environ.get("INTELLECT_DEVCLUSTER_PREFIX", "10.213.0"),
    )


def default_state_dir() -> Path:
    return Path(os.environ.get("INTELLECT_DEVCLUSTER_DIR", "/var/lib/intellect/devcluster"))


def checkout() -> Path:
    """The folder above the running ``intellect`` package: the checkout for an editable install."""
    import intellect

    return Path(intellect.__file__).resolve().parents[1]


def software_share() -> list[Path]:
    """What the nodes need to run this intellect: its checkout (an editable install), the venv, and the venv's
    base Python unless that is the system's /usr (the nodes have their own). Outermost paths only."""
    candidates = [checkout(), Path(sys.prefix)]
    base = Path(sys.base_prefix).resolve()
    if base != Path("/usr") and not str(base).startswith("/usr/"):
        candidates.append(base)
    outer: list[Path] = []
    for path in sorted({c.resolve() for c in candidates}, key=lambda c: len(c.parts)):
        if path != Path("/") and not any(path.is_relative_to(o) for o in outer):
            outer.append(path)
    return outer


def require_root_and_tools() -> None:
    if os.geteuid() != 0:
        raise IntellectError(
            "intellect dev-cluster needs root (it boots systemd-nspawn nodes, a bridge and overlay mounts)",
            hint="sudo intellect dev-cluster up",
        )
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing:
        raise IntellectError(
            f"missing host tools: {', '.join(missing)}",
            hint="apt-get install systemd-container debootstrap zstd dpkg-dev openssh-client iproute2",
        )


@dataclass(frozen=True)
class LinkEnd:
    """One end of a node's link and its root qdisc: the host's end (``vb-...``) shapes the traffic to the node,
    the node's end (host0, in its network namespace) the traffic from it."""

    device: str
    side: str  # "host" or "node"
    qdisc: nodes.Qdisc

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "side": self.side,
            "qdisc": self.qdisc.kind,
            "rate_bit": self.qdisc.rate,
        }


@dataclass
class DevCluster:
    state_dir: Path
    net: Net = field(default=None)  # type: ignore[assignment]  # None: the running cluster's, else default_net()

    def __post_init__(self) -> None:
        if self.net is None:
            recorded = self.read_state().get("net")
            self.net = Net(**recorded) if recorded else default_net()

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def inventory_dir(self) -> Path:
        return self.state_dir / "inventory"

    @property
    def shared_dir(self) -> Path:
        return self.state_dir / "shared"

    def read_state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {}
        return dict(json.loads(self.state_file.read_text()))

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    # ------------------------------------------------------------------------------------------ up
    def boot(self, count: int, log: Log) -> bool:
        """Boot ``count`` nodes (or keep the running ones, powering on those powered off). Returns True when
        nodes were (re)booted."""
        require_root_and_tools()
        if count < 1 or count > 200:
            raise UsageError(f"--nodes must be between 1 and 200, not {count}")
        state = self.read_state()
        off = [n for n in node_names(count) if not self._running(state, n)]
        if state and state.get("nodes") == count and set(off) <= set(state.get("off", [])):
            for name in off:
                self.power_on(name, log)
            log(f"{count} node(s) already running; re-provisioning")
            self._write_inventory(count)  # this version's settings, not the ones the nodes were booted with
            self._link_recipes()
            return False
        if state or nodes.link_exists(self.net.bridge) or nodes.pids_in_cgroups(self.net.bridge):
            log("cleaning up an earlier dev cluster first")
            self.teardown(log)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._boot_nodes(count, log)
        self._write_inventory(count)
        self._link_recipes()
        log(f"{count} node(s) booted on {self.net.bridge} ({self.net.subnet}, no route out)")
        return True

    def _boot_nodes(self, count: int, log: Log) -> None:
        # the node image is every node's read-only lower layer; the repository was made with it
        base = image.ensure_node_image(image.ensure_base_image(log), log)
        repo = image.ensure_repo(base, log=log)
        self._prepare_secrets()
        nodes.bridge_up(self.net)
        pids: dict[str, int] = {}
        share = software_share()
        binds = [f"--bind-ro={repo}:{REPO_IN_NODE}", f"--bind={self.shared_dir}:{self.shared_dir}"]
        binds += [f"--bind-ro={path}:{path}" for path in share]
        (self.state_dir / "logs").mkdir(exist_ok=True)
        for i, name in enumerate(node_names(count), start=1):
            root = nodes.overlay_mount(base, self.state_dir / "nodes" / name)
            self._customize(root, name, self.net.node_addr(i))
            pids[name] = nodes.spawn_node(name, root, self.net, binds, self._console_log(name))
            self._write_state(
                {
                    "nodes": count,
                    "pids": pids,
                    "net": vars(self.net),
                    "software": [str(p) for p in share],
                    # how power-on boots a node again, the same way: its lower layer and its binds
                    "lower": str(base),
                    "binds": binds,
                    "off": [],
                }
            )
        for i, name in enumerate(node_names(count), start=1):
            self._wait_for_ssh(i, pids[name], hint="intellect dev-cluster down")

    def _wait_for_ssh(self, index: int, pid: int, hint: str, timeout: float = 60) -> None:
        """Until the node's sshd answers; an error as soon as its nspawn exits, or after ``timeout``."""
        name, deadline = node_names(index)[-1], time.monotonic() + timeout
        while not nodes.wait_for_port(self.net.node_addr(index), 22, timeout=1):
            if not nodes.is_node_nspawn(pid, self.net.bridge, name):
                raise IntellectError(
                    f"{name} stopped while booting", hint=f"see {self._console_log(name)}; {hint}"
                )
            if time.monotonic() > deadline:
                raise IntellectError(
                    f"{name} did not answer on SSH within {timeout:.0f} s",
                    hint=f"see {self._console_log(name)}; {hint}",
                )

    def _console_log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.console.log"

    def _write_inventory(self, count: int) -> None:
        password = (self.state_dir / "dbd.password").read_text().strip()
        write_inventory(self.inventory_dir, dev_inventory(count, self.net, self.state_dir, password))

    def _link_recipes(self) -> None:
        """``shared/recipes`` -> the checkout's recipes, so that on a node, in the shared folder (where
        ``dev-cluster ssh`` starts), ``intellect launch recipes/debug-cluster.yaml`` finds the recipe and its
        relative run folder lands on the shared storage. A real folder of that name is the user's: left alone."""
        link, target = self.shared_dir / "recipes", checkout() / "recipes"
        if target.is_dir() and (link.is_symlink() or not link.exists()):
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    def _running(self, state: dict[str, Any], name: str) -> bool:
        """Whether the node's nspawn (its PID in the state) runs."""
        pid = int(state.get("pids", {}).get(name, 0))
        return bool(pid) and nodes.is_node_nspawn(pid, self.net.bridge, name)

    def _prepare_secrets(self) -> None:
        ssh = self.state_dir / "ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        key = ssh / "id_ed25519"
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "intellect-devcluster", "-f", str(key)],
                check=True,
            )
        munge = self.state_dir / "munge.key"
        if not munge.exists():
            munge.write_bytes(secrets.token_bytes(1024))
        munge.chmod(0o400)
        password = self.state_dir / "dbd.password"
        if not password.exists():
            password.write_text(secrets.token_urlsafe(18) + "\n")
        password.chmod(0o600)
        self.shared_dir.mkdir(exist_ok=True)

    def _customize(self, root: Path, name: str, addr: str) -> None:
        """Write what makes a node itself into its upper layer: identity, address, SSH key, apt source."""
        (root / "etc/machine-id").write_text("")
        (root / "etc/hostname").write_text(name + "\n")
        network = root / "etc/systemd/network"
        network.mkdir(parents=True, exist_ok=True)
        (network / "10-host0.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={addr}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "systemd-networkd.service"
        if not link.is_symlink():
            link.symlink_to("/lib/systemd/system/systemd-networkd.service")
        # Host keys of its own: the image's keys would be shared by every node (and every dev cluster).
        done = root.parent / "host-keys.done"  # beside the node's root, not in it
        if not done.exists():
            for key in (root / "etc/ssh").glob("ssh_host_*"):
                key.unlink()
            subprocess.run(["ssh-keygen", "-q", "-A", "-f", str(root)], check=True, capture_output=True)
            done.write_text("")
        dot_ssh = root / "root/.ssh"
        dot_ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        (dot_ssh / "authorized_keys").write_text((self.state_dir / "ssh/id_ed25519.pub").read_text())
        (dot_ssh / "authorized_keys").chmod(0o600)
        # `intellect` on the node's PATH: the host's venv, bound read-only at the same path (the software share).
        local_bin = root / "usr/local/bin"
        local_bin.mkdir(parents=True, exist_ok=True)
        command = local_bin / "intellect"
        command.unlink(missing_ok=True)
        command.symlink_to(Path(sys.prefix) / "bin" / "intellect")
        # Every user runs it, not only root (the watchdog's unit runs as slurm, jobs as their users): the folders
        # above a share path, such as /root for a pyenv Python, get the search bit (0711: entered, not listed).
        for share in software_share():
            for parent in (root / share.relative_to("/")).parents:
                if parent == root or not parent.is_relative_to(root):
                    break
                if parent.is_dir() and not parent.is_symlink():
                    mode = parent.stat().st_mode & 0o7777
                    if mode & 0o011 != 0o011:
                        parent.chmod(mode | 0o011)
        # Throwaway nodes: dpkg need not fsync every file it unpacks (a testbed override, as in CI images).
        dpkg_cfg = root / "etc/dpkg/dpkg.cfg.d"
        dpkg_cfg.mkdir(parents=True, exist_ok=True)
        (dpkg_cfg / "intellect-devcluster").write_text("force-unsafe-io\n")
        apt = root / "etc/apt"
        (apt / "sources.list").write_text(f"deb [trusted=yes] file:{REPO_IN_NODE} ./\n")
        for extra in (apt / "sources.list.d").glob("*"):
            extra.unlink()
        # The image's package lists name the outside mirror: drop them so apt reads only the local repository.
        for stale in [*(root / "var/lib/apt/lists").glob("*_*"), *(root / "var/cache/apt").glob("*.bin")]:
            stale.unlink()
        # apt's cache_valid_time reads the lists folder's mtime: make it look old so the first run updates.
        os.utime(root / "var/lib/apt/lists", (0, 0))

    # ---------------------------------------------------------------------------------------- down
    def teardown(self, log: Log) -> None:
        """Stop every node and remove mounts, bridge, cgroups and state (the shared folder stays)."""
        require_root_and_tools()
        state = self.read_state()
        self._close_ssh_masters()
        nodes.stop_nodes(self.net.bridge, {n: int(p) for n, p in state.get("pids", {}).items()})
        nodes.unmount_all(self.state_dir / "nodes")
        nodes.bridge_down(self.net)
        nodes.remove_cgroups(self.net.bridge)
        shutil.rmtree(fact_cache_dir(self.inventory_dir), ignore_errors=True)
        if self.state_dir.exists():
            for child in self.state_dir.iterdir():
                if child.name != "shared":
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        log("dev cluster removed (nodes, mounts, bridge, cgroups)")

    def _close_ssh_masters(self) -> None:
        for sock in (self.state_dir / "ssh").glob("cp-*"):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "node"], capture_output=True, check=False
            )

    # -------------------------------------------------------------------------------------- faults
    def node_index(self, name: str) -> int:
        """The 1-based index of one of this cluster's nodes; a UsageError that lists them for any other name
        (node names come from the command line: nothing is touched before this check)."""
        names = node_names(int(self.read_state().get("nodes", 0)))
        if name not in names:
            known = ", ".join(names) or "none: start one with intellect dev-cluster up"
            raise UsageError(f"unknown dev-cluster node {name!r} (nodes: {known})")
        return names.index(name) + 1

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The state, for one fault command at a time (two power-offs at once must not lose an update)."""
        with open(self.state_dir / "state.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self.read_state()

    def power_off(self, name: str, log: Log) -> bool:
        """Cut a node's power: every process of it SIGKILLed at once, no shutdown. Returns when none is left;
        its root (the overlay's upper layer) stays, as a disk would. False when it was off already."""
        self.node_index(name)
        require_root_and_tools()
        start = time.monotonic()
        with self._locked() as state:
            was_on = self._running(state, name)
            nodes.power_off(self.net.bridge, name, int(state.get("pids", {}).get(name, 0)) or None)
            state.setdefault("pids", {}).pop(name, None)  # only now: a power-off that failed can be retried
            state["off"] = sorted({*state.get("off", []), name})
            self._write_state(state)
        log(
            f"{name} powered off in {time.monotonic() - start:.1f} s (its root is kept)"
            if was_on
            else f"{name} is off already (nothing of it is left running)"
        )
        return was_on

    def power_on(self, name: str, log: Log) -> bool:
        """Boot a node again from its kept root, the way ``up`` booted it; returns once its sshd answers (its
        systemd starts munge and slurmd). False when it was on already."""
        index = self.node_index(name)
        require_root_and_tools()
        start = time.monotonic()
        with self._locked() as state:
            if self._running(state, name):
                log(f"{name} is on already")
                return False
            if "lower" not in state or "binds" not in state:
                raise IntellectError(
                    "this dev cluster was booted by an older intellect, which did not record how to boot a node",
                    hint="intellect dev-cluster down && intellect dev-cluster up",
                )
            if not nodes.link_exists(self.net.bridge):
                raise IntellectError(
                    f"the dev cluster's bridge {self.net.bridge} is gone", hint="intellect dev-cluster up"
                )
            # what a node that died by itself left behind (nothing, after a power-off)
            nodes.power_off(self.net.bridge, name, int(state.get("pids", {}).get(name, 0)) or None)
            root = nodes.overlay_mount(Path(state["lower"]), self.state_dir / "nodes" / name)
            pid = nodes.spawn_node(name, root, self.net, list(state["binds"]), self._console_log(name))
            state.setdefault("pids", {})[name] = pid
            state["off"] = [n for n in state.get("off", []) if n != name]
            self._write_state(state)
        self._wait_for_ssh(index, pid, hint=f"intellect dev-cluster power-off {name}")
        log(f"{name} powered on in {time.monotonic() - start:.1f} s (sshd answers)")
        return True

    def degrade(self, name: str, rate: str | None) -> list[LinkEnd]:
        """Slow a node's link to ``rate`` (a tc rate), both ways, with a tbf qdisc on each end of its veth; or,
        with None, remove them. Returns each end's root qdisc now."""
        bits = None
        if rate is not None:
            try:
                bits = nodes.parse_rate(rate)
            except ValueError as exc:
                raise UsageError(f"--rate: {exc}") from exc
        self.node_index(name)
        require_root_and_tools()
        with self._locked() as state:
            if not self._running(state, name):
                raise IntellectError(
                    f"{name} is not running: it has no link", hint=f"intellect dev-cluster power-on {name}"
                )
            ends = nodes.link_ends(self.net.bridge, name, int(state["pids"][name]))
            done: list[LinkEnd] = []
            try:
                for dev, netns in ends:
                    done.append(LinkEnd(dev, "node" if netns else "host", nodes.shape(dev, bits, netns)))
            except IntellectError:
                for end in done:  # nothing half-done: the end already shaped goes back to its default
                    nodes.shape(end.device, None)
                raise
        return done

    # -------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        state = self.read_state()
        out: dict[str, Any] = {"state_dir": str(self.state_dir), "up": bool(state), "nodes": []}
        for i, name in enumerate(node_names(int(state.get("nodes", 0))), start=1):
            running = self._running(state, name)
            link = nodes.host_link(self.net.bridge, name) if running else None
            out["nodes"].append(
                {
                    "name": name,
                    "address": self.net.node_addr(i),
                    "power": "on" if running else "off" if name in state.get("off", []) else "failed",
                    "running": running,
                    "ssh": running and nodes.wait_for_port(self.net.node_addr(i), 22, timeout=0.5),
                    "link": nodes.root_qdisc(link).describe() if link else None,
                }
            )
        if state:
            out["inventory"] = str(self.inventory_dir)
            out["shared"] = str(self.shared_dir)
            out["ssh"] = f"ssh -i {self.state_dir}/ssh/id_ed25519 root@{self.net.node_addr(1)}"
            out["software"] = state.get("software", [])
        return out

    def ssh(self, node: int, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command on a node over SSH (the tests and ``status`` use it)."""
        return subprocess.run(
            self.ssh_argv(node, command), capture_output=True, text=True, timeout=timeout, check=False
        )

    def ssh_argv(self, node: int, command: str | None = None, tty: bool = False) -> list[str]:
        """The ssh command line that logs in to node ``node`` (1-based) as root, running ``command`` if given
        (``tty``: ask for a terminal, for an interactive shell)."""
        return [
            "ssh",
            "-i",
            str(self.state_dir / "ssh/id_ed25519"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            *(["-t"] if (tty or command is None) and sys.stdin.isatty() else []),
            f"root@{self.net.node_addr(node)}",
            *([command] if command is not None else []),
        ]
