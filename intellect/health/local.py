"""The local check Slurm runs as HealthCheckProgram: fast (< 1 s), local sources only, drains its own node.

Sources: ``/sys/class/infiniband/*/ports/*/{state,phys_state,rate}`` and ``counters/*`` of the InfiniBand ports
(sysfs ``link_layer`` tells them from RoCE/Ethernet ports, which are skipped; error counters are compared with the
previous run's values, kept in a small state file), and ``nvidia-smi`` when present (GPU count, uncorrected ECC,
pending/failed row remaps, temperature). Thresholds and the node type's expected IB rate and GPU count come from
``intellect.health.config`` (``--node-type``, ``--thresholds``), the same facts as the Prometheus verdicts.
Problems drain this node with our prefix:
``[intellect] root <UTC>: healthcheck: mlx5_0 port 1 state DOWN``. A person's drain is never replaced.

slurm.conf::

    HealthCheckProgram=/opt/intellect/venv/bin/intellect-healthcheck   (python -m intellect.health.local
                                                                         --node-type h200)
    HealthCheckInterval=60
    HealthCheckNodeState=ANY,CYCLE

Exit status: 0 healthy, 1 problems found (and drained unless --no-drain), 2 the check itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from intellect.errors import UsageError
from intellect.health.config import Thresholds, load_thresholds

ERROR_COUNTERS = (
    "symbol_error",
    "port_rcv_errors",
    "port_rcv_remote_physical_errors",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
    "link_error_recovery",
    "link_downed",
)
NVSMI_FIELDS = "index,temperature.gpu,ecc.errors.uncorrected.volatile.total"
NVSMI_REMAP = "gpu_bus_id,remapped_rows.pending,remapped_rows.failure"


_TH = Thresholds()


@dataclass(frozen=True)
class LocalThresholds:
    ib_rate_gbps: float | None = None  # expected port rate; lower is a problem
    ib_error_delta: int = int(_TH.ib_errors_bad)  # error counter increase since the previous run
    gpu_temp_bad: float = _TH.gpu_temp_bad
    gpus_expected: int | None = None  # fewer GPUs in nvidia-smi is a problem

    @classmethod
    def of(cls, th: Thresholds, node_type: str | None = None) -> LocalThresholds:
        """The local check's share of the health thresholds, for one node type (None: the default type)."""
        nt = th.node_type(node_type)
        if nt is None:
            raise UsageError(f"unknown node type {node_type!r}; known: {', '.join(sorted(th.node_types))}")
        return cls(nt.ib_rate_gbps, int(th.ib_errors_bad), th.gpu_temp_bad, nt.gpus or None)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _leading_number(text: str) -> float | None:
    head = text.split(":", 1)[0].split()[0] if text else ""
    try:
        return float(head)
    except ValueError:
        return None


def check_ib(sysfs: Path, th: LocalThresholds, previous: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """Problems on the InfiniBand ports under ``sysfs/class/infiniband``; and the counters seen now."""
    problems: list[str] = []
    counters: dict[str, int] = {}
    for port in sorted((sysfs / "class" / "infiniband").glob("*/ports/*")):
        name = f"{port.parent.parent.name} port {port.name}"
        if _read(port / "link_layer") == "Ethernet":
            continue
        state, phys = _read(port / "state"), _read(port / "phys_state")
        if _leading_number(state) != 4:
            problems.append(f"{name} state {state.split(':')[-1].strip() or 'unreadable'}")
        if phys and _leading_number(phys) != 5:
            problems.append(f"{name} link {phys.split(':')[-1].strip()}")
        rate = _leading_number(_read(port / "rate"))
        if th.ib_rate_gbps is not None and (rate is None or rate < th.ib_rate_gbps):
            problems.append(f"{name} rate {rate if rate is not None else '?'} Gb/s < {th.ib_rate_gbps:g}")
        for c in ERROR_COUNTERS:
            value = _leading_number(_read(port / "counters" / c))
            if value is None:
                continue
            key = f"{name}:{c}"
            counters[key] = int(value)
            delta = int(value) - previous.get(key, int(value))
            if c == "link_downed" and delta > 0:
                problems.append(f"{name} link went down {delta}x")
            elif delta >= th.ib_error_delta:
                problems.append(f"{name} {c} +{delta}")
    return problems, counters


def parse_nvidia_smi(gpus_csv: str, remap_csv: str, th: LocalThresholds) -> list[str]:
    """Problems in ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` outputs (pure)."""
    problems = []
    rows = [[p.strip() for p in line.split(",")] for line in gpus_csv.splitlines()]
    rows = [r for r in rows if len(r) == 3]
    if th.gpus_expected is not None and len(rows) < th.gpus_expected:
        problems.append(f"only {len(rows)} of {th.gpus_expected} GPUs in nvidia-smi")
    for parts in rows:
        idx, temp, dbe = parts
        if _leading_number(temp) is not None and float(temp) >= th.gpu_temp_bad:
            problems.append(f"GPU {idx} at {temp} C")
        if dbe.isdigit() and int(dbe) > 0:
            problems.append(f"GPU {idx} {dbe} uncorrected ECC errors")
    for line in remap_csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].lower() in ("yes", "1"):
            problems.append(f"GPU {parts[0]} row remap pending")
        if len(parts) == 3 and parts[2].lower() in ("yes", "1"):
            problems.append(f"GPU {parts[0]} row remap failed")
    return problems


def check_gpus(th: LocalThresholds, timeout: float = 5.0) -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [f"nvidia-smi not found, {th.gpus_expected} GPUs expected"] if th.gpus_expected else []
    try:
        q = [exe, "--format=csv,noheader,nounits"]
        gpus = subprocess.run(
            [*q, f"--query-gpu={NVSMI_FIELDS}"], capture_output=True, text=True, timeout=timeout
        )
        remap = subprocess.run([*q, f"--query-remapped-rows={NVSMI_REMAP}"], capture_output=True, text=True,
                               timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return ["nvidia-smi did not answer"]
    if gpus.returncode != 0:
        return [f"nvidia-smi failed: {(gpus.stderr or gpus.stdout).strip()[:80]}"]
    return parse_nvidia_smi(gpus.stdout, remap.stdout if remap.returncode == 0 else "", th)


def _state(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="intellect node health check (Slurm HealthCheckProgram).")
    ap.add_argument("--sysfs", default="/sys", help="sysfs root (tests pass a fixture tree)")
    ap.add_argument(
        "--node-type", default=None, help="node type of intellect.health.config (default: generic)"
    )
    ap.add_argument(
        "--thresholds", default=None, help="health thresholds YAML (as intellect health --thresholds)"
    )
    ap.add_argument(
        "--ib-rate", type=float, default=None, help="expected IB rate in Gb/s (overrides the type)"
    )
    ap.add_argument("--state-file", default="/var/lib/intellect/healthcheck.json")
    ap.add_argument("--node", default=socket.gethostname().split(".")[0])
    ap.add_argument("--no-drain", action="store_true", help="report only")
    args = ap.parse_args(argv)
    try:
        th = LocalThresholds.of(load_thresholds(args.thresholds), args.node_type)
    except UsageError as exc:
        print(f"healthcheck: {exc.message}", file=sys.stderr)
        return 2
    if args.ib_rate is not None:
        th = dataclasses.replace(th, ib_rate_gbps=args.ib_rate)
    state = Path(args.state_file)
    problems, counters = check_ib(Path(args.sysfs), th, _state(state))
    problems += check_gpus(th)
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(counters))
    except OSError:
        pass
    if not problems:
        return 0
    text = "healthcheck: " + "; ".join(problems)
    print(f"{args.node}: {text}", file=sys.stderr)
    if not args.no_drain:
        return _drain(args.node, text[:180])
    return 1


def _drain(node: str, text: str) -> int:
    from intellect.errors import IntellectError
    from intellect.slurm import ops

    try:
        result = ops.drain([node], text, source="healthcheck")
    except IntellectError as exc:
        print(f"drain failed: {exc.message}", file=sys.stderr)
        return 2
    for n, why in result.skipped.items():
        print(f"{n}: not drained: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
