"""A stand-in for node_exporter's infiniband, filesystem and stat collectors, for tests and benches that need faults
a fixture sysfs tree cannot give (a hung NFS mount, a reboot) or hosts without node_exporter.

It mirrors prometheus/node_exporter **v1.12.1** (tests/fixtures/exporters/README.md): metric names, HELP strings and
label sets of ``collector/infiniband_linux.go`` and ``collector/filesystem_*.go`` and ``node_boot_time_seconds``;
client_golang's text format (families sorted by name, series by label values, labels by name, floats as Go's
``strconv.FormatFloat(f, 'g', -1, 64)``). Like the real collector it exposes **no link layer**: a RoCE port looks like
an InfiniBand port except for its device name and rate. A hung mount emits only ``device_error`` 1 and
``readonly`` 0 with ``device_error="mountpoint timeout"``; a stale one the same with Go's errno text.

    POST /fault {"ib": "mlx5_1", "state": 1}            also phys_state, rate_gbps, link_downed (+n), symbol_error (+n)
    POST /fault {"ib": "mlx5_1", "gone": true}          the HCA disappears
    POST /fault {"mount": "/home", "error": "mountpoint timeout"}    or "stale NFS file handle"; "gone": unmounted
    POST /fault {"reboot": true}                        node_boot_time_seconds moves to now
    POST /fault {"collector": "infiniband", "fail": true}
    POST /clear {}                                      all healthy (the boot time stays)

Layouts: ``h200`` (mlx5_0..7 NDR 400 Gb/s InfiniBand, mlx5_8 200 Gb/s RoCE; /, /boot/efi, /raid, NFS /home, Lustre
/lustre, tmpfs /run, as the fixtures) and ``plain`` (no HCA; / and /run).
"""

from __future__ import annotations

import decimal
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from intellect.health.fakedcgm import make_json_server

RELEASE = "v1.12.1"
IB_HELP = {
    "excessive_buffer_overrun_errors_total": "Number of times that OverrunErrors consecutive flow control update "
    "periods occurred, each having at least one overrun error.",
    "link_downed_total": "Number of times the link failed to recover from an error state and went down",
    "link_error_recovery_total": "Number of times the link successfully recovered from an error state",
    "local_link_integrity_errors_total": "Number of times that the count of local physical errors exceeded the "
    "threshold specified by LocalPhyErrors.",
    "physical_state_id": "Physical state of the InfiniBand port (0: no change, 1: sleep, 2: polling, 3: disable, "
    "4: shift, 5: link up, 6: link error recover, 7: phytest)",
    "port_data_received_bytes_total": "Number of data octets received on all links",
    "port_data_transmitted_bytes_total": "Number of data octets transmitted on all links",
    "port_errors_received_total": "Number of packets containing an error that were received on this port",
    "port_receive_remote_physical_errors_total": "Number of packets marked with the EBP (End of Bad Packet) "
    "delimiter received on the port.",
    "rate_bytes_per_second": "Maximum signal transfer rate",
    "state_id": "State of the InfiniBand port (0: no change, 1: down, 2: init, 3: armed, 4: active, 5: act defer)",
    "symbol_error_total": "Number of minor link errors detected on one or more physical lanes.",
}
IB_GAUGES = ("physical_state_id", "rate_bytes_per_second", "state_id")
FS_HELP = {
    "avail_bytes": "Filesystem space available to non-root users in bytes.",
    "device_error": "Whether an error occurred while getting statistics for the given device.",
    "files": "Filesystem total file nodes.",
    "files_free": "Filesystem total free file nodes.",
    "free_bytes": "Filesystem free space in bytes.",
    "mount_info": "Filesystem mount information.",
    "purgeable_bytes": "Filesystem space available including purgeable space (MacOS specific).",
    "readonly": "Filesystem read-only status.",
    "size_bytes": "Filesystem size in bytes.",
}
OTHER_HELP = {
    "node_boot_time_seconds": "Node boot time, in unixtime.",
    "node_scrape_collector_duration_seconds": "node_exporter: Duration of a collector scrape.",
    "node_scrape_collector_success": "node_exporter: Whether a collector succeeded.",
}


def go_float(x: float) -> str:
    """Go's strconv.FormatFloat(x, 'g', -1, 64): the shortest digits that read back as x, in exponent form when
    the decimal exponent is below -4 or at least 6 (``5e+10``, ``1.17178368e+08``, ``0.004417801``, ``18204``)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    sign, digits, exp = decimal.Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    e10 = len(text) + exp - 1
    minus = "-" if sign else ""
    if e10 < -4 or e10 >= 6:
        mant = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mant}e{'+' if e10 >= 0 else '-'}{abs(e10):02d}"
    if exp >= 0:
        return minus + text + "0" * exp
    whole, frac = (text[:exp], text[exp:]) if len(text) > -exp else ("0", "0" * (-exp - len(text)) + text)
    return f"{minus}{whole}.{frac}"


@dataclass
class Port:
    device: str
    rate_gbps: float
    link_layer: str = "InfiniBand"  # kept for the stand-in's own bookkeeping; never exposed (as upstream)
    board_id: str = "MT_0000000838"
    state: int = 4
    phys_state: int = 5
    counters: dict[str, float] = field(default_factory=dict)
    gone: bool = False


@dataclass
class Mount:
    mountpoint: str
    device: str
    fstype: str
    size: float
    minor: int
    major: int = 0
    error: str = ""  # device_error text: "mountpoint timeout", "stale NFS file handle"
    gone: bool = False


def _layout(name: str) -> tuple[list[Port], list[Mount]]:
    if name == "plain":
        return [], [
            Mount("/", "/dev/vda1", "ext4", 1.0e11, 1, 253),
            Mount("/run", "tmpfs", "tmpfs", 2.0e9, 25),
        ]
    if name != "h200":
        raise ValueError(f"layout must be h200 or plain, not {name!r}")
    ports = [Port(f"mlx5_{i}", 400) for i in range(8)] + [Port("mlx5_8", 200, "Ethernet", "MT_0000000834")]
    mounts = [
        Mount("/", "/dev/nvme0n1p2", "ext4", 1.918902976512e12, 2, 259),
        Mount("/boot/efi", "/dev/nvme0n1p1", "vfat", 5.35805952e8, 1, 259),
        Mount("/raid", "/dev/md0", "xfs", 3.0717963452416e13, 0, 9),
        Mount("/home", "nfs01.cluster.internal:/export/home", "nfs4", 5.2776558133248e13, 53),
        Mount("/lustre", "10.20.0.11@o2ib:10.20.0.12@o2ib:/scratch", "lustre", 1.099511627776e16, 61),
        Mount("/run", "tmpfs", "tmpfs", 2.147483648e11, 25),
    ]
    return ports, mounts


@dataclass
class FakeNode:
    layout: str = "h200"
    clock: Callable[[], float] = time.time
    ports: list[Port] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ports, self.mounts = _layout(self.layout)
        self.boot_time = float(int(self.clock()) - 86400)

    def fault(self, spec: dict[str, Any]) -> None:
        with self.lock:
            if spec.get("reboot"):
                self.boot_time = float(int(self.clock()))
            elif "collector" in spec:
                (self.failing.add if spec.get("fail", True) else self.failing.discard)(str(spec["collector"]))
            elif "ib" in spec:
                self._ib_fault(spec)
            elif "mount" in spec:
                m = self._find(self.mounts, "mountpoint", spec["mount"])
                m.gone = bool(spec.get("gone", m.gone))
                m.error = str(spec.get("error", m.error))
            else:
                raise ValueError("fault needs one of: ib, mount, reboot, collector")

    def _ib_fault(self, spec: dict[str, Any]) -> None:
        p = self._find(self.ports, "device", spec["ib"])
        for key, value in spec.items():
            if key in ("state", "phys_state", "rate_gbps") and isinstance(value, (int, float)):
                setattr(p, key, value)
            elif key == "gone":
                p.gone = bool(value)
            elif key in ("link_downed", "symbol_error", "port_errors_received", "link_error_recovery"):
                name = key + ("_total" if key != "port_errors_received" else "_total")
                p.counters[name] = p.counters.get(name, 0) + float(value)
            elif key != "ib":
                raise ValueError(f"unknown IB fault field {key!r}")

    @staticmethod
    def _find(items: list[Any], attr: str, name: object) -> Any:
        for it in items:
            if getattr(it, attr) == name:
                return it
        raise ValueError(f"no {attr} {name!r}; known: {[getattr(i, attr) for i in items]}")

    def clear(self, spec: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.ports, self.mounts = _layout(self.layout)
            self.failing.clear()

    def render(self) -> str:
        with self.lock:
            fams: dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]] = {}
            fams["node_boot_time_seconds"] = (
                "gauge",
                OTHER_HELP["node_boot_time_seconds"],
                [({}, self.boot_time)],
            )
            collectors = {"filesystem": self._filesystem(fams), "infiniband": self._infiniband(fams)}
        dur, ok = [], []
        for name, took in sorted(collectors.items()):
            dur.append(({"collector": name}, took))
            ok.append(({"collector": name}, 0.0 if name in self.failing else 1.0))
        fams["node_scrape_collector_duration_seconds"] = ("gauge", OTHER_HELP[
            "node_scrape_collector_duration_seconds"], dur)  # fmt: skip
        fams["node_scrape_collector_success"] = ("gauge", OTHER_HELP["node_scrape_collector_success"], ok)
        return format_families(fams)

    def _infiniband(self, fams: dict[str, Any]) -> float:
        if "infiniband" in self.failing:
            return 0.000412
        ports = [p for p in self.ports if not p.gone]
        if ports:
            fams["node_infiniband_info"] = ("gauge", "Non-numeric data from /sys/class/infiniband/<device>, value is "
                                            "always 1.", [({"board_id": p.board_id, "device": p.device,
                                                           "firmware_version": "28.39.1002", "hca_type": "MT4129"},
                                                          1.0) for p in ports])  # fmt: skip
        for short, help_ in IB_HELP.items():
            rows = []
            for p in ports:
                value = {"state_id": p.state, "physical_state_id": p.phys_state,
                         "rate_bytes_per_second": p.rate_gbps * 125_000_000}.get(short, p.counters.get(short, 0.0))  # fmt: skip
                rows.append(({"device": p.device, "port": "1"}, float(value)))
            if rows:
                fams[f"node_infiniband_{short}"] = ("gauge" if short in IB_GAUGES else "counter", help_, rows)
        return 0.012731544

    def _filesystem(self, fams: dict[str, Any]) -> float:
        if "filesystem" in self.failing:
            return 0.000301
        rows: dict[str, list[tuple[dict[str, str], float]]] = {k: [] for k in FS_HELP}
        for m in (m for m in self.mounts if not m.gone):
            lab = {
                "device": m.device,
                "device_error": m.error,
                "fstype": m.fstype,
                "mountpoint": m.mountpoint,
            }
            rows["device_error"].append((lab, 1.0 if m.error else 0.0))
            rows["readonly"].append((lab, 0.0))
            if m.error:
                continue  # statfs failed or hung: no size series, no mount_info
            free = m.size * 0.4
            for key, value in (("avail_bytes", free), ("free_bytes", free), ("size_bytes", m.size),
                               ("files", 1e8), ("files_free", 9e7), ("purgeable_bytes", 0.0)):  # fmt: skip
                rows[key].append((lab, value))
            info = {
                "device": m.device,
                "major": str(m.major),
                "minor": str(m.minor),
                "mountpoint": m.mountpoint,
            }
            rows["mount_info"].append((info, 1.0))
        for key, series in rows.items():
            if series:
                fams[f"node_filesystem_{key}"] = ("gauge", FS_HELP[key], series)
        return 0.004417801


def format_families(fams: dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]]) -> str:
    """client_golang's text format: families by name, series by label values, labels by name."""
    out = []
    for name in sorted(fams):
        kind, help_, series = fams[name]
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for labels, value in sorted(series, key=lambda s: [v for _, v in sorted(s[0].items())]):
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{text}}} {go_float(value)}" if text else f"{name} {go_float(value)}")
    return "\n".join(out) + "\n"


def make_server(node: FakeNode, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    return make_json_server(node.render, node.fault, node.clear, port, host, "text/plain; version=0.0.4; "
                            "charset=utf-8; escaping=underscores")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        description=f"Stand-in for node_exporter {RELEASE} (IB, filesystem, boot time)."
    )
    ap.add_argument("--layout", default="h200", choices=["h200", "plain"])
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)
    server = make_server(FakeNode(args.layout), args.port, args.host)
    print(json.dumps({"listening": server.server_address[:2], "layout": args.layout}), flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
