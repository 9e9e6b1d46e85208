"""What the trainer reports: Prometheus gauges on /metrics and one JSON line per step in metrics.jsonl."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)


class TrainerMetrics:
    """Prometheus metrics of one trainer rank, in their own registry (several trainers may share a process)."""

    def __init__(self, rank: int = 0) -> None:
        self.registry = CollectorRegistry()
        labels = {"rank": str(rank)}
        r = self.registry
        self.step = Gauge("intellect_trainer_step", "Last completed trainer step.", registry=r)
        self.loss = Gauge("intellect_trainer_loss", "Loss of the last step.", registry=r)
        self.masked_frac = Gauge(
            "intellect_trainer_masked_frac",
            "Share of loss tokens masked by the importance ratio.",
            registry=r,
        )
        self.masked_seq_frac = Gauge(
            "intellect_trainer_masked_seq_frac",
            "Share of the last batch's samples dropped whole by the sequence-level importance mask.",
            registry=r,
        )
        self.grad_norm = Gauge("intellect_trainer_grad_norm", "Gradient norm before clipping.", registry=r)
        self.lr = Gauge("intellect_trainer_lr", "Learning rate of the last step.", registry=r)
        self.reward_mean = Gauge(
            "intellect_trainer_reward_mean", "Mean reward of the last batch.", registry=r
        )
        self.step_seconds = Gauge(
            "intellect_trainer_step_seconds", "Compute time of the last step.", registry=r
        )
        self.wait_seconds = Gauge(
            "intellect_trainer_wait_seconds", "Time the last step waited for its rollouts.", registry=r
        )
        self.rollout_age_seconds = Gauge(
            "intellect_trainer_rollout_age_seconds",
            "How long the last batch had been complete when the trainer read it: high when the trainer is the "
            "bottleneck; near 0 while it waits when inference is.",
            registry=r,
        )
        self.tokens = Counter("intellect_trainer_tokens", "Loss tokens trained on.", registry=r)
        self.weight_write_seconds = Histogram(
            "intellect_trainer_weight_write_seconds",
            "Time to gather and write weights/step_N.",
            buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
            registry=r,
        )
        self.info = Gauge(
            "intellect_trainer_info", "Constant 1, labelled with the rank.", ["rank"], registry=r
        )
        self.info.labels(**labels).set(1)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("trainer metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def observe_step(self, record: dict[str, Any]) -> None:
        self.step.set(record["step"])
        self.loss.set(record["loss"])
        self.masked_frac.set(record["masked_frac"])
        self.masked_seq_frac.set(record["masked_seq_frac"])
        self.grad_norm.set(record["grad_norm"])
        self.lr.set(record["lr"])
        self.reward_mean.set(record["reward_mean"])
        self.step_seconds.set(record["step_time"])
        self.wait_seconds.set(record["wait_time"])
        self.rollout_age_seconds.set(record.get("rollout_age", 0.0))
        self.tokens.inc(record["tokens"])


def describe(record: dict[str, Any], total: int) -> str:
    """The readable one-line summary of a step, for stdout (the KL and the masked truncated samples when on)."""
    kl = f" kl {record['kl']:.5f}" if record.get("kl") is not None else ""
    cut = f" truncated-masked {record['truncated_masked']}" if record.get("truncated_masked") else ""
    return (
        f"step {record['step']}/{total} loss {record['loss']:+.4f} reward {record['reward_mean']:.3f} "
        f"masked {100 * record['masked_frac']:.2f}% (low {100 * record['masked_low_frac']:.2f}%, "
        f"high {100 * record['masked_high_frac']:.2f}%) seq-masked {100 * record['masked_seq_frac']:.2f}%"
        f"{kl}{cut} grad {record['grad_norm']:.3f} lr {record['lr']:.3g} "
        f"tokens {record['tokens']} wait {record['wait_time']:.2f}s step {record['step_time']:.2f}s"
    )
