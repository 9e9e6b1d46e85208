"""From one Prometheus query to a verdict per node. Pure functions, apart from ``evaluate`` (one HTTP call).

Every check is one PromQL expression tagged with a ``check`` label (``label_replace``) and all of them are
joined with ``or`` into ONE query that covers every node: the cost is one round trip whatever the node count.

A node's verdict is the worst of its reasons, ranked ok < degraded < unknown < bad: a known fault (an Xid from
the drain list) makes a node bad even if some other data is missing. No data, NaN, a missing label or a
malformed answer give ``unknown``, never ``ok``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from intellect.health.config import Thresholds
from intellect.health.prom import PrometheusClient, PrometheusError, Sample

OK, DEGRADED, UNKNOWN, BAD = "ok", "degraded", "unknown", "bad"
RANK = {OK: 0, DEGRADED: 1, UNKNOWN: 2, BAD: 3}
NVLINK_COUNTERS = ("CRC_FLIT", "CRC_DATA", "REPLAY", "RECOVERY")
# node_exporter's infiniband collector (counters under /sys/class/infiniband/*/ports/*/counters)
IB_ERROR_COUNTERS = (
    "node_infiniband_symbol_error_total",
    "node_infiniband_port_errors_received_total",
    "node_infiniband_port_receive_remote_physical_errors_total",
    "node_infiniband_local_link_integrity_errors_total",
    "node_infiniband_excessive_buffer_overrun_errors_total",
    "node_infiniband_link_error_recovery_total",
)
IB_LINK_DOWNED = "node_infiniband_link_downed_total"
IB_ACTIVE, IB_LINK_UP = 4, 5


@dataclass(frozen=True)
class Reason:
    rule: str
    status: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "status": self.status, "text": self.text}


@dataclass
class Verdict:
    node: str
    status: str = OK
    reasons: list[Reason] = field(default_factory=list)

    def add(self, rule: str, status: str, text: str) -> None:
        self.reasons.append(Reason(rule, status, text))
        if RANK[status] > RANK[self.status]:
            self.status = status

    @property
    def summary(self) -> str:
        """The reasons that decided the verdict, in one line."""
        return "; ".join(r.text for r in self.reasons if r.status == self.status) or self.status

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "status": self.status, "reasons": [r.to_json() for r in self.reasons]}


@dataclass
class Report:
    verdicts: dict[str, Verdict]
    error: str | None = None
    unattributed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [v.to_json() for v in self.verdicts.values()],
            "error": self.error,
            "unattributed_samples": self.unattributed,
            "query_seconds": round(self.seconds, 4),
        }


# ------------------------------------------------------------------------------------------------ query


def checks(th: Thresholds) -> dict[str, str]:
    """check name → PromQL expression. Each returns per-GPU / per-port / per-target series."""
    jobs = f'up{{job=~"{th.node_job}|{th.dcgm_job}"}}'
    out = {
        "up": jobs,
        "xid_last": "DCGM_FI_DEV_XID_ERRORS",
        "xid_changes": f"changes(DCGM_FI_DEV_XID_ERRORS[{th.xid_window}])",
        "gpu_temp": "DCGM_FI_DEV_GPU_TEMP",
        "ecc_dbe": "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "row_remap_failure": "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "row_remap_pending": "DCGM_FI_DEV_ROW_REMAP_PENDING",
        "ib_state": "node_infiniband_state_id",
        "ib_phys_state": "node_infiniband_physical_state_id",
        "ib_rate": "node_infiniband_rate_bytes_per_second",
        "ib_link_downed": f"increase({IB_LINK_DOWNED}[{th.ib_window}])",
    }
    for kind in NVLINK_COUNTERS:
        name = f"DCGM_FI_DEV_NVLINK_{kind}_ERROR_COUNT_TOTAL"
        out[f"nvlink_{kind.lower()}"] = f"increase({name}[{th.nvlink_window}])"
    for name in IB_ERROR_COUNTERS:
        out["iberr_" + name.removeprefix("node_infiniband_").removesuffix("_total")] = (
            f"increase({name}[{th.ib_window}])"
        )
    return out


def build_query(th: Thresholds) -> str:
    """ONE expression for all checks and all nodes."""
    return " or ".join(
        f'label_replace({expr}, "check", "{name}", "", "")' for name, expr in checks(th).items()
    )


def evaluate(client: PrometheusClient, th: Thresholds, nodes: list[str] | None = None) -> Report:
    """Query once; every requested node gets a verdict. Prometheus errors give unknown, never a raise."""
    start = time.perf_counter()
    try:
        samples = client.query(build_query(th))
    except PrometheusError as exc:
        verdicts = {n: Verdict(n) for n in nodes or []}
        for v in verdicts.values():
            v.add("prometheus", UNKNOWN, f"no data: {exc.message}")
        return Report(verdicts, error=exc.message, seconds=time.perf_counter() - start)
    report = judge(samples, th, nodes)
    report.seconds = time.perf_counter() - start
    return report


# ---------------------------------------------------------------------------------------------- verdicts

Grouped = dict[str, list[Sample]]  # check → samples of one node


def node_of(labels: dict[str, str], th: Thresholds) -> str | None:
    for key in th.node_labels:
        if labels.get(key):
            return labels[key]
    return None


def judge(samples: list[Sample], th: Thresholds, nodes: list[str] | None = None) -> Report:
    by_node: dict[str, Grouped] = defaultdict(lambda: defaultdict(list))
    unattributed = 0
    for s in samples:
        node, check = node_of(s.labels, th), s.labels.get("check")
        if node is None or check is None:
            unattributed += 1
            continue
        by_node[node][check].append(s)
    wanted = nodes if nodes is not None else sorted(by_node)
    verdicts = {n: judge_node(n, by_node.get(n, {}), th) for n in wanted}
    return Report(verdicts, unattributed=unattributed)


def judge_node(node: str, data: Grouped, th: Thresholds) -> Verdict:
    v = Verdict(node)
    if not any(data.values()):
        v.add("no_data", UNKNOWN, "no metrics in Prometheus for this node")
        return v
    node_up = _target_up(v, data, th.node_job, "node_exporter", th.require_node_exporter)
    dcgm_up = _target_up(v, data, th.dcgm_job, "dcgm-exporter", th.require_dcgm)
    if dcgm_up:
        _gpu_rules(v, data, th)
    if node_up:
        _ib_rules(v, data, th)
    return v


def _target_up(v: Verdict, data: Grouped, job: str, what: str, required: bool) -> bool:
    ups = [s for s in data.get("up", []) if s.labels.get("job") == job]
    if not ups:
        if required:
            v.add(f"{job}_up", UNKNOWN, f"no {what} target in Prometheus")
        return False
    if any(math.isnan(s.value) for s in ups):
        v.add(f"{job}_up", UNKNOWN, f"{what} up is NaN")
        return False
    if any(s.value < 1 for s in ups):
        v.add(f"{job}_up", UNKNOWN, f"{what} down (scrape failing)")
        return False
    return True


def _per_gpu(v: Verdict, data: Grouped, check: str) -> dict[str, float]:
    """gpu → value for one check; a sample without a gpu label or with NaN makes the node unknown."""
    out: dict[str, float] = {}
    for s in data.get(check, []):
        gpu = s.labels.get("gpu")
        if gpu is None:
            v.add(check, UNKNOWN, f"{check}: a series without a gpu label")
        elif math.isnan(s.value):
            v.add(check, UNKNOWN, f"{check}: NaN on GPU {gpu}")
        else:
            out[gpu] = s.value
    return out


def _gpu_rules(v: Verdict, data: Grouped, th: Thresholds) -> None:
    last, changes = _per_gpu(v, data, "xid_last"), _per_gpu(v, data, "xid_changes")
    temps = _per_gpu(v, data, "gpu_temp")
    gpus = set(last) | set(temps)
    if not gpus:
        v.add("gpu_metrics", UNKNOWN, "dcgm-exporter is up but reports no GPU metrics")
        return
    if th.gpus_expected is not None and len(gpus) < th.gpus_expected:
        v.add("gpu_count", BAD, f"only {len(gpus)} of {th.gpus_expected} GPUs report")
    for gpu in sorted(last, key=_gpu_key):
        _xid_rule(v, gpu, int(last[gpu]), changes.get(gpu), th)
    for gpu, t in sorted(temps.items(), key=lambda kv: _gpu_key(kv[0])):
        if t >= th.gpu_temp_bad:
            v.add("gpu_temp", BAD, f"GPU {gpu} at {t:.0f} °C (bad at {th.gpu_temp_bad:.0f})")
        elif t >= th.gpu_temp_degraded:
            v.add("gpu_temp", DEGRADED, f"GPU {gpu} at {t:.0f} °C (degraded at {th.gpu_temp_degraded:.0f})")
    for gpu, n in _per_gpu(v, data, "ecc_dbe").items():
        if n >= th.ecc_dbe_bad:
            v.add("ecc_dbe", BAD, f"{n:.0f} double-bit ECC errors on GPU {gpu}")
    if th.row_remap_bad:
        for check, word in (("row_remap_failure", "failed"), ("row_remap_pending", "pending")):
            for gpu, n in _per_gpu(v, data, check).items():
                if n > 0:
                    v.add(check, BAD, f"row remap {word} on GPU {gpu}")
    _nvlink_rule(v, data, th)


def _xid_rule(v: Verdict, gpu: str, xid: int, changes: float | None, th: Thresholds) -> None:
    if xid == 0:
        return
    recent = bool(changes and changes > 0)
    if xid in th.xid_drain and recent:
        v.add("xid", BAD, f"Xid {xid} on GPU {gpu}")
    elif xid in th.xid_drain:
        v.add("xid", DEGRADED, f"last Xid {xid} on GPU {gpu} is older than {th.xid_window}")
    elif recent:
        v.add("xid", DEGRADED, f"Xid {xid} on GPU {gpu} (not in the drain list)")


def _nvlink_rule(v: Verdict, data: Grouped, th: Thresholds) -> None:
    totals: dict[str, float] = defaultdict(float)
    for kind in NVLINK_COUNTERS:
        for gpu, n in _per_gpu(v, data, f"nvlink_{kind.lower()}").items():
            totals[gpu] += n
    for gpu, n in sorted(totals.items(), key=lambda kv: _gpu_key(kv[0])):
        if n >= th.nvlink_errors_bad:
            v.add("nvlink", BAD, f"{n:.0f} NVLink errors on GPU {gpu} in {th.nvlink_window}")
        elif n >= th.nvlink_errors_degraded:
            v.add("nvlink", DEGRADED, f"{n:.0f} NVLink errors on GPU {gpu} in {th.nvlink_window}")


def _per_port(v: Verdict, data: Grouped, check: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in data.get(check, []):
        dev, port = s.labels.get("device"), s.labels.get("port")
        if dev is None or port is None:
            v.add(check, UNKNOWN, f"{check}: a series without device/port labels")
        elif math.isnan(s.value):
            v.add(check, UNKNOWN, f"{check}: NaN on {dev} port {port}")
        else:
            out[f"{dev} port {port}"] = s.value
    return out


def _ib_rules(v: Verdict, data: Grouped, th: Thresholds) -> None:
    states = _per_port(v, data, "ib_state")
    if not states:
        if th.ib_required:
            v.add("ib_ports", UNKNOWN, "node_exporter reports no InfiniBand ports")
        return
    for port, s in sorted(states.items()):
        if s != IB_ACTIVE:
            v.add("ib_state", BAD, f"IB {port} is not ACTIVE (state {s:.0f})")
    for port, s in sorted(_per_port(v, data, "ib_phys_state").items()):
        if s != IB_LINK_UP:
            v.add("ib_phys_state", BAD, f"IB {port} physical link is not LinkUp (state {s:.0f})")
    if th.ib_rate_gbps is not None:
        for port, rate in sorted(_per_port(v, data, "ib_rate").items()):
            gbps = rate * 8 / 1e9
            if gbps < th.ib_rate_gbps:
                v.add("ib_rate", BAD, f"IB {port} at {gbps:.0f} Gb/s, expected {th.ib_rate_gbps:.0f}")
    for port, n in sorted(_per_port(v, data, "ib_link_downed").items()):
        if n > 0:
            v.add("ib_link_downed", BAD, f"IB {port} link went down {n:.0f}× in {th.ib_window}")
    errors: dict[str, float] = defaultdict(float)
    for check in data:
        if check.startswith("iberr_"):
            for port, n in _per_port(v, data, check).items():
                errors[port] += n
    for port, n in sorted(errors.items()):
        if n >= th.ib_errors_bad:
            v.add("ib_errors", BAD, f"{n:.0f} IB errors on {port} in {th.ib_window}")
        elif n >= th.ib_errors_degraded:
            v.add("ib_errors", DEGRADED, f"{n:.0f} IB errors on {port} in {th.ib_window}")


def _gpu_key(gpu: str) -> tuple[int, str]:
    return (int(gpu), gpu) if gpu.isdigit() else (1 << 30, gpu)
