"""From one Prometheus query to a verdict per node. Pure functions, apart from ``evaluate`` (one HTTP call).

Every check is one PromQL expression (``intellect.health.checks``) tagged with a ``check`` label and all of them are
joined with ``or`` into ONE query that covers every node: the cost is one round trip whatever the node count.

A node's verdict is the worst of its reasons, ranked ok < degraded < unknown < bad: a known fault (an Xid from
the drain list) makes a node bad even if some other data is missing. No data, NaN, a missing label, an unknown
node type or a malformed answer give ``unknown``, never ``ok``.

What each node must show comes from its node type (the ``node_type`` target label, else
``Thresholds.default_node_type``): GPUs that must report, its InfiniBand HCAs (a device pattern: node_exporter does
not tell InfiniBand from RoCE ports) and their rate and count, mounts that must answer.

Faults stay bad until there is evidence of repair, never because time passed: a drain-list Xid while the gauge
holds it, the exporter counts it or the ``intellect:gpu_xid_drain_latched`` recording rule remembers it; ECC
double-bit errors while the volatile counter is above 0; a row remap failure or pending while the gauge says so;
a missing GPU until it reports. An exporter down for ``exporter_down_grace`` is bad ("exporter down"); before that,
unknown. Reason ``rule`` names are stable (the watchdog compares them): no_data, node_type, node_up, dcgm_up,
exporter_down, gpu_metrics, gpu_count, rules_missing, xid, gpu_temp, memory_temp, ecc_dbe, row_remap_failure,
row_remap_pending, clock_events, pcie_replay, nvlink, ib_collector, ib_ports, ib_state, ib_phys_state, ib_rate,
ib_link_downed, ib_errors, fs_collector, mount, prometheus.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from intellect.health import checks as q
from intellect.health.checks import build_query, checks
from intellect.health.config import CLOCK_EVENTS_BAD, CLOCK_EVENTS_DEGRADED, NodeType, Thresholds
from intellect.health.prom import PrometheusClient, PrometheusError, Sample

__all__ = ["BAD", "DEGRADED", "OK", "RANK", "UNKNOWN", "Reason", "Report", "Verdict", "build_query", "checks",
           "evaluate", "judge", "judge_node", "node_of"]  # fmt: skip

OK, DEGRADED, UNKNOWN, BAD = "ok", "degraded", "unknown", "bad"
RANK = {OK: 0, DEGRADED: 1, UNKNOWN: 2, BAD: 3}
EXPORTER_DOWN = "exporter_down"


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
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [v.to_json() for v in self.verdicts.values()],
            "error": self.error,
            "warnings": self.warnings,
            "unattributed_samples": self.unattributed,
            "query_seconds": round(self.seconds, 4),
        }


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


# ------------------------------------------------------------------------------------------- attribution

Grouped = dict[str, list[Sample]]  # check → samples of one node


def node_of(labels: dict[str, str], th: Thresholds) -> str | None:
    for key in th.node_labels:
        if labels.get(key):
            return labels[key]
    return None


def _host(instance: str) -> str:
    """``10.0.0.2:9100`` → ``10.0.0.2``; ``[fe80::1]:9100`` → ``[fe80::1]``."""
    if instance.startswith("["):
        return instance.split("]", 1)[0] + "]"
    return instance.rsplit(":", 1)[0]


def _instance_nodes(samples: list[Sample], th: Thresholds) -> dict[str, str]:
    """``instance`` (and its host part) → node, where exactly one node is seen there. It names the node of a target
    without a ``node`` label: its ``up`` from its series' ``Hostname``/``hostname``, and node_exporter's series (which
    carry no hostname) from the dcgm-exporter at the same host."""
    seen: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        node, inst = node_of(s.labels, th), s.labels.get("instance")
        if node and inst:
            seen[inst].add(node)
            seen["host " + _host(inst)].add(node)
    return {key: next(iter(ns)) for key, ns in seen.items() if len(ns) == 1}


def _by_instance(labels: dict[str, str], nodes: dict[str, str]) -> str | None:
    inst = labels.get("instance", "")
    return nodes.get(inst) or nodes.get("host " + _host(inst)) if inst else None


def judge(samples: list[Sample], th: Thresholds, nodes: list[str] | None = None) -> Report:
    by_node: dict[str, Grouped] = defaultdict(lambda: defaultdict(list))
    unattributed = 0
    instances = _instance_nodes(samples, th)
    info = [s for s in samples if s.labels.get("check") == "rules"]
    for s in samples:
        check = s.labels.get("check")
        if check == "rules":  # one per Prometheus, no node: read by _rules_warnings and judge_node
            continue
        node = node_of(s.labels, th) or _by_instance(s.labels, instances)
        if node is None or check is None:
            unattributed += 1
            continue
        by_node[node][check].append(s)
    wanted = nodes if nodes is not None else sorted(by_node)
    verdicts = {n: judge_node(n, by_node.get(n, {}), th, rules_loaded=bool(info)) for n in wanted}
    return Report(verdicts, unattributed=unattributed, warnings=_rules_warnings(info, th))


def _rules_warnings(info: list[Sample], th: Thresholds) -> list[str]:
    want = ",".join(str(x) for x in th.xid_drain)
    if not info:
        return ["Prometheus does not evaluate intellect's recording rules (monitoring/rules/gpu.yml)"]
    if any(s.labels.get("xid_drain") != want for s in info):
        got = sorted({s.labels.get("xid_drain", "?") for s in info})
        return [f"Prometheus evaluates rules for Xid drain list {got}, the thresholds say {want}: "
                "regenerate and reinstall monitoring/rules (python -m intellect.health.generate)"]  # fmt: skip
    return []


# ---------------------------------------------------------------------------------------------- verdicts


def judge_node(node: str, data: Grouped, th: Thresholds, rules_loaded: bool = True) -> Verdict:
    v = Verdict(node)
    if not any(data.values()):
        v.add("no_data", UNKNOWN, "no metrics in Prometheus for this node")
        return v
    nt = _node_type(v, data, th)
    node_up = _target_up(v, data, th, th.node_job, "node_exporter", th.require_node_exporter)
    dcgm_up = _target_up(v, data, th, th.dcgm_job, "dcgm-exporter", th.require_dcgm and nt.gpus != 0)
    if dcgm_up:
        _gpu_rules(v, data, th, nt, rules_loaded)
    else:
        _xid_rules(v, data, th)  # a latched Xid stays bad while the exporter is down
    if node_up:
        _ib_rules(v, data, th, nt)
        _mount_rules(v, data, nt)
    return v


def _node_type(v: Verdict, data: Grouped, th: Thresholds) -> NodeType:
    named = sorted({s.labels[th.node_type_label] for ss in data.values() for s in ss
                    if s.labels.get(th.node_type_label)})  # fmt: skip
    if len(named) > 1:
        v.add("node_type", UNKNOWN, f"targets disagree on {th.node_type_label}: {', '.join(named)}")
    nt = th.node_type(named[0] if named else None)
    if nt is None:
        v.add("node_type", UNKNOWN, f"node type {named[0]!r} is not configured "
                                    f"(known: {', '.join(sorted(th.node_types))})")  # fmt: skip
        nt = th.node_type(None)
    assert nt is not None  # default_node_type is validated by Thresholds
    return nt


def _target_up(v: Verdict, data: Grouped, th: Thresholds, job: str, what: str, required: bool) -> bool:
    ups = [s for s in data.get("up", []) if s.labels.get("job") == job]
    if not ups:
        if required:
            v.add(f"{job}_up", UNKNOWN, f"no {what} target in Prometheus")
        return False
    if any(math.isnan(s.value) for s in ups):
        v.add(f"{job}_up", UNKNOWN, f"{what} up is NaN")
        return False
    if any(s.value < 1 for s in ups):
        maxes = [s.value for s in data.get("up_max", []) if s.labels.get("job") == job]
        grace = th.exporter_down_grace
        if required and maxes and all(m < 1 for m in maxes):
            v.add(EXPORTER_DOWN, BAD, f"exporter down: {what} not scraped for {grace}")
        else:
            v.add(f"{job}_up", UNKNOWN, f"{what} down (scrape failing; bad after {grace})")
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
            out[gpu] = max(s.value, out.get(gpu, -math.inf))
    return out


def _gpu_rules(v: Verdict, data: Grouped, th: Thresholds, nt: NodeType, rules_loaded: bool) -> None:
    temps, hbm = _per_gpu(v, data, "gpu_temp"), _per_gpu(v, data, "memory_temp")
    gpus = set(temps) | set(hbm) | set(_per_gpu(v, data, "xid_last"))
    if not gpus and nt.gpus != 0:
        v.add("gpu_metrics", UNKNOWN, "dcgm-exporter is up but reports no GPU metrics")
    if nt.gpus and len(gpus) < nt.gpus:
        missing = [str(i) for i in range(nt.gpus) if str(i) not in gpus]
        which = f" (missing: GPU {', '.join(missing)})" if missing else ""
        v.add("gpu_count", BAD, f"only {len(gpus)} of {nt.gpus} GPUs report{which}")
    if gpus and not rules_loaded and th.require_recording_rules:
        v.add("rules_missing", UNKNOWN, "Prometheus lacks intellect's recording rules (monitoring/rules/gpu.yml): "
                                        "Xid memory is off")  # fmt: skip
    _xid_rules(v, data, th)
    _threshold(v, "gpu_temp", temps, th.gpu_temp_degraded, th.gpu_temp_bad, "GPU {g} at {x:.0f} °C")
    _threshold(
        v, "memory_temp", hbm, th.memory_temp_degraded, th.memory_temp_bad, "GPU {g} HBM at {x:.0f} °C"
    )
    for gpu, n in sorted(_per_gpu(v, data, "ecc_dbe").items(), key=_gpu_item):
        if n >= th.ecc_dbe_bad:
            v.add("ecc_dbe", BAD, f"{n:.0f} double-bit ECC errors on GPU {gpu} (until a GPU reset)")
    if th.row_remap_bad:
        for check, word in (("row_remap_failure", "failed"), ("row_remap_pending", "pending")):
            for gpu, n in sorted(_per_gpu(v, data, check).items(), key=_gpu_item):
                if n > 0:
                    v.add(check, BAD, f"row remap {word} on GPU {gpu}")
    _clock_rules(v, data, th)
    replay = _per_gpu(v, data, "pcie_replay")
    w = th.pcie_replay_window
    _threshold(v, "pcie_replay", replay, th.pcie_replay_degraded, th.pcie_replay_bad,
               "{x:.0f} PCIe replays on GPU {g} in " + w, unit="")  # fmt: skip
    _nvlink_rule(v, data, th)


def _threshold(
    v: Verdict, rule: str, values: dict[str, float], degraded: float, bad: float, text: str, unit: str = " °C"
) -> None:
    for gpu, x in sorted(values.items(), key=_gpu_item):
        if x >= bad:
            v.add(rule, BAD, text.format(g=gpu, x=x) + f" (bad at {bad:g}{unit})")
        elif x >= degraded:
            v.add(rule, DEGRADED, text.format(g=gpu, x=x) + f" (degraded at {degraded:g}{unit})")


def _xid_rules(v: Verdict, data: Grouped, th: Thresholds) -> None:
    """A drain-list Xid in the gauge, in the exporter's count window, or latched by the recording rule: bad.
    Another Xid seen within ``xid_window``: degraded."""
    bad: dict[tuple[str, int], str] = {}
    benign: dict[tuple[str, int], str] = {}
    for s in data.get("xid_last", []):
        gpu, xid = s.labels.get("gpu"), _int(s.value)
        if gpu is not None and xid in th.xid_drain:
            bad[(gpu, xid)] = _msg(s)
    for s in data.get("xid_count", []):
        gpu, xid = s.labels.get("gpu"), _int(s.labels.get("xid"))
        if gpu is None or xid is None or xid == 0:
            continue
        n = f"{s.value:.0f} in the last {_window(s.labels.get('window_size_in_ms'))}"
        (bad if xid in th.xid_drain else benign).setdefault((gpu, xid), n)
    for s in data.get("xid_latched", []):
        gpu, xid = s.labels.get("gpu"), _int(s.labels.get("xid"))
        if gpu is not None and xid is not None:
            stamp = (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.value)) if math.isfinite(s.value) else "?"
            )
            bad.setdefault((gpu, xid), f"since {stamp}, not repaired")
    for s in data.get("xid_recent", []):
        gpu, xid = s.labels.get("gpu"), _int(s.value)
        if gpu is not None and xid and xid not in th.xid_drain:
            benign.setdefault((gpu, xid), _msg(s))
    for (gpu, xid), detail in sorted(bad.items(), key=lambda kv: (_gpu_key(kv[0][0]), kv[0][1])):
        v.add("xid", BAD, f"Xid {xid} on GPU {gpu}" + (f" ({detail})" if detail else ""))
    for (gpu, xid), detail in sorted(benign.items(), key=lambda kv: (_gpu_key(kv[0][0]), kv[0][1])):
        v.add(
            "xid",
            DEGRADED,
            f"Xid {xid} on GPU {gpu} (not in the drain list" + (f"; {detail})" if detail else ")"),
        )


def _msg(s: Sample) -> str:
    return s.labels.get("err_msg", "")


def _window(ms: str | None) -> str:
    n = _int(ms)
    return f"{n / 60000:g} min" if n else "window"


def _int(x: object) -> int | None:
    try:
        f = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def _clock_rules(v: Verdict, data: Grouped, th: Thresholds) -> None:
    now = _per_gpu(v, data, "clock_events")
    w = th.clock_events_window
    for check, bits, status in (("clock_bad", CLOCK_EVENTS_BAD, BAD), ("clock_degraded", CLOCK_EVENTS_DEGRADED,
                                                                        DEGRADED)):  # fmt: skip
        for gpu, held in sorted(_per_gpu(v, data, check).items(), key=_gpu_item):
            if held >= 1:
                mask = int(now.get(gpu, 0))
                what = ", ".join(t for b, t in bits.items() if mask & b) or " / ".join(bits.values())
                v.add("clock_events", status, f"GPU {gpu} clocks held down for {w}: {what}")


def _nvlink_rule(v: Verdict, data: Grouped, th: Thresholds) -> None:
    totals: dict[str, float] = defaultdict(float)
    for kind in q.NVLINK_COUNTERS:
        for gpu, n in _per_gpu(v, data, f"nvlink_{kind.lower()}").items():
            totals[gpu] += n
    for gpu, n in sorted(totals.items(), key=_gpu_item):
        if n >= th.nvlink_errors_bad:
            v.add("nvlink", BAD, f"{n:.0f} NVLink errors on GPU {gpu} in {th.nvlink_window}")
        elif n >= th.nvlink_errors_degraded:
            v.add("nvlink", DEGRADED, f"{n:.0f} NVLink errors on GPU {gpu} in {th.nvlink_window}")


def _per_port(v: Verdict, data: Grouped, check: str, devices: re.Pattern[str]) -> dict[str, float]:
    """``"mlx5_0 port 1"`` → value, for the InfiniBand devices of the node type only."""
    out: dict[str, float] = {}
    for s in data.get(check, []):
        dev, port = s.labels.get("device"), s.labels.get("port")
        if dev is None or port is None:
            v.add(check, UNKNOWN, f"{check}: a series without device/port labels")
        elif not devices.fullmatch(dev):
            continue  # not an InfiniBand HCA of this node type (e.g. a RoCE NIC)
        elif math.isnan(s.value):
            v.add(check, UNKNOWN, f"{check}: NaN on {dev} port {port}")
        else:
            out[f"{dev} port {port}"] = s.value
    return out


def _collector_failed(data: Grouped, name: str) -> bool:
    return any(s.labels.get("collector") == name and not s.value >= 1 for s in data.get("collector", []))


def _ib_rules(v: Verdict, data: Grouped, th: Thresholds, nt: NodeType) -> None:
    if nt.ib_devices is None:
        return
    devices = re.compile(nt.ib_devices)
    expected = bool(nt.ib_ports) or th.ib_required
    if _collector_failed(data, "infiniband"):
        if expected:
            v.add("ib_collector", UNKNOWN, "node_exporter's infiniband collector fails")
        return
    states = _per_port(v, data, "ib_state", devices)
    if nt.ib_ports and len(states) < nt.ib_ports:
        v.add(
            "ib_ports", BAD, f"only {len(states)} of {nt.ib_ports} InfiniBand ports ({nt.ib_devices}) report"
        )
    elif not states and th.ib_required:
        v.add("ib_ports", UNKNOWN, "node_exporter reports no InfiniBand ports")
    for port, s in sorted(states.items()):
        if s != q.IB_ACTIVE:
            v.add("ib_state", BAD, f"IB {port} is not ACTIVE (state {s:.0f})")
    for port, s in sorted(_per_port(v, data, "ib_phys_state", devices).items()):
        if s != q.IB_LINK_UP:
            v.add("ib_phys_state", BAD, f"IB {port} physical link is not LinkUp (state {s:.0f})")
    if nt.ib_rate_gbps is not None:
        for port, rate in sorted(_per_port(v, data, "ib_rate", devices).items()):
            if rate < nt.ib_rate_gbps * q.GBPS:
                v.add(
                    "ib_rate", BAD, f"IB {port} at {rate / q.GBPS:.0f} Gb/s, expected {nt.ib_rate_gbps:.0f}"
                )
    for port, n in sorted(_per_port(v, data, "ib_link_downed", devices).items()):
        if n > 0:
            v.add("ib_link_downed", BAD, f"IB {port} link went down {n:.0f}× in {th.ib_window}")
    errors: dict[str, float] = defaultdict(float)
    for check in data:
        if check.startswith("iberr_"):
            for port, n in _per_port(v, data, check, devices).items():
                errors[port] += n
    for port, n in sorted(errors.items()):
        if n >= th.ib_errors_bad:
            v.add("ib_errors", BAD, f"{n:.0f} IB errors on {port} in {th.ib_window}")
        elif n >= th.ib_errors_degraded:
            v.add("ib_errors", DEGRADED, f"{n:.0f} IB errors on {port} in {th.ib_window}")


def _mount_rules(v: Verdict, data: Grouped, nt: NodeType) -> None:
    """A network filesystem (or a mount the node type needs) whose statfs() fails or hangs: bad; a needed mount
    that is not there: bad. node_exporter marks both with ``node_filesystem_device_error`` = 1 and its
    ``device_error`` label ("mountpoint timeout", "stale NFS file handle")."""
    reported = any(s.labels.get("collector") == "filesystem" for s in data.get("collector", []))
    if _collector_failed(data, "filesystem") or (nt.mounts and not reported):
        if nt.mounts:
            v.add("fs_collector", UNKNOWN, "node_exporter's filesystem collector fails or is off")
        return
    seen = set()
    for s in sorted(data.get("mount", []), key=lambda s: s.labels.get("mountpoint", "")):
        mp = s.labels.get("mountpoint", "?")
        seen.add(mp)
        if not s.value < 1:  # 1, or NaN
            fstype, err = s.labels.get("fstype", "?"), s.labels.get("device_error") or "statfs failed"
            v.add("mount", BAD, f"{mp} ({fstype}): {err}")
    for mp in nt.mounts:
        if mp not in seen:
            v.add("mount", BAD, f"{mp} is not mounted")


def _gpu_key(gpu: str) -> tuple[int, str]:
    return (int(gpu), gpu) if gpu.isdigit() else (1 << 30, gpu)


def _gpu_item(kv: tuple[str, float]) -> tuple[int, str]:
    return _gpu_key(kv[0])
