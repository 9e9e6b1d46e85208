"""A stand-in for NVIDIA's dcgm-exporter, for machines without GPUs (tests, benches, the dev cluster).

It mirrors NVIDIA/dcgm-exporter **4.5.3-4.8.2** (commit 691c927, DCGM 4.5.3; tests/fixtures/exporters/README.md):

- the counters come from a counters file passed with ``-f FILE`` (``--collectors``, ``$DCGM_EXPORTER_COLLECTORS``):
  ``#`` comments, records of exactly 3 comma fields (DCGM field, Prometheus type, help); an unknown field stops
  startup. Without ``-f`` it serves the enabled lines of upstream's ``etc/default-counters.csv``;
- the line shape of ``rendermetrics/render_metrics.go``: labels ``gpu``, ``UUID``, ``pci_bus_id``, ``device``,
  ``modelName``, ``Hostname``, then the label-type counters (``DCGM_FI_DRIVER_VERSION``), then ``err_code`` and
  ``err_msg`` on ``DCGM_FI_DEV_XID_ERRORS``; families in DCGM field-id order, HELP/TYPE from the counters file,
  ``%d`` for integer fields and ``%f`` for doubles, a family with no series not printed at all;
- ``DCGM_EXP_XID_ERRORS_COUNT`` (when in the counters file): per GPU and Xid the Xids of the last
  ``-x/--xid-count-window-size`` ms (300000) with ``window_size_in_ms`` and ``xid`` labels, one 0-valued series
  without ``xid`` when there were none;
- the Hostname value: ``$NODE_NAME``, else the host name.

Variants seen in the field: ``--hostname-label hostname`` (main d5e5f51, unreleased), ``--xid-shape value-only``
(before 3.3.6: no err_code/err_msg), ``--healthy-xid absent`` (4.5.3 images where a GPU without Xid has no Xid
series, issues #646/#700), and a GPU that stopped reporting (``{"gpu": 3, "gone": true}``: all its series vanish,
as DCGM returns blank values for a GPU that fell off the bus).

    GET  /metrics
    POST /fault {"gpu": 3, "xid": 79}            an Xid: the gauge holds it until a reset, the count window sees it
    POST /fault {"gpu": 3, "gone": true}         7 of 8 GPUs report
    POST /fault {"gpu": 0, "temp": 97}           also memory_temp, power, ecc_dbe, row_remap_failure,
                                                 row_remap_pending, pcie_replay, clock_events (bitmask),
                                                 nvlink_crc_flit, nvlink_crc_data, nvlink_replay, nvlink_recovery,
                                                 or any DCGM field name of the counters file
    POST /clear {} | {"gpu": 3}                  GPU reset: back to healthy, counters at 0, no Xid

Run: ``python -m intellect.health.fakedcgm [-f FILE] [-a :9400] [--gpus 8 | --devices '/dev/fakegpu[0-9]*']``.
Standard library only: the monitoring role installs this very file on dev-cluster nodes
(``templates/dcgm-standin.py.j2`` is generated from it by ``python -m intellect.health.generate``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RELEASE = "4.5.3-4.8.2"
MODEL = "NVIDIA H200"
DRIVER = "580.95.05"
XID_COUNT = "DCGM_EXP_XID_ERRORS_COUNT"
XID_FIELD = "DCGM_FI_DEV_XID_ERRORS"
# DCGM field → (field id, value type: "i" int64 / "d" double / "s" string, healthy value). Ids: NVIDIA/DCGM v4.5.3
# dcgm_fields.h via go-dcgm; DCGM_EXP_* are the exporter's own (9000 + n, after every DCGM field).
FIELDS: dict[str, tuple[int, str, float | str]] = {
    "DCGM_FI_DRIVER_VERSION": (1, "s", DRIVER), "DCGM_FI_DEV_SM_CLOCK": (100, "i", 1980),
    "DCGM_FI_DEV_MEM_CLOCK": (101, "i", 3201), "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": (112, "i", 0),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": (112, "i", 0), "DCGM_FI_DEV_MEMORY_TEMP": (140, "i", 45),
    "DCGM_FI_DEV_GPU_TEMP": (150, "i", 41), "DCGM_FI_DEV_POWER_USAGE": (155, "d", 118.0),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": (156, "i", 0), "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": (202, "i", 0),
    "DCGM_FI_DEV_GPU_UTIL": (203, "i", 0), "DCGM_FI_DEV_MEM_COPY_UTIL": (204, "i", 0),
    "DCGM_FI_DEV_ENC_UTIL": (206, "i", 0), "DCGM_FI_DEV_DEC_UTIL": (207, "i", 0), XID_FIELD: (230, "i", 0),
    "DCGM_FI_DEV_POWER_VIOLATION": (240, "i", 0), "DCGM_FI_DEV_THERMAL_VIOLATION": (241, "i", 0),
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION": (242, "i", 0), "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION": (243, "i", 0),
    "DCGM_FI_DEV_LOW_UTIL_VIOLATION": (244, "i", 0), "DCGM_FI_DEV_RELIABILITY_VIOLATION": (245, "i", 0),
    "DCGM_FI_DEV_FB_FREE": (251, "i", 143000), "DCGM_FI_DEV_FB_USED": (252, "i", 0),
    "DCGM_FI_DEV_FB_RESERVED": (253, "i", 583), "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": (310, "i", 0),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": (311, "i", 0), "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": (312, "i", 0),
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": (313, "i", 0), "DCGM_FI_DEV_RETIRED_SBE": (390, "i", 0),
    "DCGM_FI_DEV_RETIRED_DBE": (391, "i", 0), "DCGM_FI_DEV_RETIRED_PENDING": (392, "i", 0),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": (393, "i", 0), "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": (394, "i", 0),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": (395, "i", 0), "DCGM_FI_DEV_ROW_REMAP_PENDING": (396, "i", 0),
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL": (409, "i", 0),
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL": (419, "i", 0),
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL": (429, "i", 0), "DCGM_FI_DEV_NVLINK_BANDWIDTH_L0": (440, "i", 0),
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL": (439, "i", 0),
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": (449, "i", 0), "DCGM_FI_DEV_VGPU_LICENSE_STATUS": (526, "i", 0),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": (1001, "d", 0.0), "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": (1004, "d", 0.0),
    "DCGM_FI_PROF_DRAM_ACTIVE": (1005, "d", 0.0), "DCGM_FI_PROF_PCIE_TX_BYTES": (1009, "i", 0),
    "DCGM_FI_PROF_PCIE_RX_BYTES": (1010, "i", 0), XID_COUNT: (9001, "i", 0),
}  # fmt: skip
# The enabled lines of upstream etc/default-counters.csv at 4.5.3-4.8.2 (what the exporter serves without -f). A
# second copy of config.DCGM_COUNTERS less DCGM_HEALTH_EXTRAS, because this file runs alone (stdlib only) on nodes;
# tests/unit/test_health_exporters.py holds both to the recorded upstream file.
DEFAULT_COUNTERS = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ)."),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %)."),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB)."),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "Total number of NVLink bandwidth counters for all lanes."),
    ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "vGPU License status"),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for uncorrectable errors"),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for correctable errors"),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed"),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor (HMMA) pipe is active."),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge",
     "Ratio of cycles the device memory interface is active sending or receiving data."),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", "The rate of data transmitted over the PCIe bus - including both "
     "protocol headers and data payloads - in bytes per second."),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", "The rate of data received over the PCIe bus - including both "
     "protocol headers and data payloads - in bytes per second."),
    ("DCGM_FI_DRIVER_VERSION", "label", "Driver Version"),
)  # fmt: skip
# err_msg texts (internal/pkg/collector/xid_errors.go); the stand-in takes only these Xids, so it never makes one up.
XID_TEXT = {
    0: "No Error", 13: "Graphics Engine Exception", 31: "GPU memory page fault", 43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors -- Most likely to see when running multiple cuda",
    48: "Double Bit ECC Error", 56: "Display Engine error", 57: "Error programming video memory interface",
    58: "Unstable video memory interface detected", 62: "Internal micro-controller halt",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure", 65: "Video processor exception",
    68: "NVDEC0 Exception", 69: "Graphics Engine class error", 73: "NVENC2 Error", 74: "NVLINK Error",
    79: "GPU has fallen off the bus", 80: "Corrupted data sent to GPU", 81: "VGA Subsystem Error",
    92: "High single-bit ECC error rate", 94: "Contained ECC error", 95: "Uncontained ECC error",
    119: "GSP RPC Timeout", 120: "GSP Error", 140: "Unrecovered ECC Error", 154: "GPU Recovery Action Changed",
}  # fmt: skip
SHORT = {
    "temp": "DCGM_FI_DEV_GPU_TEMP", "memory_temp": "DCGM_FI_DEV_MEMORY_TEMP", "power": "DCGM_FI_DEV_POWER_USAGE",
    "util": "DCGM_FI_DEV_GPU_UTIL", "fb_used": "DCGM_FI_DEV_FB_USED", "ecc_dbe": "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "row_remap_failure": "DCGM_FI_DEV_ROW_REMAP_FAILURE", "row_remap_pending": "DCGM_FI_DEV_ROW_REMAP_PENDING",
    "pcie_replay": "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "clock_events": "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    "nvlink_crc_flit": "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "nvlink_crc_data": "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    "nvlink_replay": "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "nvlink_recovery": "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
}  # fmt: skip
TYPES = ("gauge", "counter", "histogram", "summary", "label")
H200_BUS = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")  # tests/fixtures/ansible/h200/facts.json


@dataclass(frozen=True)
class Counter:
    name: str
    type: str
    help: str


def parse_counters(text: str, source: str = "counters") -> list[Counter]:
    """The exporter's counters file (counters/counter_config.go): unknown fields and bad records stop startup."""
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            raise ValueError(f"{source}:{i}: malformed CSV record, expected 3 fields: {line!r}")
        name, kind, help_ = parts
        if name not in FIELDS:
            raise ValueError(f"{source}:{i}: could not find DCGM field {name!r}")
        if kind not in TYPES:
            raise ValueError(f"{source}:{i}: could not find Prometheus metric type {kind!r}")
        out.append(Counter(name, kind, help_))
    return out


def default_counters() -> list[Counter]:
    return [Counter(*c) for c in DEFAULT_COUNTERS]


def read_counters(path: str) -> list[Counter]:
    """A counters file as ``-f`` reads it (e.g. monitoring/dcgm/dcp-metrics-intellect.csv)."""
    with open(path, encoding="utf-8") as fh:
        return parse_counters(fh.read(), str(path))


@dataclass
class Gpu:
    values: dict[str, float] = field(default_factory=dict)
    xid: int | None = None  # the last Xid; None: no Xid seen since the last reset
    events: list[tuple[float, int]] = field(default_factory=list)  # (time, xid) for the count window
    gone: bool = False


@dataclass
class FakeGpus:
    hostname: str
    count: int = 8
    counters: list[Counter] = field(default_factory=default_counters)
    hostname_label: str = "Hostname"  # "hostname" as on dcgm-exporter main d5e5f51
    xid_shape: str = "err_code"  # "value-only": before 3.3.6
    healthy_xid: str = "zero"  # "absent": no Xid series on a GPU without Xid (4.5.3 images, #646)
    model: str = MODEL
    driver: str = DRIVER
    xid_window_ms: int = 300_000
    # -c/--collect-interval: DCGM samples the watched fields this often (WatchFieldsWithGroupEx's update frequency)
    # and a scrape reads the latest sample, so a fault shows at the next sample. 0: sample at every scrape.
    collect_interval_ms: int = 0
    devices: str | None = None  # a glob of device files: a GPU whose file is gone does not report
    clock: Callable[[], float] = time.time
    gpus: list[Gpu] = field(default_factory=list)
    uuids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.hostname_label not in ("Hostname", "hostname") or self.xid_shape not in (
            "err_code",
            "value-only",
        ):
            raise ValueError("hostname_label: Hostname|hostname; xid_shape: err_code|value-only")
        if self.healthy_xid not in ("zero", "absent"):
            raise ValueError("healthy_xid: zero|absent")
        self._grow(self.count)
        self.started = self.clock()
        self._sample: tuple[float, str] | None = None  # (sample time, exposition) with collect_interval_ms

    def fault(self, spec: dict[str, object]) -> None:
        gpu = self._gpu(spec)
        updates = {k: v for k, v in spec.items() if k != "gpu"}
        if not updates:
            raise ValueError(
                f"nothing to change; known: xid, gone, {', '.join(sorted(SHORT))} or a field name"
            )
        served = {c.name for c in self.counters}
        with self.lock:
            g = self.gpus[gpu]
            for key, value in updates.items():
                name = SHORT.get(key, key)
                if key not in ("gone", "xid") and name in FIELDS and name not in served:
                    raise ValueError(
                        f"{key}: {name} is not in the counters file, so the exporter serves none"
                    )
                if key == "gone":
                    g.gone = bool(value)
                elif key == "xid":
                    if not served & {XID_FIELD, XID_COUNT}:
                        raise ValueError(f"xid: neither {XID_FIELD} nor {XID_COUNT} is in the counters file")
                    if not isinstance(value, int) or value not in XID_TEXT or value == 0:
                        raise ValueError(f"xid must be one of {sorted(set(XID_TEXT) - {0})}")
                    g.xid = value
                    g.events.append((self.clock(), value))
                else:
                    if name not in FIELDS or FIELDS[name][1] == "s" or not isinstance(value, (int, float)):
                        raise ValueError(f"unknown or non-numeric field {key!r}; known: {sorted(SHORT)}")
                    g.values[name] = float(value)

    def clear(self, spec: dict[str, object] | None = None) -> None:
        """A GPU reset (one GPU with ``{"gpu": n}``, else all): healthy values, no Xid, reporting again."""
        which = [self._gpu(spec)] if spec and "gpu" in spec else range(self.count)
        with self.lock:
            for i in which:
                self.gpus[i] = Gpu()

    def _gpu(self, spec: dict[str, object] | None) -> int:
        gpu = (spec or {}).get("gpu")
        if not isinstance(gpu, int) or isinstance(gpu, bool) or not 0 <= gpu < self.count:
            raise ValueError(f"gpu must be an integer in [0, {self.count})")
        return gpu

    def _grow(self, count: int) -> None:
        ns = uuid.uuid5(uuid.NAMESPACE_DNS, self.hostname)
        self.gpus += [Gpu() for _ in range(len(self.gpus), count)]
        self.uuids += [f"GPU-{uuid.uuid5(ns, str(i))}" for i in range(len(self.uuids), count)]
        self.count = max(self.count, count)

    def _present(self) -> list[int]:
        """GPUs that report: not gone, and with ``devices``, whose device file exists now (files that appear after
        start-up add GPUs)."""
        if self.devices is None:
            return [i for i, g in enumerate(self.gpus) if not g.gone]
        found = {int(m.group(1)) for p in glob.glob(self.devices) if (m := re.search(r"(\d+)$", p))}
        self._grow(max(found, default=-1) + 1)
        return [i for i, g in enumerate(self.gpus) if not g.gone and i in found]

    def _labels(self, i: int) -> str:
        bus = H200_BUS[i] if self.count <= len(H200_BUS) else f"{0x18 + i:02X}"
        out = (f'gpu="{i}",UUID="{self.uuids[i]}",pci_bus_id="00000000:{bus}:00.0",device="nvidia{i}",'
               f'modelName="{self.model}"')  # fmt: skip
        if self.hostname:
            out += f',{self.hostname_label}="{self.hostname}"'
        for c in sorted((c for c in self.counters if c.type == "label"), key=lambda c: c.name):
            out += f',{c.name}="{self.driver if c.name == "DCGM_FI_DRIVER_VERSION" else FIELDS[c.name][2]}"'
        return out

    def _value(self, g: Gpu, name: str, now: float) -> str | None:
        """The value text of one field, None when DCGM would return blank (no series)."""
        if name == XID_FIELD:
            if g.xid is None and self.healthy_xid == "absent":
                return None
            return str(g.xid or 0)
        _, kind, healthy = FIELDS[name]
        value = g.values.get(name, float(healthy))
        if name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION":  # mJ since start at the power draw
            value += (now - self.started) * g.values.get("DCGM_FI_DEV_POWER_USAGE", 118.0) * 1000
        return f"{value:f}" if kind == "d" else f"{int(value)}"

    def render(self) -> str:
        now = self.clock()
        if self.collect_interval_ms > 0:
            step = self.collect_interval_ms / 1000
            sampled = self.started + (now - self.started) // step * step
            if self._sample is None or self._sample[0] != sampled:
                self._sample = (sampled, self._render(sampled))
            return self._sample[1]
        return self._render(now)

    def _render(self, now: float) -> str:
        with self.lock:
            present = self._present()
            gpus = {
                i: Gpu(dict(self.gpus[i].values), self.gpus[i].xid, list(self.gpus[i].events))
                for i in present
            }
        lines: list[str] = []
        for c in sorted((c for c in self.counters if c.type != "label"), key=lambda c: FIELDS[c.name][0]):
            series = self._xid_counts(gpus, now) if c.name == XID_COUNT else self._series(c, gpus, now)
            if series:
                lines += [f"# HELP {c.name} {c.help}", f"# TYPE {c.name} {c.type}", *series]
        return "\n".join(lines) + "\n" if lines else ""

    def _series(self, c: Counter, gpus: dict[int, Gpu], now: float) -> list[str]:
        out = []
        for i, g in gpus.items():
            text = self._value(g, c.name, now)
            if text is None:
                continue
            attrs = ""
            if c.name == XID_FIELD and self.xid_shape == "err_code":
                attrs = f',err_code="{text}",err_msg="{XID_TEXT.get(int(text), "Unknown Error")}"'
            out.append(f"{c.name}{{{self._labels(i)}{attrs}}} {text}")
        return out

    def _xid_counts(self, gpus: dict[int, Gpu], now: float) -> list[str]:
        since = now - self.xid_window_ms / 1000
        window = f',window_size_in_ms="{self.xid_window_ms}"'
        out = []
        for i, g in gpus.items():
            counts: dict[int, int] = {}
            for t, xid in g.events:
                if t >= since:
                    counts[xid] = counts.get(xid, 0) + 1
            if not counts:
                out.append(f"{XID_COUNT}{{{self._labels(i)}{window}}} 0")
            for xid, n in sorted(counts.items()):
                out.append(f'{XID_COUNT}{{{self._labels(i)}{window},xid="{xid}"}} {n}')
        return out


def make_server(gpus: FakeGpus, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    return make_json_server(gpus.render, gpus.fault, gpus.clear, port, host, "text/plain; charset=utf-8")


def make_json_server(
    render: Callable[[], str],
    fault: Callable[[dict[str, Any]], None],
    clear: Callable[[dict[str, Any]], None],
    port: int,
    host: str = "127.0.0.1",
    ctype: str = "text/plain; charset=utf-8",  # dcgm-exporter sets none: Go sniffs this
) -> ThreadingHTTPServer:
    """GET /metrics serves ``render()``; POST /fault and /clear take a JSON object (400 with the error if bad)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, body: str, content_type: str = "application/json") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                try:
                    body = render()
                except (OSError, ValueError) as exc:  # a source that cannot answer: the scrape fails
                    self._send(503, json.dumps({"error": str(exc)}))
                    return
                self._send(200, body, ctype)
            else:
                self._send(404, '{"error": "not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            actions = {"/fault": fault, "/clear": clear}
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
                if self.path not in actions:
                    self._send(404, '{"error": "not found"}')
                    return
                actions[self.path](body)
            except (ValueError, TypeError) as exc:
                self._send(400, json.dumps({"error": str(exc)}))
                return
            self._send(200, '{"ok": true}')

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=f"Stand-in for NVIDIA dcgm-exporter {RELEASE} (fake GPUs, faults)."
    )
    ap.add_argument(
        "-f",
        "--collectors",
        default=os.environ.get("DCGM_EXPORTER_COLLECTORS"),
        help="counters file (default: upstream's default counters)",
    )
    ap.add_argument("-a", "--address", default=":9400", help="listen address, [HOST]:PORT")
    ap.add_argument("-x", "--xid-count-window-size", type=int, default=300_000, help="ms")
    ap.add_argument(
        "-c",
        "--collect-interval",
        type=int,
        default=int(os.environ.get("DCGM_EXPORTER_INTERVAL") or 30000),
        help="ms (upstream: 30000)",
    )
    ap.add_argument("--hostname", default=os.environ.get("NODE_NAME") or socket.gethostname())
    ap.add_argument("--hostname-label", choices=["Hostname", "hostname"], default="Hostname")
    ap.add_argument("--xid-shape", choices=["err_code", "value-only"], default="err_code")
    ap.add_argument("--healthy-xid", choices=["zero", "absent"], default="zero")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--devices", help="glob of device files, one GPU each (overrides --gpus)")
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)  # older spelling of -a
    ap.add_argument("--host", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    counters = read_counters(args.collectors) if args.collectors else default_counters()
    count = args.gpus
    if args.devices:
        count = max((int(m.group(1)) + 1 for p in glob.glob(args.devices) if (m := re.search(r"(\d+)$", p))),
                    default=0)  # fmt: skip
    host, _, port = args.address.rpartition(":")
    gpus = FakeGpus(args.hostname, count, counters, args.hostname_label, args.xid_shape, args.healthy_xid,
                    xid_window_ms=args.xid_count_window_size, collect_interval_ms=args.collect_interval,
                    devices=args.devices)  # fmt: skip
    server = make_server(
        gpus, args.port if args.port is not None else int(port), args.host or host or "0.0.0.0"
    )
    print(
        f"stand-in dcgm-exporter {RELEASE} for {args.hostname}: {count} GPUs on {server.server_address}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
