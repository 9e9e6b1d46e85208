"""A Prometheus HTTP API client: instant queries over httpx, with an injectable transport for tests.

Errors: ``PrometheusUnreachable`` (no answer: refused, timed out, HTTP 5xx) and ``PrometheusError`` (an answer we
cannot use: HTTP 4xx, not JSON, ``status != success``, a result that is not a vector). Callers turn both into
``unknown`` verdicts; nothing here ever decides a node is healthy.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Any

import httpx

from intellect.errors import IntellectError

DEFAULT_TIMEOUT = 10.0


class PrometheusError(IntellectError):
    """Prometheus answered, but not with something we can use."""


class PrometheusUnreachable(PrometheusError):
    """Prometheus did not answer (refused, timed out, 5xx)."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float  # may be NaN: the rules treat it as missing


class PrometheusClient:
    def __init__(
        self, url: str, timeout: float = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise IntellectError(f"bad Prometheus URL {url!r}", hint="--prometheus http://HOST:9090")
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, expr: str) -> list[Sample]:
        """One instant query (POST: the expression may be long). Returns the vector's samples."""
        try:
            resp = self._client.post("/api/v1/query", data={"query": expr})
        except httpx.HTTPError as exc:
            raise PrometheusUnreachable(
                f"Prometheus at {self.url} is unreachable: {type(exc).__name__}",
                hint="check the address (--prometheus / INTELLECT_PROMETHEUS_URL) and that Prometheus runs",
            ) from exc
        if resp.status_code >= 500:
            raise PrometheusUnreachable(f"Prometheus at {self.url} answered HTTP {resp.status_code}")
        return parse_vector(resp.status_code, resp.content)

    def ready(self) -> bool:
        try:
            return self._client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False


def parse_vector(status_code: int, body: bytes) -> list[Sample]:
    """Parse a /api/v1/query answer into samples; raise PrometheusError on anything malformed.

    The cyclic garbage collector is paused meanwhile: an answer for thousands of nodes is hundreds of thousands of
    small acyclic objects, and collections triggered by their allocation took 60% of the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_vector(status_code, body)
    finally:
        if was_enabled:
            gc.enable()


def _parse_vector(status_code: int, body: bytes) -> list[Sample]:
    import json

    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise PrometheusError(f"Prometheus answered HTTP {status_code} with no JSON") from exc
    if not isinstance(doc, dict) or doc.get("status") != "success":
        err = doc.get("error") if isinstance(doc, dict) else None
        raise PrometheusError(f"Prometheus query failed (HTTP {status_code}): {str(err)[:200]}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise PrometheusError("Prometheus answer is not an instant vector")
    result = data.get("result")
    if not isinstance(result, list):
        raise PrometheusError("Prometheus answer has no result list")
    return [s for s in (_sample(item) for item in result) if s is not None]


def _sample(item: Any) -> Sample | None:
    """One vector element; a malformed element becomes a NaN sample with whatever labels it had."""
    if not isinstance(item, dict):
        return None
    metric = item.get("metric")
    if not isinstance(metric, dict):
        labels: dict[str, str] = {}
    elif all(
        type(v) is str for v in metric.values()
    ):  # JSON keys are str already; the common case, kept fast
        labels = metric
    else:
        labels = {str(k): str(v) for k, v in metric.items()}
    value = item.get("value")
    try:
        number = float(value[1]) if type(value) is list and len(value) == 2 else math.nan
    except (TypeError, ValueError):
        number = math.nan
    return Sample(labels=labels, value=number)
