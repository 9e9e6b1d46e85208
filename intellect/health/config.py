"""Health thresholds: one dataclass with documented defaults, loadable from a YAML file.

Defaults (sources: notes/machine-facts.md, NVIDIA's Xid catalogue, Azure's H200 health-check configs):

==========================  ==============================================  =====================================
field                       default                                         meaning
==========================  ==============================================  =====================================
xid_drain                   48 56 57 58 62 63 64 65 68 69 73 74 79 80 81    an Xid from this list seen within
                            92 119 120                                      ``xid_window`` makes a node bad
xid_window                  10m                                             window of ``changes()`` (the Xid
                                                                            gauge holds the last Xid, forever)
gpu_temp_degraded           85 (°C)                                         at or above: degraded
gpu_temp_bad                95 (°C)                                         at or above: bad
ecc_dbe_bad                 1                                               volatile double-bit ECC errors: bad
row_remap_bad               true                                            row remap pending or failed: bad
nvlink_window               10m                                             window of NVLink error increase
nvlink_errors_degraded      1                                               NVLink errors in window: degraded
nvlink_errors_bad           100                                             ... and bad
ib_rate_gbps                null                                            expected IB port rate (Gb/s); a lower
                                                                            rate is bad. null: not checked
ib_required                 false                                           no IB metrics for a node: unknown
ib_window                   10m                                             window of IB error counter increase
ib_errors_degraded          1                                               IB errors in window: degraded
ib_errors_bad               1000                                            ... and bad (link_downed: any → bad)
gpus_expected               null                                            fewer GPUs reporting: bad
node_job / dcgm_job         node / dcgm                                     Prometheus job names of the exporters
require_node_exporter       true                                            no node_exporter data: unknown
require_dcgm                true                                            no dcgm-exporter data: unknown
node_labels                 node, Hostname                                  labels naming the node, first found
==========================  ==============================================  =====================================
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from intellect.errors import UsageError

XID_DRAIN = (48, 56, 57, 58, 62, 63, 64, 65, 68, 69, 73, 74, 79, 80, 81, 92, 119, 120)
_DURATION = re.compile(r"^[1-9][0-9]*[smh]$")


@dataclass(frozen=True)
class Thresholds:
    xid_drain: tuple[int, ...] = XID_DRAIN
    xid_window: str = "10m"
    gpu_temp_degraded: float = 85.0
    gpu_temp_bad: float = 95.0
    ecc_dbe_bad: float = 1.0
    row_remap_bad: bool = True
    nvlink_window: str = "10m"
    nvlink_errors_degraded: float = 1.0
    nvlink_errors_bad: float = 100.0
    ib_rate_gbps: float | None = None
    ib_required: bool = False
    ib_window: str = "10m"
    ib_errors_degraded: float = 1.0
    ib_errors_bad: float = 1000.0
    gpus_expected: int | None = None
    node_job: str = "node"
    dcgm_job: str = "dcgm"
    require_node_exporter: bool = True
    require_dcgm: bool = True
    node_labels: tuple[str, ...] = field(default=("node", "Hostname"))

    def __post_init__(self) -> None:
        for name in ("xid_window", "nvlink_window", "ib_window"):
            if not _DURATION.match(getattr(self, name)):
                raise UsageError(f"health thresholds: {name} must be a duration like 10m or 30s")
        if self.gpu_temp_bad < self.gpu_temp_degraded:
            raise UsageError("health thresholds: gpu_temp_bad must be >= gpu_temp_degraded")
        for name in ("node_job", "dcgm_job", *self.node_labels):
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_:-]*$", name):
                raise UsageError(f"health thresholds: {name!r} is not a valid label value/name")

    def replace(self, **changes: Any) -> Thresholds:
        return dataclasses.replace(self, **changes)


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Defaults, overridden by the keys of a YAML mapping at ``path`` (unknown keys are an error)."""
    if path is None:
        return Thresholds()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read health thresholds {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"health thresholds {path}: expected a mapping of field: value")
    names = {f.name for f in dataclasses.fields(Thresholds)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(
            f"health thresholds {path}: unknown key {unknown[0]!r}; known: {', '.join(sorted(names))}"
        )
    for key in ("xid_drain", "node_labels"):
        if key in data:
            data[key] = tuple(data[key])
    try:
        return Thresholds(**data)
    except TypeError as exc:
        raise UsageError(f"health thresholds {path}: {exc}") from exc
