"""Rules → verdicts on constructed Prometheus answers; the client on httpx.MockTransport; watchdog decisions."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from intellect.errors import UsageError
from intellect.health.config import XID_DRAIN, Thresholds, load_thresholds
from intellect.health.prom import PrometheusClient, PrometheusError, Sample, parse_vector
from intellect.health.rules import build_query, checks, evaluate, judge
from intellect.health.watchdog import alert_nodes, decide
from intellect.slurm.nodes import Node

TH = Thresholds()


def s(check: str, value: float, **labels: str) -> Sample:
    return Sample({"check": check, **labels}, value)


def healthy(node: str, gpus: int = 2) -> list[Sample]:
    out = [s("up", 1, job="node", node=node), s("up", 1, job="dcgm", node=node)]
    for g in range(gpus):
        lab = {"Hostname": node, "gpu": str(g)}
        out += [s("xid_last", 0, **lab), s("xid_changes", 0, **lab), s("gpu_temp", 40, **lab)]
    out += [s("ib_state", 4, node=node, device="mlx5_0", port="1"),
            s("ib_phys_state", 5, node=node, device="mlx5_0", port="1")]  # fmt: skip
    return out


def test_healthy_node_is_ok() -> None:
    v = judge(healthy("node-1"), TH, ["node-1"]).verdicts["node-1"]
    assert v.status == "ok" and v.reasons == []


def test_xid_from_drain_list_is_bad_and_named() -> None:
    data = healthy("node-2", gpus=4) + [
        s("xid_last", 79, Hostname="node-2", gpu="3"),
        s("xid_changes", 1, Hostname="node-2", gpu="3"),
    ]
    data = [
        x for x in data if not (x.labels.get("gpu") == "3" and x.value == 0 and "xid" in x.labels["check"])
    ]
    v = judge(data, TH, ["node-2"]).verdicts["node-2"]
    assert v.status == "bad" and v.summary == "Xid 79 on GPU 3"


def test_old_or_benign_xid_is_only_degraded() -> None:
    old = [s("xid_last", 79, Hostname="n", gpu="0"), s("xid_changes", 0, Hostname="n", gpu="0")]
    benign = [s("xid_last", 13, Hostname="n", gpu="1"), s("xid_changes", 2, Hostname="n", gpu="1")]
    base = [x for x in healthy("n") if "xid" not in x.labels["check"]]
    v = judge(base + old + benign, TH, ["n"]).verdicts["n"]
    assert v.status == "degraded"
    assert "older than 10m" in v.summary and "Xid 13 on GPU 1 (not in the drain list)" in v.summary


@pytest.mark.parametrize(
    ("extra", "status", "text"),
    [
        (s("gpu_temp", 97, Hostname="n", gpu="1"), "bad", "GPU 1 at 97 °C"),
        (s("gpu_temp", 88, Hostname="n", gpu="1"), "degraded", "GPU 1 at 88 °C"),
        (s("ecc_dbe", 2, Hostname="n", gpu="0"), "bad", "2 double-bit ECC errors on GPU 0"),
        (s("row_remap_failure", 1, Hostname="n", gpu="0"), "bad", "row remap failed on GPU 0"),
        (s("row_remap_pending", 1, Hostname="n", gpu="1"), "bad", "row remap pending on GPU 1"),
        (s("nvlink_replay", 5, Hostname="n", gpu="1"), "degraded", "5 NVLink errors on GPU 1"),
        (s("nvlink_recovery", 500, Hostname="n", gpu="1"), "bad", "500 NVLink errors on GPU 1"),
        (s("ib_state", 1, node="n", device="mlx5_1", port="1"), "bad", "IB mlx5_1 port 1 is not ACTIVE"),
        (s("ib_link_downed", 1, node="n", device="mlx5_0", port="1"), "bad", "link went down"),
        (s("iberr_symbol_error", 20, node="n", device="mlx5_0", port="1"), "degraded", "20 IB errors"),
    ],
)
def test_each_rule(extra: Sample, status: str, text: str) -> None:
    data = [x for x in healthy("n") if not (x.labels["check"] == "gpu_temp" and extra.labels["check"] ==
            "gpu_temp" and x.labels.get("gpu") == extra.labels.get("gpu"))] + [extra]  # fmt: skip
    v = judge(data, TH, ["n"]).verdicts["n"]
    assert v.status == status and text in v.summary, v.to_json()


def test_ib_rate_below_expected_is_bad() -> None:
    data = healthy("n") + [s("ib_rate", 25e9, node="n", device="mlx5_0", port="1")]
    v = judge(data, Thresholds(ib_rate_gbps=400), ["n"]).verdicts["n"]
    assert v.status == "bad" and "at 200 Gb/s, expected 400" in v.summary


def test_missing_gpus_is_bad_when_expected() -> None:
    v = judge(healthy("n", gpus=7), Thresholds(gpus_expected=8), ["n"]).verdicts["n"]
    assert v.status == "bad" and "only 7 of 8 GPUs report" in v.summary


@pytest.mark.parametrize(
    "data",
    [
        [],  # no data at all
        [s("up", 1, job="node", node="n")],  # no dcgm target
        [s("up", 1, job="node", node="n"), s("up", 0, job="dcgm", node="n")],  # dcgm down
        [s("up", 1, job="node", node="n"), s("up", 1, job="dcgm", node="n")],  # dcgm up, no GPU series
        [s("up", math.nan, job="node", node="n"), s("up", 1, job="dcgm", node="n")],
        healthy("n") + [s("gpu_temp", math.nan, Hostname="n", gpu="5")],  # NaN value
        healthy("n") + [s("xid_last", 79, Hostname="n")],  # missing gpu label
        healthy("n") + [s("ib_state", 4, node="n")],  # missing device/port
    ],
)
def test_no_data_nan_and_missing_labels_are_unknown(data: list[Sample]) -> None:
    assert judge(data, TH, ["n"]).verdicts["n"].status == "unknown"


def test_samples_without_node_label_are_counted_not_attributed() -> None:
    r = judge(healthy("a") + [Sample({"check": "up", "job": "node"}, 1)], TH, None)
    assert list(r.verdicts) == ["a"] and r.unattributed == 1


def test_one_query_covers_every_check() -> None:
    q = build_query(TH)
    assert q.count(" or ") == len(checks(TH)) - 1
    assert "changes(DCGM_FI_DEV_XID_ERRORS[10m])" in q and "node_infiniband_state_id" in q


def _client(handler) -> PrometheusClient:  # type: ignore[no-untyped-def]
    return PrometheusClient("http://prom.test:9090", transport=httpx.MockTransport(handler))


def _vector(samples: list[dict]) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": samples}}


def test_evaluate_makes_exactly_one_request_for_many_nodes() -> None:
    calls = []
    result = [{"metric": x.labels, "value": [1.0, str(x.value)]} for n in range(50) for x in healthy(f"n{n}")]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=_vector(result))

    report = evaluate(_client(handler), TH, [f"n{n}" for n in range(50)] + ["ghost"])
    assert len(calls) == 1 and calls[0].url.path == "/api/v1/query"
    assert sum(v.status == "ok" for v in report.verdicts.values()) == 50
    assert report.verdicts["ghost"].status == "unknown"


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>not json"),
        httpx.Response(200, json={"status": "error", "error": "bad query"}),
        httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": []}}),
        httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": "x"}}),
        httpx.Response(400, json={"status": "error", "error": "parse error"}),
        httpx.Response(503, content=b"unavailable"),
    ],
)
def test_malformed_answers_give_unknown_never_raise(response: httpx.Response) -> None:
    report = evaluate(_client(lambda request: response), TH, ["n1", "n2"])
    assert report.error and {v.status for v in report.verdicts.values()} == {"unknown"}


def test_unreachable_prometheus_gives_unknown() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    report = evaluate(_client(handler), TH, ["n1"])
    assert report.verdicts["n1"].status == "unknown" and "unreachable" in (report.error or "")


def test_parse_vector_tolerates_junk_elements() -> None:
    body = json.dumps(_vector([{"metric": {"check": "up"}, "value": [1, "abc"]}, 7, {"value": "x"}]))
    samples = parse_vector(200, body.encode())
    assert len(samples) == 2 and all(math.isnan(x.value) for x in samples)
    with pytest.raises(PrometheusError):
        parse_vector(200, b"[]")


def _node(name: str, state: str = "idle", reason: str | None = None) -> Node:
    return Node(name, state, reason, None, None, None, 2, 1000)


def _verdicts(**status: str):  # type: ignore[no-untyped-def]
    out = {}
    for name, st in status.items():
        v = judge(healthy(name), TH, [name]).verdicts[name]
        if st == "bad":
            v.add("xid", "bad", "Xid 79 on GPU 3")
        elif st == "unknown":
            v.add("no_data", "unknown", "no data")
        out[name] = v
    return out


def test_decide_drains_bad_only_and_never_a_human_drain() -> None:
    slurm = {
        "a": _node("a"),
        "b": _node("b"),
        "c": _node("c", "drained", "disk swap -- alice"),
        "d": _node("d"),
    }
    slurm.update({f"x{i}": _node(f"x{i}") for i in range(8)})
    d = decide(_verdicts(a="bad", b="unknown", c="bad", d="ok"), slurm, set(), {}, 0.0, 10.0)
    assert d.drain == {"a": "watchdog: Xid 79 on GPU 3"} and d.resume == []


def test_decide_resumes_only_its_own_drains_after_the_hold() -> None:
    ours = "[intellect] root 2026-01-01T00:00:00Z: watchdog: Xid 79 on GPU 3"
    slurm = {"a": _node("a", "drained", ours), "h": _node("h", "drained", "bad cable -- bob"),
             "i": _node("i", "drained", "[intellect] ops 2026: maintenance")}  # fmt: skip
    since: dict[str, float] = {}
    v = _verdicts(a="ok", h="ok", i="ok")
    assert decide(v, slurm, {"a", "h"}, since, 100.0, 10.0).resume == []
    assert decide(v, slurm, {"a", "h"}, since, 105.0, 10.0).resume == []
    assert decide(v, slurm, {"a", "h"}, since, 110.0, 10.0).resume == ["a"]
    # turning unknown resets the hold
    decide(_verdicts(a="unknown", h="ok", i="ok"), slurm, {"a"}, since, 111.0, 10.0)
    assert decide(v, slurm, {"a"}, since, 115.0, 10.0).resume == []


def test_decide_caps_how_many_nodes_it_holds() -> None:
    slurm = {n: _node(n) for n in "abcd"}
    d = decide(_verdicts(a="bad", b="bad", c="bad", d="ok"), slurm, set(), {}, 0.0, 1.0, 0.25)
    assert list(d.drain) == ["a"] and set(d.held_back) == {"b", "c"}


def test_alert_nodes_reads_webhook_payloads_and_ignores_junk() -> None:
    payload = {"alerts": [{"labels": {"node": "node-2"}}, {"labels": {"Hostname": "node-3"}}, {"x": 1}, 5]}
    assert alert_nodes(payload) == ["node-2", "node-3"]
    assert alert_nodes([1, 2]) == [] and alert_nodes({"alerts": "no"}) == []


def test_thresholds_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "th.yml"
    p.write_text("gpu_temp_bad: 90\nxid_drain: [79]\n")
    th = load_thresholds(p)
    assert th.gpu_temp_bad == 90 and th.xid_drain == (79,) and Thresholds().xid_drain == XID_DRAIN
    p.write_text("gpu_tmp_bad: 90\n")
    with pytest.raises(UsageError, match="unknown key 'gpu_tmp_bad'"):
        load_thresholds(p)
