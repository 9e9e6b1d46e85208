"""The launch gate: bad or unknown nodes are excluded from the allocation and named with their reason.

It checks the partition's nodes (one sinfo call) against one Prometheus query, with the thresholds of
``intellect health`` (``INTELLECT_HEALTH_THRESHOLDS``) and the recipe's GPUs per node. ``unknown`` is never
healthy: a node whose verdict is bad or unknown is excluded, as are drained and down nodes. A real launch fails
closed: no Prometheus address, Prometheus unreachable, or too few usable nodes left → ``LaunchError`` and nothing is
submitted. A dry run never fails because of the gate: it reports the same findings as a status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from intellect.errors import IntellectError, LaunchError
from intellect.health.config import Thresholds, load_thresholds
from intellect.health.prom import PrometheusClient
from intellect.health.rules import BAD, UNKNOWN, evaluate
from intellect.recipe import Recipe
from intellect.slurm import run as slurm
from intellect.slurm.nodes import SINFO_FORMAT, Node, expand_nodes, parse_sinfo

PASSED, DISABLED, SKIPPED, FAILED = "passed", "disabled", "skipped", "failed"


@dataclass
class GateResult:
    status: str
    message: str = ""
    prometheus_url: str | None = None
    checked: int = 0
    exclude: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "prometheus_url": self.prometheus_url,
            "checked": self.checked,
            "exclude": self.exclude,
            "reasons": self.reasons,
        }


def partition_nodes(partition: str | None) -> dict[str, Node]:
    argv = ["sinfo", "-N", "-h", "-o", SINFO_FORMAT]
    if partition:
        argv += ["-p", partition]
    return parse_sinfo(slurm.run(argv).stdout)


def run_gate(
    recipe: Recipe,
    prometheus_url: str | None,
    enabled: bool = True,
    strict: bool = True,
    thresholds: Thresholds | None = None,
) -> GateResult:
    """Check the partition's nodes. ``strict`` (a real launch) raises LaunchError instead of returning FAILED."""
    url = prometheus_url or recipe.cluster.health.prometheus_url
    if not enabled:
        return GateResult(DISABLED, "health gate disabled (--no-health-gate)", url)
    if not recipe.cluster.health.gate:
        return GateResult(DISABLED, "health gate disabled by the recipe (cluster.health.gate: false)", url)
    if not url:
        return _fail(
            strict, SKIPPED, "health gate: no Prometheus address", url,
            "pass --prometheus URL (or INTELLECT_PROMETHEUS_URL), or --no-health-gate",
        )  # fmt: skip
    th = thresholds or load_thresholds(os.environ.get("INTELLECT_HEALTH_THRESHOLDS")).replace(
        gpus_expected=recipe.cluster.gpus_per_node or None, require_dcgm=recipe.cluster.gpus_per_node > 0
    )  # the thresholds `intellect health` reads, with the recipe's GPU count
    try:
        nodes = partition_nodes(recipe.cluster.partition)
        with PrometheusClient(url) as client:
            report = evaluate(client, th, sorted(nodes))
    except IntellectError as exc:
        return _fail(strict, SKIPPED, f"health gate: {exc.message}", url, exc.hint)
    if report.error:
        return _fail(
            strict, FAILED, f"health gate fails closed: {report.error}", url,
            "start Prometheus or fix --prometheus; --no-health-gate launches without the gate",
        )  # fmt: skip
    out = GateResult(PASSED, "", url, checked=len(nodes))
    for name, v in sorted(report.verdicts.items()):
        if v.status in (BAD, UNKNOWN):
            out.exclude.append(name)
            out.reasons[name] = f"{v.status}: {v.summary}"
    return _count(out, recipe, nodes, strict)


def _count(out: GateResult, recipe: Recipe, nodes: dict[str, Node], strict: bool) -> GateResult:
    static = {n for spec in recipe.cluster.exclude for n in expand_nodes(spec)}
    usable = [
        n for n, node in nodes.items()
        if n not in out.exclude and n not in static and not node.drained and "down" not in node.state and node.responding
    ]  # fmt: skip
    need = recipe.cluster.nodes
    if len(usable) < need:
        named = ", ".join(f"{n} ({r})" for n, r in out.reasons.items())[:300]
        return _fail(
            strict, FAILED,
            f"health gate: {len(usable)} usable node(s) left, the recipe needs {need}; excluded: {named or 'none'}",
            out.prometheus_url, "intellect health; fix or resume nodes, or lower cluster.nodes",
            base=out,
        )  # fmt: skip
    out.message = f"{len(out.exclude)} of {out.checked} node(s) excluded; {len(usable)} usable"
    return out


def _fail(
    strict: bool, status: str, message: str, url: str | None, hint: str | None, base: GateResult | None = None
) -> GateResult:
    if strict:
        raise LaunchError(message, hint=hint)
    out = base or GateResult(status, prometheus_url=url)
    out.status, out.message = status, message
    return out
