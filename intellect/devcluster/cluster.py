"""``intellect dev-cluster``: N systemd-nspawn nodes on a private bridge, provisioned by our own playbooks.

Layout under the state folder (``INTELLECT_DEVCLUSTER_DIR``, default /var/lib/intellect/devcluster):
``nodes/<name>/{upper,work,root}`` (over the cached node image, unpacked, every node's lower layer), ``ssh/``,
``munge.key``, ``inventory/``, ``facts/``, ``logs/``, ``state.json``, and ``shared/``, bound into every node at
the same path (it stands for Lustre/NFS; ``down`` keeps it, it holds users' run folders).

The software share: the running intellect's checkout, its venv and the Python the venv was made from are bound
read-only into every node at their host paths, as a site's software share would be. So ``intellect`` on a node
(``/usr/local/bin/intellect``) and the roles of a job that Slurm starts there run the same code and interpreter
as the host, with nothing installed in the nodes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
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
        """Boot ``count`` nodes (or keep the running ones). Returns True when nodes were (re)booted."""
        require_root_and_tools()
        if count < 1 or count > 200:
            raise UsageError(f"--nodes must be between 1 and 200, not {count}")
        state = self.read_state()
        if state and state.get("nodes") == count and self._all_running(state):
            log(f"{count} node(s) already running; re-provisioning")
            self._write_inventory(count)  # this version's settings, not the ones the nodes were booted with
            self._link_recipes()
            return False
        if state or nodes.link_exists(self.net.bridge) or nodes.pids_in_cgroups(self.net.bridge):
            log("cleaning up an earlier dev cluster first")
            self.teardown(log)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # the node image is every node's read-only lower layer; the repository was made with it
        base = image.ensure_node_image(image.ensure_base_image(log), log)
        repo = image.ensure_repo(base, log=log)
        self._prepare_secrets()
        nodes.bridge_up(self.net)
        pids = {}
        share = software_share()
        for i, name in enumerate(node_names(count), start=1):
            root = nodes.overlay_mount(base, self.state_dir / "nodes" / name)
            self._customize(root, name, self.net.node_addr(i))
            binds = [f"--bind-ro={repo}:{REPO_IN_NODE}", f"--bind={self.shared_dir}:{self.shared_dir}"]
            binds += [f"--bind-ro={path}:{path}" for path in share]
            logs = self.state_dir / "logs"
            logs.mkdir(exist_ok=True)
            pids[name] = nodes.spawn_node(name, root, self.net, binds, logs / f"{name}.console.log")
            self._write_state(
                {"nodes": count, "pids": pids, "net": vars(self.net), "software": [str(p) for p in share]}
            )
        for i, name in enumerate(node_names(count), start=1):
            if not nodes.wait_for_port(self.net.node_addr(i), 22, timeout=60):
                raise IntellectError(
                    f"{name} did not answer on SSH within 60 s",
                    hint=f"see {self.state_dir}/logs/{name}.console.log; intellect dev-cluster down",
                )
        self._write_inventory(count)
        self._link_recipes()
        log(f"{count} node(s) booted on {self.net.bridge} ({self.net.subnet}, no route out)")
        return True

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

    def _all_running(self, state: dict[str, Any]) -> bool:
        pids = state.get("pids", {})
        return len(pids) == state.get("nodes") and all(nodes.alive(int(p)) for p in pids.values())

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

    # -------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        state = self.read_state()
        out: dict[str, Any] = {"state_dir": str(self.state_dir), "up": bool(state), "nodes": []}
        for i, name in enumerate(node_names(int(state.get("nodes", 0))), start=1):
            pid = int(state.get("pids", {}).get(name, 0))
            out["nodes"].append(
                {
                    "name": name,
                    "address": self.net.node_addr(i),
                    "running": bool(pid) and nodes.alive(pid),
                    "ssh": nodes.wait_for_port(self.net.node_addr(i), 22, timeout=0.5),
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
