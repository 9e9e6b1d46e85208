"""The orchestrator role: continuous batching of rollout groups against the inference servers, the async-k
bound, online difficulty pools, online evals, and the rollout batches it hands to the trainer.

``python -m intellect.rl.orchestrator --config RUN_DIR/recipe.resolved.yaml`` with ``INFERENCE_URLS`` set.

Modules, by concern:
    bound       pure functions of the async and off-policy bounds (which weights a batch may come from, how
                many updates one rollout may span)
    pools       online difficulty pools (easy / normal / hard by solve rate) and the task sampler
    state       the orchestrator's state saved with every batch (pools, counters, sampler) and restored on resume
    planner     which batch each rollout group is generated for; when a batch is complete
    client      the HTTP client of the inference servers (retries, rerouting, least in-flight, weight pushes)
    rollout     one group: requests, turns, scores, advantages -> contract samples
    evals       held-out evals: avg@k and pass@k at the rollouts' sampling settings, optionally greedy
    (the run directory itself: ``intellect.rl.layout``)
    telemetry   Prometheus gauges and the per-step progress line
    loop        the Orchestrator: supervised tasks and the main loop
    fake        a scripted inference server (httpx.MockTransport) for tests and benchmarks

Importing this package pulls neither torch nor transformers.
"""

from __future__ import annotations

__all__: list[str] = []
