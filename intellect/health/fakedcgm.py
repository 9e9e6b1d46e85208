"""A stand-in for NVIDIA's dcgm-exporter, for machines without GPUs (tests, benches, the dev cluster).

It serves ``GET /metrics`` in the Prometheus text format with dcgm-exporter's real metric names and labels
(``gpu``, ``UUID``, ``pci_bus_id``, ``device``, ``modelName``, ``Hostname``) for N fake GPUs, and takes faults:

    POST /fault  {"gpu": 3, "xid": 79}            the last-Xid gauge becomes 79 (it never resets by itself)
    POST /fault  {"gpu": 0, "temp": 97}            GPU temperature
    POST /fault  {"gpu": 1, "row_remap_failure": 1}  (also: row_remap_pending, ecc_dbe, nvlink_replay)
    POST /clear  {}                                every GPU back to healthy (as after a GPU reset)

Run: ``python -m intellect.health.fakedcgm --hostname node-2 --port 9400 [--gpus 8]``.
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "NVIDIA H200"
# field name → (metric, type, help)
FIELDS = {
    "temp": ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    "power": ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    "util": ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    "fb_used": ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    "xid": ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    "ecc_dbe": (
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "counter",
        "Total number of double-bit volatile ECC errors.",
    ),
    "row_remap_failure": ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed"),
    "row_remap_pending": ("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "Whether remapping of rows is pending"),
    "nvlink_replay": (
        "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
        "counter",
        "Total number of NVLink retries.",
    ),
    "nvlink_recovery": (
        "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
        "counter",
        "Total number of NVLink recovery errors.",
    ),
}
HEALTHY = {"temp": 41.0, "power": 118.0, "util": 0.0, "fb_used": 0.0, "xid": 0.0, "ecc_dbe": 0.0,
           "row_remap_failure": 0.0, "row_remap_pending": 0.0, "nvlink_replay": 0.0, "nvlink_recovery": 0.0}  # fmt: skip


@dataclass
class FakeGpus:
    hostname: str
    count: int = 8
    values: list[dict[str, float]] = field(default_factory=list)
    uuids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.values = [dict(HEALTHY) for _ in range(self.count)]
        ns = uuid.uuid5(uuid.NAMESPACE_DNS, self.hostname)
        self.uuids = [f"GPU-{uuid.uuid5(ns, str(i))}" for i in range(self.count)]

    def fault(self, spec: dict[str, object]) -> None:
        gpu = spec.get("gpu")
        if not isinstance(gpu, int) or not 0 <= gpu < self.count:
            raise ValueError(f"gpu must be an integer in [0, {self.count})")
        updates = {k: v for k, v in spec.items() if k != "gpu"}
        bad = [k for k, v in updates.items() if k not in FIELDS or not isinstance(v, (int, float))]
        if bad or not updates:
            raise ValueError(f"unknown or non-numeric field(s) {bad}; known: {sorted(FIELDS)}")
        with self.lock:
            self.values[gpu].update({k: float(v) for k, v in updates.items()})  # type: ignore[arg-type]

    def clear(self) -> None:
        with self.lock:
            self.values = [dict(HEALTHY) for _ in range(self.count)]

    def render(self) -> str:
        lines: list[str] = []
        with self.lock:
            snapshot = [dict(v) for v in self.values]
        for key, (metric, kind, help_) in FIELDS.items():
            lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} {kind}"]
            for i, vals in enumerate(snapshot):
                labels = (
                    f'gpu="{i}",UUID="{self.uuids[i]}",pci_bus_id="00000000:{0x18 + i:02X}:00.0",'
                    f'device="nvidia{i}",modelName="{MODEL}",Hostname="{self.hostname}"'
                )
                lines.append(f"{metric}{{{labels}}} {vals[key]:g}")
        return "\n".join(lines) + "\n"


def make_server(gpus: FakeGpus, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, body: str, ctype: str = "application/json") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                self._send(200, gpus.render(), "text/plain; version=0.0.4")
            else:
                self._send(404, '{"error": "not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/fault":
                    gpus.fault(body)
                elif self.path == "/clear":
                    gpus.clear()
                else:
                    self._send(404, '{"error": "not found"}')
                    return
            except (ValueError, AttributeError) as exc:
                self._send(400, json.dumps({"error": str(exc)}))
                return
            self._send(200, '{"ok": true}')

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Stand-in for NVIDIA dcgm-exporter (fake GPUs, fault injection)."
    )
    ap.add_argument("--hostname", required=True)
    ap.add_argument("--port", type=int, default=9400)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--gpus", type=int, default=8)
    args = ap.parse_args(argv)
    server = make_server(FakeGpus(args.hostname, args.gpus), args.port, args.host)
    print(f"fake dcgm-exporter for {args.hostname} on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
