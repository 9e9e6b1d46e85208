"""A real Slurm cluster on loopback: munged, slurmctld and several slurmd (``slurmd -N``) on 127.0.0.1.

This is the light mode of the dev cluster (ARCHITECTURE.md): real Debian Slurm daemons, no containers. It is
used by the Slurm-only integration tests and needs root and Debian's slurmctld, slurmd, slurm-client and munge.
Everything lives under one folder; ``stop()`` ends exactly the processes it started, by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from intellect.errors import IntellectError
from intellect.procs import terminate_then_kill

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing_tools() -> list[str]:
    return [d for d in (*DAEMONS, "sbatch", "scontrol", "sinfo") if shutil.which(d) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoopbackCluster:
    root: Path
    nodes: int = 3
    cpus: int = 2
    memory_mb: int = 2000
    node_prefix: str = "node-"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def node_names(self) -> list[str]:
        return [f"{self.node_prefix}{i}" for i in range(1, self.nodes + 1)]

    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (and intellect) to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------------------------------- config
    def write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        key = r / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (r / "munge").chmod(0o700)
        ctl_port = free_port()
        lines = [
            "# intellect loopback test cluster: several slurmd on 127.0.0.1",
            "ClusterName=intellect-loopback",
            f"SlurmctldHost=localhost({'127.0.0.1'})",
            f"SlurmctldPort={ctl_port}",
            f"AuthInfo=socket={r}/munge/munge.sock",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0,bf_interval=1",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "KillWait=5",
            "MinJobAge=300",
            "SlurmctldTimeout=10",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            f"DefMemPerNode={self.memory_mb // 4}",
        ]
        for name in self.node_names:
            lines.append(
                f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={free_port()} "
                f"CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN"
            )
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES")
        self.conf.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------------------------------ process
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env())

    def start(self, timeout: float = 30.0) -> LoopbackCluster:
        """Start munged, slurmctld and the slurmd; on any failure stop what was started, then raise."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> LoopbackCluster:
        if os.geteuid() != 0:
            raise IntellectError("the loopback Slurm cluster needs root (slurmd runs jobs as their users)")
        missing = missing_tools()
        if missing:
            raise IntellectError(f"missing Slurm/munge tools: {', '.join(missing)}")
        self.write_config()
        m = self.root / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                "--force",
                f"--socket={m}/munge.sock",
                f"--key-file={m}/munge.key",
                f"--pid-file={m}/munged.pid",
                f"--seed-file={m}/munged.seed",
                f"--log-file={m}/munged.log",
            ],
        )
        self._wait(lambda: (m / "munge.sock").exists(), timeout, "munged socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(self._ctl_up, timeout, "slurmctld")
        for name in self.node_names:
            self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-N", name, "-f", str(self.conf)])
        self._wait(self._all_idle, timeout, "all nodes idle")
        return self

    def power_off(self, name: str) -> int:
        """``name`` loses power: its slurmd, its slurmstepds and every process of a job step on it get SIGKILL (all
        slurmd share this host: a step's processes are told apart by SLURMD_NODENAME). How many were killed."""
        victims: set[int] = set()
        proc = self.procs.pop(f"slurmd-{name}", None)
        if proc is not None:
            victims.add(proc.pid)
        marker = f"SLURMD_NODENAME={name}".encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if marker in environ:
                victims.add(int(pid))
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{parent}/cmdline").read_bytes().startswith(b"slurmstepd"):
                        victims.add(parent)
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=10)
        return len(victims)

    def power_on(self, name: str) -> None:
        """Start ``name``'s slurmd again (it registers and, with ReturnToService=2, takes work again)."""
        if f"slurmd-{name}" not in self.procs:
            self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-N", name, "-f", str(self.conf)])

    def _ctl_up(self) -> bool:
        res = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, env=self.env(), check=False
        )
        return " is UP" in res.stdout

    def _all_idle(self) -> bool:
        res = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=self.env(), check=False
        )
        states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
        return len(states) == self.nodes and all(s == "idle" for s in states.values())

    def _wait(self, probe, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise IntellectError(f"{dead[0]} exited early; see {self.root}/log/")
            if probe():
                return
            time.sleep(0.2)
        raise IntellectError(f"timed out waiting for {what}; see {self.root}/log/")

    def stop(self) -> None:
        """Cancel the cluster's jobs (their slurmstepd outlive slurmd), then SIGTERM every daemon we started
        (slurmd first), then SIGKILL what is left."""
        ctl = self.procs.get("slurmctld")
        if ctl is not None and ctl.poll() is None:
            self._cancel_all_jobs()
        order = sorted(self.procs, key=lambda n: (not n.startswith("slurmd"), n == "munged"))
        for name in order:
            terminate_then_kill(self.procs[name])
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def _cancel_all_jobs(self, timeout: float = 15.0) -> None:
        def queue() -> list[str]:
            res = subprocess.run(
                ["squeue", "-h", "-a", "-o", "%A"],
                capture_output=True,
                text=True,
                env=self.env(),
                check=False,
            )
            return res.stdout.split()

        jobs = queue()
        if not jobs:
            return
        subprocess.run(["scancel", *jobs], capture_output=True, env=self.env(), check=False)
        deadline = time.monotonic() + timeout
        while queue() and time.monotonic() < deadline:
            time.sleep(0.3)

    def __enter__(self) -> LoopbackCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
