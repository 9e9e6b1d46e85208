"""The asynchronous RL loop: three roles (inference, orchestrator, trainer), each a process.

Contracts between the roles (all three take ``--config RUN_DIR/recipe.resolved.yaml``, whose ``run_dir`` is
absolute; they read it with ``intellect.recipe.load_recipe``):

Run directory (shared storage)
    recipe.resolved.yaml            the recipe every role reads
    logs/<role>-<rank>.log          written by the launcher (stdout/stderr of each role process)
    metrics.jsonl                   one JSON object per line, appended by every role: {"role", "step", ...}
    weights/step_N/                 model.safetensors, then STABLE last (trainer; N=0 after warm-up)
    rollouts/step_N/                rollouts.jsonl, then STABLE last (orchestrator; N>=1, the batch of step N)
    checkpoints/step_N/             trainer state to resume from (model, optimizer, step, data position), STABLE
    summary.json                    written by the orchestrator at the end (reward/accuracy before -> after)
    A step folder without STABLE does not exist for readers.

Step numbering and the async bound
    Trainer step N reads rollouts/step_N and writes weights/step_N. Rollouts of batch N must come from weights
    no older than N-1-max_async_level (k=0 is synchronous: batch N uses weights N-1). A rollout is tagged with
    the weight steps that produced it ([first, last]: an in-flight update can land mid-generation). A rollout
    whose first weight step is older than N-1-max_off_policy_steps is dropped and its task rescheduled.

One rollout sample (a line of rollouts.jsonl)
    {"id": str (unique in the run), "group": str, "env": str, "task_id": str,
     "prompt_ids": [int], "completion_ids": [int], "completion_logprobs": [float],
     "completion_mask": [0|1] (1 = sampled by the policy; 0 = tool output or masked sample),
     "reward": float, "advantage": float, "weight_steps": [int, int]}

Inference HTTP API (the embedded server and vLLM alike; the orchestrator cannot tell them apart)
    POST /v1/completions        {"prompt": str | [int], "max_tokens", "temperature", "n", "logprobs": 1,
                                 "stop": [str] | null, "seed": int | null, "return_token_ids": true}
                                -> {"choices": [{"index", "text", "finish_reason",
                                     "token_ids": [int], "prompt_token_ids": [int],
                                     "logprobs": {"tokens": [str], "token_logprobs": [float]}}], "usage": {...}}
    POST /v1/chat/completions   OpenAI chat; same extra fields
    POST /update_weights        {"path": "RUN_DIR/weights/step_N", "step": N} -> {"step": N} once applied,
                                between decode steps, with no request in flight dropped
    GET  /health                {"status": "ok", "weight_step": N}
    GET  /metrics               Prometheus text
    Sampling logprobs are at the request's temperature: log_softmax(logits / T).
    INFERENCE_URLS (comma-separated base URLs such as http://node-3:8000) tells the orchestrator where they are.
"""
