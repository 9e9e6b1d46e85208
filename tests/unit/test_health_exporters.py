"""The stand-in exporters against the recorded expositions of the real ones (tests/fixtures/exporters/: dcgm-exporter
4.5.3-4.8.2 and main d5e5f51, node_exporter v1.12.1): the same families in the same order, HELP and TYPE, label
names in the same order, the same label values where they are not made up, the same value text. And the counters
file we ship against upstream's default-counters.csv."""

from __future__ import annotations

import re

import pytest

from intellect.health.config import DCGM_COUNTERS, DCGM_HEALTH_EXTRAS
from intellect.health.fakedcgm import (
    DEFAULT_COUNTERS,
    XID_COUNT,
    XID_FIELD,
    Counter,
    FakeGpus,
    parse_counters,
    read_counters,
)
from intellect.health.fakenode import FakeNode, go_float
from intellect.health.stack import COUNTERS
from tests.health_exposition import FIXTURES, Family, fixture, parse

FIXTURE_COUNTERS = read_counters(str(FIXTURES / "dcgm-exporter-4.5.3-4.8.2-fixture-counters.csv"))
# Made up in the fixtures and in the stand-in alike (tests/fixtures/exporters/README.md: "Every value is filled in").
INVENTED = {"UUID", "pci_bus_id"}


class Clock:
    def __init__(self) -> None:
        self.t = 1_767_225_600.0

    def __call__(self) -> float:
        return self.t


def _gpus(**kw: object) -> FakeGpus:
    return FakeGpus("h200-001", 8, list(FIXTURE_COUNTERS), clock=Clock(), **kw)  # type: ignore[arg-type]


def _assert_same_shape(ours: list[Family], real: list[Family], values: bool = False) -> None:
    assert [f.name for f in ours] == [f.name for f in real]
    for mine, theirs in zip(ours, real, strict=True):
        assert (mine.help, mine.type) == (theirs.help, theirs.type), mine.name
        assert len(mine.series) == len(theirs.series), mine.name
        for a, b in zip(mine.series, theirs.series, strict=True):
            assert a.label_names == b.label_names, (a, b)
            assert [(k, v) for k, v in a.labels if k not in INVENTED] == [
                (k, v) for k, v in b.labels if k not in INVENTED
            ], (a, b)
            assert ("." in a.value) == ("." in b.value), (a, b)  # %f for doubles, %d for integers
            if values and a.name in ("DCGM_FI_DEV_XID_ERRORS",):
                assert a.value == b.value


def test_stand_in_renders_the_healthy_exposition_of_4_5_3() -> None:
    _assert_same_shape(parse(_gpus().render()), parse(fixture("dcgm-exporter-4.5.3-4.8.2.prom")), values=True)


def test_stand_in_xid_79_has_err_code_and_err_msg_as_the_real_one() -> None:
    gpus = _gpus()
    gpus.fault({"gpu": 3, "xid": 79})
    ours, real = parse(gpus.render()), parse(fixture("dcgm-exporter-4.5.3-4.8.2-xid79-gpu3.prom"))
    _assert_same_shape(ours, real, values=True)
    xid = next(s for f in ours if f.name == "DCGM_FI_DEV_XID_ERRORS" for s in f.series if s.get("gpu") == "3")
    assert (xid.get("err_code"), xid.get("err_msg"), xid.value) == ("79", "GPU has fallen off the bus", "79")


def test_stand_in_without_xid_series_on_healthy_gpus() -> None:
    real = parse(fixture("dcgm-exporter-4.5.3-4.8.2-no-xid-series.prom"))
    assert "DCGM_FI_DEV_XID_ERRORS" not in [f.name for f in real]
    _assert_same_shape(parse(_gpus(healthy_xid="absent").render()), real)


def test_stand_in_with_the_lowercase_hostname_of_main_d5e5f51() -> None:
    ours = parse(_gpus(hostname_label="hostname").render())
    _assert_same_shape(ours, parse(fixture("dcgm-exporter-main-d5e5f51-hostname.prom")), values=True)
    assert all(
        "Hostname" not in s.label_names and s.get("hostname") == "h200-001" for f in ours for s in f.series
    )


def test_stand_in_older_xid_shape_has_no_err_code() -> None:
    gpus = _gpus(xid_shape="value-only")
    gpus.fault({"gpu": 3, "xid": 79})
    xid = next(f for f in parse(gpus.render()) if f.name == "DCGM_FI_DEV_XID_ERRORS")
    assert all("err_code" not in s.label_names for s in xid.series)
    assert [s.value for s in xid.series] == ["0", "0", "0", "79", "0", "0", "0", "0"]


def test_a_gpu_off_the_bus_has_no_series_at_all_7_of_8_report() -> None:
    gpus = _gpus()
    gpus.fault({"gpu": 3, "gone": True})
    fams = parse(gpus.render())
    assert all(len(f.series) == 7 and all(s.get("gpu") != "3" for s in f.series) for f in fams)
    gpus.clear({"gpu": 3})
    assert all(len(f.series) == 8 for f in parse(gpus.render()))


def test_xid_count_field_counts_the_same_xid_again_within_its_window() -> None:
    counters = [*FIXTURE_COUNTERS, Counter(XID_COUNT, "counter", "reported XIDs during last window")]
    clock = Clock()
    gpus = FakeGpus("h200-001", 8, counters, clock=clock)
    fam = parse(gpus.render())[-1]
    assert fam.name == XID_COUNT and (fam.help, fam.type) == ("reported XIDs during last window", "counter")
    assert fam.series[0].label_names == ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
                                         "DCGM_FI_DRIVER_VERSION", "window_size_in_ms"]  # fmt: skip
    assert {s.value for s in fam.series} == {"0"}
    gpus.fault({"gpu": 3, "xid": 79})
    clock.t += 60
    gpus.fault({"gpu": 3, "xid": 79})  # the same Xid again: the gauge cannot show it, the count does
    gpu3 = [s for s in parse(gpus.render())[-1].series if s.get("gpu") == "3"]
    assert [(s.get("xid"), s.get("window_size_in_ms"), s.value) for s in gpu3] == [("79", "300000", "2")]
    assert gpu3[0].label_names[-2:] == ["window_size_in_ms", "xid"]
    clock.t += 301
    gpu3 = [s for s in parse(gpus.render())[-1].series if s.get("gpu") == "3"]
    assert [(s.get("xid"), s.value) for s in gpu3] == [(None, "0")]


def test_faults_the_counters_file_does_not_serve_are_refused() -> None:
    gpus = FakeGpus("n", 2)  # upstream's default counters: no ECC DBE, no row remap pending
    with pytest.raises(ValueError, match="not in the counters file"):
        gpus.fault({"gpu": 0, "ecc_dbe": 2})
    with pytest.raises(ValueError, match="gpu must be"):
        gpus.fault({"gpu": 9, "xid": 79})
    with pytest.raises(ValueError, match="xid must be one of"):
        gpus.fault({"gpu": 0, "xid": 999})
    with pytest.raises(ValueError, match="unknown or non-numeric"):
        FakeGpus("n", 2, read_counters(str(COUNTERS))).fault({"gpu": 1, "colour": 3})


def test_counters_file_parsing_follows_the_exporter() -> None:
    assert parse_counters("# c\n\nDCGM_FI_DEV_GPU_TEMP ,  gauge , GPU temperature (in C).\n") == [
        Counter("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).")
    ]
    with pytest.raises(ValueError, match="could not find DCGM field"):
        parse_counters("DCGM_FI_DEV_NOPE, gauge, x\n")
    with pytest.raises(ValueError, match="expected 3 fields"):
        parse_counters("DCGM_FI_DEV_GPU_TEMP, gauge\n")
    with pytest.raises(ValueError, match="Prometheus metric type"):
        parse_counters("DCGM_FI_DEV_GPU_TEMP, gaug, x\n")


def _upstream_enabled() -> list[Counter]:
    text = fixture("dcgm-exporter-4.5.3-4.8.2-default-counters.csv").split("\n\n", 1)[1]
    return parse_counters(text)


def test_stand_in_defaults_are_upstream_default_counters() -> None:
    assert sorted(DEFAULT_COUNTERS) == sorted((c.name, c.type, c.help) for c in _upstream_enabled())


def test_our_counters_file_is_the_default_set_plus_the_health_extras() -> None:
    ours = read_counters(str(COUNTERS))
    assert [(c.name, c.type, c.help) for c in ours] == list(DCGM_COUNTERS)
    upstream = {c.name: c for c in _upstream_enabled()}
    extras = [c.name for c in ours if c.name not in upstream]
    assert sorted(extras) == sorted(DCGM_HEALTH_EXTRAS)
    assert all(upstream[c.name] == c for c in ours if c.name in upstream)  # help texts verbatim
    assert set(upstream) <= {c.name for c in ours}
    # the fixture expositions were made from this file minus the Xid count field
    assert [c for c in ours if c.name != XID_COUNT] == FIXTURE_COUNTERS
    commented = re.findall(r"^# (DCGM_\w+),\s*(\w+),\s*(.*)$", fixture("dcgm-exporter-4.5.3-4.8.2-default-counters.csv"),
                           re.M)  # fmt: skip
    for (
        name,
        kind,
        help_,
    ) in commented:  # extras that upstream ships commented out keep upstream's type and help
        if name in DCGM_HEALTH_EXTRAS:
            assert (kind, help_.strip()) == next((c.type, c.help) for c in ours if c.name == name)


def _fams(text: str) -> dict[str, Family]:
    return {f.name: f for f in parse(text)}


@pytest.mark.parametrize(
    ("fixture_name", "fault"),
    [
        ("node-exporter-v1.12.1-filesystem.prom", None),
        ("node-exporter-v1.12.1-filesystem-nfs-hung.prom", {"mount": "/home", "error": "mountpoint timeout"}),
        (
            "node-exporter-v1.12.1-filesystem-nfs-stale.prom",
            {"mount": "/home", "error": "stale NFS file handle"},
        ),
    ],
)
def test_node_stand_in_filesystem_matches_node_exporter(fixture_name: str, fault: dict | None) -> None:
    node = FakeNode("h200")
    if fault:
        node.fault(fault)
    ours, real = _fams(node.render()), _fams(fixture(fixture_name))
    for name, fam in real.items():
        mine = ours[name]
        assert (mine.help, mine.type) == (fam.help, fam.type), name
        if name.startswith("node_filesystem_"):
            assert [s.labels for s in mine.series] == [s.labels for s in fam.series], name
            assert all(m.label_names == r.label_names for m, r in zip(mine.series, fam.series, strict=True))


def test_node_stand_in_infiniband_matches_node_exporter_and_hides_the_link_layer() -> None:
    ours, real = _fams(FakeNode("h200").render()), _fams(fixture("node-exporter-v1.12.1-infiniband.prom"))
    for name, mine in ours.items():
        if not name.startswith("node_infiniband_"):
            continue
        fam = real[name]
        assert (mine.help, mine.type) == (fam.help, fam.type), name
        assert [s.labels for s in mine.series] == [s.labels for s in fam.series], name
        if name in ("node_infiniband_state_id", "node_infiniband_physical_state_id",
                    "node_infiniband_rate_bytes_per_second"):  # fmt: skip
            assert [s.value for s in mine.series] == [s.value for s in fam.series], name
    assert not any("link_layer" in s.label_names for f in ours.values() for s in f.series)
    assert {"node_infiniband_state_id", "node_infiniband_link_downed_total", "node_boot_time_seconds"} <= set(
        ours
    )


def test_go_float_formats_every_value_of_the_node_exporter_fixtures_as_go_does() -> None:
    for name in FIXTURES.glob("node-exporter-*.prom"):
        for fam in parse(name.read_text()):
            for s in fam.series:
                assert go_float(float(s.value)) == s.value, (name.name, s)


def test_stand_in_gpus_follow_the_device_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The dev cluster's stand-in has one GPU per /dev/fakegpuN: one that appears later reports, one removed stops."""
    gpus = FakeGpus("node1", 0, list(FIXTURE_COUNTERS), devices=str(tmp_path / "fakegpu[0-9]*"))
    assert gpus.render() == ""
    for i in range(2):
        (tmp_path / f"fakegpu{i}").touch()
    temps = next(f for f in parse(gpus.render()) if f.name == "DCGM_FI_DEV_GPU_TEMP")
    assert [s.get("gpu") for s in temps.series] == ["0", "1"]
    (tmp_path / "fakegpu0").unlink()
    temps = next(f for f in parse(gpus.render()) if f.name == "DCGM_FI_DEV_GPU_TEMP")
    assert [s.get("gpu") for s in temps.series] == ["1"]


def test_collect_interval_serves_the_latest_sample() -> None:
    """``-c 5000``: DCGM samples every 5 s and a scrape reads the last sample, so a fault shows at the next one."""
    clock = Clock()
    gpus = FakeGpus("h200-001", 8, list(FIXTURE_COUNTERS), clock=clock, collect_interval_ms=5000)
    first = gpus.render()
    clock.t += 1
    gpus.fault({"gpu": 3, "xid": 79})
    clock.t += 2.5  # 3.5 s after start: still the first sample
    assert gpus.render() == first
    clock.t += 1.5  # 5 s: the next sample has it
    gpu3 = [s for f in parse(gpus.render()) if f.name == XID_FIELD for s in f.series if s.get("gpu") == "3"]
    assert [s.value for s in gpu3] == ["79"]
    assert _gpus().collect_interval_ms == 0  # in-process stand-ins sample at every scrape
