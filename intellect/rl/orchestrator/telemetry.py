"""Step records (metrics.jsonl), Prometheus gauges on ``roles.orchestrator.metrics_port`` and the progress
line printed per step."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from intellect.rl.layout import RolloutSample

log = logging.getLogger(__name__)


@dataclass
class Counts:
    """Cumulative counters of the orchestrator (a step record holds their change since the last one).

    ``dropped_stale`` counts groups beyond the async bound (``bound.Verdict.BEYOND_ASYNC``),
    ``dropped_off_policy`` groups spanning more than max_off_policy_steps updates (``Verdict.OFF_POLICY``).
    """

    dropped_stale: int = 0
    dropped_off_policy: int = 0
    dropped_zero_adv: int = 0
    failed: int = 0
    failed_groups: int = 0
    groups_started: int = 0
    tokens: int = 0

    def minus(self, other: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(self.__dict__.values(), other.__dict__.values(), strict=True)))

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, int]) -> Counts:
        """Counters saved by ``to_json`` (ones a state lacks start at 0; unknown ones are ignored)."""
        return cls(**{k: int(data.get(k, 0)) for k in cls.__dataclass_fields__})


def step_record(
    step: int,
    samples: Sequence[RolloutSample],
    rewards: Sequence[float],
    solve_rates: Sequence[float],
    delta: Counts,
    seconds: float,
    pools: dict[str, int],
) -> dict[str, Any]:
    """The metrics.jsonl line of batch ``step`` (pure); ``rewards`` are those of the samples not failed."""
    rewards = list(rewards) or [0.0]
    lags = [step - 1 - s.weight_steps[0] for s in samples] or [0]
    return {
        "role": "orchestrator",
        "kind": "step",
        "step": step,
        "samples": len(samples),
        "reward_mean": sum(rewards) / len(rewards),
        "solve_rate": sum(solve_rates) / len(solve_rates) if solve_rates else 0.0,
        "off_policy_lag_mean": sum(lags) / len(lags),
        "off_policy_lag_max": max(lags),
        "weight_steps": [
            min(s.weight_steps[0] for s in samples),
            max(s.weight_steps[1] for s in samples),
        ]
        if samples
        else None,
        "tokens_per_s": delta.tokens / seconds if seconds > 0 else 0.0,
        "step_seconds": round(seconds, 4),
        "dropped_stale": delta.dropped_stale,
        "dropped_off_policy": delta.dropped_off_policy,
        "dropped_zero_adv": delta.dropped_zero_adv,
        "truncated": sum(s.truncated for s in samples),
        "failed": delta.failed,
        "failed_groups": delta.failed_groups,
        "groups_started": delta.groups_started,
        "pools": pools,
    }


def progress_line(record: dict[str, Any], steps: int) -> str:
    line = (
        f"step {record['step']}/{steps}  reward {record['reward_mean']:.3f}  solve {record['solve_rate']:.2f}  "
        f"lag {record['off_policy_lag_mean']:.2f}/{record['off_policy_lag_max']}  "
        f"tok/s {record['tokens_per_s']:.0f}  dropped stale {record['dropped_stale']} "
        f"off-policy {record['dropped_off_policy']} zero-adv {record['dropped_zero_adv']}  "
        f"failed {record['failed']}"
    )
    if "eval_accuracy" in record:
        line += f"  eval {record['eval_accuracy']:.3f}"
    return line


class Telemetry:
    """Prometheus gauges on their own registry, served over HTTP while the orchestrator runs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, p = self.registry, "intellect_orchestrator_"
        self.step = Gauge(p + "step", "Last rollout batch handed to the trainer.", registry=r)
        self.reward = Gauge(p + "reward_mean", "Mean reward of the last batch.", registry=r)
        self.solve = Gauge(p + "solve_rate", "Mean solve rate of the last batch's groups.", registry=r)
        self.lag = Gauge(p + "off_policy_lag", "Off-policy lag of the last batch.", ["stat"], registry=r)
        self.tps = Gauge(p + "tokens_per_second", "Sampled completion tokens per second.", registry=r)
        self.inflight = Gauge(p + "groups_in_flight", "Rollout groups being generated.", registry=r)
        self.pool = Gauge(p + "pool_tasks", "Tasks seen per difficulty pool.", ["pool"], registry=r)
        self.eval = Gauge(
            p + "eval_accuracy",
            "Headline accuracy of the last online eval (greedy when asked, else avg@k).",
            registry=r,
        )
        self.eval_k = Gauge(
            p + "eval_at_k", "avg@k and pass@k of the last online eval.", ["stat"], registry=r
        )
        self.dropped = Counter(p + "dropped_groups", "Groups dropped.", ["reason"], registry=r)
        self.failed = Counter(p + "failed_samples", "Samples failed (inference or rubric).", registry=r)
        self._server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics; return the bound port (``port`` 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def observe(self, record: dict[str, Any], inflight: int) -> None:
        self.step.set(record["step"])
        self.reward.set(record["reward_mean"])
        self.solve.set(record["solve_rate"])
        self.lag.labels("mean").set(record["off_policy_lag_mean"])
        self.lag.labels("max").set(record["off_policy_lag_max"])
        self.tps.set(record["tokens_per_s"])
        self.inflight.set(inflight)
        for pool, n in record["pools"].items():
            self.pool.labels(pool).set(n)
        self.dropped.labels("stale").inc(record["dropped_stale"])
        self.dropped.labels("off_policy").inc(record["dropped_off_policy"])
        self.dropped.labels("zero_adv").inc(record["dropped_zero_adv"])
        self.failed.inc(record["failed"])

    def observe_eval(self, record: dict[str, Any]) -> None:
        self.eval.set(record["eval_accuracy"])
        self.eval_k.labels("avg").set(record["eval_avg_at_k"])
        self.eval_k.labels("pass").set(record["eval_pass_at_k"])
