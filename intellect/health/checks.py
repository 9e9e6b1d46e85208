"""The PromQL of health, built from ``Thresholds``: the checks of the one verdict query, and the selectors and
recording rules that the generated alert rules (``intellect.health.generate``) share with it.

Label facts (tests/fixtures/exporters/README.md):

- dcgm-exporter 4.5.3-4.8.2 spells the node ``Hostname``; its main branch (d5e5f51) spells it ``hostname``. Joins
  never use either: they use ``instance`` (always set by Prometheus) and ``gpu``, or the ``node`` target label.
- ``DCGM_FI_DEV_XID_ERRORS`` holds the last Xid as its value; since 3.3.6 it also carries ``err_code``/``err_msg``,
  so a new Xid is a new series. Every Xid test here compares the value, which works for both shapes.
- ``DCGM_EXP_XID_ERRORS_COUNT{xid=...}`` counts Xids in the exporter's window (5 min): it catches the same Xid again,
  and an Xid the last-Xid gauge lost to a later one within one scrape.
"""

from __future__ import annotations

from intellect.health.config import CLOCK_EVENTS_BAD, CLOCK_EVENTS_DEGRADED, NodeType, Thresholds

XID_GAUGE = "DCGM_FI_DEV_XID_ERRORS"
XID_COUNT = "DCGM_EXP_XID_ERRORS_COUNT"
CLOCK_EVENTS = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"  # field 112 since DCGM 4.0
CLOCK_THROTTLE = (
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"  # its 3.x name, still accepted (and exposed as written) by 4.x
)
# Either name; never both for one GPU (two series with one label set would break the whole query).
CLOCK_REASONS = f"({CLOCK_EVENTS} or ({CLOCK_THROTTLE} unless on (instance, gpu) {CLOCK_EVENTS}))"
GPU_PRESENCE = ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_MEMORY_TEMP")  # a GPU "reports" when one of these does
NVLINK_COUNTERS = ("CRC_FLIT", "CRC_DATA", "REPLAY", "RECOVERY")
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
GBPS = 125_000_000  # node_exporter: rate_bytes_per_second = Gb/s x 125000000

# Labels of dcgm-exporter series that no verdict reads: the query drops them to keep its answer small at scale.
DCGM_NOISE = ("UUID", "pci_bus_id", "device", "modelName", "DCGM_FI_DRIVER_VERSION")

# Recording rules (monitoring/rules/gpu.yml); the verdicts read the latch and the info series.
RULES_INFO = "intellect:health_rules_info"
XID_DRAIN_NOW = "intellect:gpu_xid_drain_now"
XID_REPAIRED = "intellect:gpu_xid_repaired"
XID_LATCHED = "intellect:gpu_xid_drain_latched"


def drain_regex(th: Thresholds) -> str:
    return "|".join(str(x) for x in th.xid_drain)


def lean(expr: str) -> str:
    """``expr`` without the dcgm-exporter labels no verdict reads (and without its metric name)."""
    return f"max without ({', '.join(DCGM_NOISE)}) ({expr})"


def xid_labels(th: Thresholds) -> str:
    """The label set a latched Xid keeps: where it is (target, node, GPU) and which Xid it was."""
    return ", ".join(["instance", "job", *th.node_labels, th.node_type_label, "UUID", "gpu", "xid"])


def node_type_matcher(th: Thresholds, name: str) -> str:
    """``node_type="h200"``; the default type also matches targets without the label."""
    label = th.node_type_label
    return f'{label}=~"{name}|"' if name == th.default_node_type else f'{label}="{name}"'


def exporter_jobs(th: Thresholds) -> str:
    return f'job=~"{th.node_job}|{th.dcgm_job}"'


def names(metrics: tuple[str, ...], extra: str = "") -> str:
    """A selector for several metric names: ``{__name__=~"A|B",extra}``."""
    return "{" + f'__name__=~"{"|".join(metrics)}"' + (f",{extra}" if extra else "") + "}"


def sum_increase(metrics: tuple[str, ...], matchers: str, window: str, by: str) -> str:
    """The sum of several counters' increases (``increase({__name__=~"a|b"}[w])`` would fail: two series, one
    label set, once the names are dropped)."""
    sel = "{" + matchers + "}" if matchers else ""
    parts = "\n  or ".join(
        f'label_replace(increase({m}{sel}[{window}]), "counter", "{m}", "", "")' for m in metrics
    )
    return f"sum by ({by}) (\n  {parts}\n)"


def clock_bits(bits: dict[int, str], expr: str) -> str:
    """1 when any of ``bits`` is set in the bitmask ``expr``, else 0 (PromQL has no bitwise operators)."""
    terms = " + ".join(f"floor({expr} / {b}) % 2" for b in sorted(bits))
    return f"(({terms}) > bool 0)"


def network_mounts(th: Thresholds) -> str:
    """``node_filesystem_device_error`` of the network filesystems and of every mountpoint a node type needs."""
    fstypes = "|".join(th.network_fstypes)
    out = f'node_filesystem_device_error{{fstype=~"{fstypes}"}}'
    mounts = sorted({m for nt in th.node_types.values() for m in nt.mounts})
    if mounts:
        out += f' or node_filesystem_device_error{{mountpoint=~"{"|".join(mounts)}"}}'
    return out


def ib_types(th: Thresholds) -> dict[str, NodeType]:
    return {name: nt for name, nt in th.node_types.items() if nt.ib_devices is not None}


# ------------------------------------------------------------------------------------------ recording rules


def xid_drain_now(th: Thresholds) -> str:
    """Per GPU and Xid: a drain-list Xid in the last-Xid gauge (either shape), or counted in the window."""
    gauge = "\n  or ".join(f'label_replace({XID_GAUGE} == {x}, "xid", "{x}", "", "")' for x in th.xid_drain)
    return f'max by ({xid_labels(th)}) (\n  {gauge}\n  or ({XID_COUNT}{{xid=~"{drain_regex(th)}"}} > 0)\n)'


def xid_repaired(th: Thresholds) -> str:
    """Per GPU: evidence of repair. The GPU reports with no Xid (the gauge gone or 0: reset, DCGM restarted), or
    its node booted after the latch was set (``node_boot_time_seconds`` joined on the ``node`` target label)."""
    node = th.node_labels[0]
    return (
        f"(\n  group by (instance, gpu) ({names(GPU_PRESENCE)})\n"
        f"  unless on (instance, gpu) ({XID_GAUGE} != 0)\n)\n"
        f"or on (instance, gpu)\ngroup by (instance, gpu) (\n"
        f'  {XID_LATCHED}{{{node}!=""}}\n'
        f'  < on ({node}) group_left max by ({node}) (node_boot_time_seconds{{{node}!=""}})\n)'
    )


def xid_latched() -> str:
    """Kept (its value: when it was first seen) until repaired; set from ``xid_drain_now``."""
    return f"({XID_LATCHED} unless on (instance, gpu) {XID_REPAIRED})\nor (0 * {XID_DRAIN_NOW} + time())"


def xid_recent(th: Thresholds) -> str:
    """The last-Xid gauge (its value: the Xid) where it is new within ``xid_window``: a new series (err_code shape)
    or a changed value (older shape)."""
    w = th.xid_window
    return f"({XID_GAUGE} unless {XID_GAUGE} offset {w}) or ({XID_GAUGE} and changes({XID_GAUGE}[{w}]) > 0)"


def target_labels(th: Thresholds) -> str:
    """The labels that name a scrape target and its node, for ``by (...)`` of per-node alerts."""
    return ", ".join(["instance", "job", *th.node_labels, th.node_type_label])


# ----------------------------------------------------------------------------------------- verdict checks


def checks(th: Thresholds) -> dict[str, str]:
    """check name → PromQL expression. Each returns per-target / per-GPU / per-port / per-mount series."""
    jobs = exporter_jobs(th)
    bad_bits = clock_bits(CLOCK_EVENTS_BAD, CLOCK_REASONS)
    degraded_bits = clock_bits(CLOCK_EVENTS_DEGRADED, CLOCK_REASONS)
    cw = th.clock_events_window
    out = {
        "up": f"up{{{jobs}}}",
        "up_max": f"max_over_time(up{{{jobs}}}[{th.exporter_down_grace}])",
        "rules": RULES_INFO,
        "xid_last": lean(XID_GAUGE),
        "xid_recent": lean(xid_recent(th)),
        "xid_count": lean(f"{XID_COUNT} > 0"),
        "xid_latched": lean(XID_LATCHED),
        "gpu_temp": lean("DCGM_FI_DEV_GPU_TEMP"),
        "memory_temp": lean("DCGM_FI_DEV_MEMORY_TEMP"),
        "ecc_dbe": lean("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
        "row_remap_failure": lean("DCGM_FI_DEV_ROW_REMAP_FAILURE"),
        "row_remap_pending": lean("DCGM_FI_DEV_ROW_REMAP_PENDING"),
        "clock_events": lean(CLOCK_REASONS),
        "clock_bad": lean(f"min_over_time({bad_bits}[{cw}:])"),
        "clock_degraded": lean(f"min_over_time({degraded_bits}[{cw}:])"),
        "pcie_replay": lean(f"increase(DCGM_FI_DEV_PCIE_REPLAY_COUNTER[{th.pcie_replay_window}])"),
        "ib_state": "node_infiniband_state_id",
        "ib_phys_state": "node_infiniband_physical_state_id",
        "ib_rate": "node_infiniband_rate_bytes_per_second",
        "ib_link_downed": f"increase({IB_LINK_DOWNED}[{th.ib_window}])",
        "collector": 'node_scrape_collector_success{collector=~"infiniband|filesystem"}',
        "mount": network_mounts(th),
    }
    for kind in NVLINK_COUNTERS:
        name = f"DCGM_FI_DEV_NVLINK_{kind}_ERROR_COUNT_TOTAL"
        out[f"nvlink_{kind.lower()}"] = lean(f"increase({name}[{th.nvlink_window}])")
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
