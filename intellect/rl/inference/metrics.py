"""Prometheus metrics of an inference server, on a registry of its own (several servers can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class InferenceMetrics:
    """requests, generated tokens, decode batch sizes, weight step, update seconds, sequences in flight."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "intellect_inference_requests", "HTTP generation requests", ["endpoint", "status"], registry=r
        )
        self.tokens = Counter("intellect_inference_generated_tokens", "Tokens sampled", registry=r)
        self.batch_size = Histogram(
            "intellect_inference_batch_size", "Sequences per decode step", buckets=BATCH_BUCKETS, registry=r
        )
        self.weight_step = Gauge(
            "intellect_inference_weight_step", "Trainer step of the served weights", registry=r
        )
        self.update_seconds = Histogram(
            "intellect_inference_weight_update_seconds",
            "POST /update_weights end to end (read + swap)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.apply_seconds = Histogram(
            "intellect_inference_weight_apply_seconds",
            "Reading and swapping weights in between two decode steps (and, with kv_on_update=recompute, "
            "rebuilding the KV cache of the sequences in flight)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "intellect_inference_in_flight_sequences", "Sequences decoding or queued", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
