"""Test helpers for health: the Prometheus text format parsed with label ORDER kept (to compare the stand-ins with
the recorded expositions of tests/fixtures/exporters/), and Prometheus-shaped answers built from an exposition.

``answer(...)`` turns exposition series into the samples Prometheus returns for the verdict query's instant-selector
checks: the series' labels (empty ones dropped, as Prometheus stores them) plus the target labels Prometheus adds
(``instance``, ``job``, ``node``, ``node_type``) plus ``check``. Range checks (increase, max_over_time, the Xid
latch) are given by each test. ``test_instant_checks_are_plain_selectors`` keeps SELECTORS equal to the real query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from intellect.health.checks import DCGM_NOISE, lean
from intellect.health.prom import Sample

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporters"
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')
# check → the metric its instant selector reads (checks.checks() must agree: see the test named above); the DCGM
# ones are read without DCGM_NOISE labels (checks.lean)
SELECTORS = {
    "xid_last": "DCGM_FI_DEV_XID_ERRORS",
    "gpu_temp": "DCGM_FI_DEV_GPU_TEMP",
    "memory_temp": "DCGM_FI_DEV_MEMORY_TEMP",
    "ecc_dbe": "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "row_remap_failure": "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "row_remap_pending": "DCGM_FI_DEV_ROW_REMAP_PENDING",
    "ib_state": "node_infiniband_state_id",
    "ib_phys_state": "node_infiniband_physical_state_id",
    "ib_rate": "node_infiniband_rate_bytes_per_second",
}


@dataclass
class Series:
    name: str
    labels: list[tuple[str, str]]
    value: str

    @property
    def label_names(self) -> list[str]:
        return [k for k, _ in self.labels]

    def get(self, key: str) -> str | None:
        return dict(self.labels).get(key)


@dataclass
class Family:
    name: str
    help: str = ""
    type: str = ""
    series: list[Series] = field(default_factory=list)


def parse(text: str) -> list[Family]:
    """Families in order; comment lines other than HELP/TYPE (the fixtures' provenance header) are skipped."""
    fams: list[Family] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            fams.append(Family(name, help_))
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert fams and fams[-1].name == name, f"TYPE without HELP: {line}"
            fams[-1].type = kind
        elif line.startswith("#") or not line.strip():
            continue
        else:
            m = LINE.match(line)
            assert m, f"not an exposition line: {line!r}"
            name, body, value = m.groups()
            labels = [(k, v) for k, v in LABEL.findall(body or "")]
            assert fams and fams[-1].name == name, f"series outside its family: {line}"
            fams[-1].series.append(Series(name, labels, value))
    return fams


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def answer(
    text: str,
    target: dict[str, str],
    checks: tuple[str, ...] = tuple(SELECTORS),
    mounts: tuple[str, ...] = (),
) -> list[Sample]:
    """The samples of the instant-selector checks for one exposition scraped with ``target`` labels; also
    ``collector`` (node_scrape_collector_success) and ``mount`` (network filesystems' device_error)."""
    by_metric = {metric: check for check, metric in SELECTORS.items() if check in checks}
    out = []
    for fam in parse(text):
        for s in fam.series:
            dcgm = s.name.startswith("DCGM_")
            labels = {k: v for k, v in s.labels if v != "" and not (dcgm and k in DCGM_NOISE)} | target
            check = by_metric.get(s.name)
            if s.name == "node_scrape_collector_success" and labels.get("collector") in (
                "infiniband",
                "filesystem",
            ):
                check = "collector"
            if s.name == "node_filesystem_device_error" and (
                labels.get("fstype") in ("lustre", "nfs", "nfs4") or labels.get("mountpoint") in mounts
            ):
                check = "mount"
            if check is not None:
                name = {} if dcgm else {"__name__": s.name}
                out.append(Sample({**name, **labels, "check": check}, float(s.value)))
    return out


def selector(check: str) -> str:
    """The expression checks.checks() must hold for an instant-selector check."""
    metric = SELECTORS[check]
    return lean(metric) if metric.startswith("DCGM_") else metric


def up(job: str, value: float, target: dict[str, str], grace_max: float | None = None) -> list[Sample]:
    """``up`` of one target, and ``max_over_time(up[grace])`` (default: the same value)."""
    labels = {**target, "job": job}
    return [Sample({"__name__": "up", **labels, "check": "up"}, value),
            Sample({**labels, "check": "up_max"}, value if grace_max is None else grace_max)]  # fmt: skip


def rules_info(drain: str = "48,56,57,58,62,63,64,65,68,69,73,74,79,80,81,92,119,120") -> Sample:
    return Sample({"__name__": "intellect:health_rules_info", "xid_drain": drain, "check": "rules"}, 1.0)
