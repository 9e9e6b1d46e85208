"""The trainer step in bf16 on float32 master weights against pure float32, on the CPU: time and peak memory.

    .venv/bin/python bench/mixed_precision.py [--steps 8] [--rounds 2] [--hidden 512] [--layers 4]
        [--batch 128] [--seq 32] [--micro-batch-tokens 0] [--threads 1]

Each configuration runs in its own subprocess (``Trainer.train_step`` on the same model shape and the same
rollouts; model.dtype float32, or bfloat16 = bf16 compute on float32 masters), alternating over ``--rounds`` so
that drifts of the machine's load hit both. A subprocess reads ``ru_maxrss`` after its imports (the baseline)
and after its last step (the peak). Prints the median step time (``step_time`` of the step record, untimed
warm-up steps excluded) and the peaks, absolute and over the baseline, and the bf16 / float32 ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
UNTIMED = 2  # first steps: allocator and thread-pool warm-up


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this process: the figures as a dict."""
    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401 (loaded lazily otherwise: baseline)

    from intellect.recipe import validate_recipe
    from intellect.rl.layout import RolloutSample, write_rollouts
    from intellect.rl.tokenizer import CharTokenizer
    from intellect.rl.trainer.metrics import TrainerMetrics
    from intellect.rl.trainer.train import Trainer

    torch.set_num_threads(args.threads)
    baseline = _rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        data = yaml.safe_load((ROOT / "recipes" / "debug-cpu.yaml").read_text())
        data["run_dir"] = tmp
        data["model"].update(dtype=args.worker, max_seq_len=max(args.seq, 16), max_new_tokens=args.seq // 2)
        heads = max(args.hidden // 64, 1)
        data["model"]["tiny"] = {"hidden_size": args.hidden, "intermediate_size": 3 * args.hidden,
                                 "num_hidden_layers": args.layers, "num_attention_heads": heads}  # fmt: skip
        steps = UNTIMED + args.steps
        data["algorithm"].update(steps=steps, batch_size=args.batch, rollouts_per_prompt=8,
                                 micro_batch_tokens=args.micro_batch_tokens)  # fmt: skip
        trainer = Trainer(validate_recipe(data), envs=lambda: [], metrics=TrainerMetrics())
        tok, rng = CharTokenizer(), random.Random(0)
        prompt, completion = args.seq // 2, args.seq - args.seq // 2
        for step in range(1, steps + 1):
            samples = [
                RolloutSample(
                    id=f"{step}-{i}", group=str(i // 8), env="bench", task_id=str(i),
                    prompt_ids=[tok.bos_token_id] + [rng.randrange(4, tok.vocab_size) for _ in range(prompt - 1)],
                    completion_ids=[rng.randrange(4, tok.vocab_size) for _ in range(completion)],
                    completion_logprobs=[-4.5 + rng.gauss(0, 0.5) for _ in range(completion)],
                    completion_mask=[1] * completion, reward=float(i % 2), advantage=1.0 if i % 2 else -1.0,
                    weight_steps=(step - 1, step - 1),
                )
                for i in range(args.batch)
            ]  # fmt: skip
            write_rollouts(tmp, step, samples)
        times = [trainer.train_step(step)["step_time"] for step in range(1, steps + 1)]
        params = sum(p.numel() for p in trainer.model.parameters())
    return {"dtype": args.worker, "times": times[UNTIMED:], "baseline_mb": baseline, "peak_mb": _rss_mb(),
            "params": params}  # fmt: skip


def spawn(dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", dtype]
    for flag in ("steps", "hidden", "layers", "batch", "seq", "micro_batch_tokens", "threads"):
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    out = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per subprocess")
    ap.add_argument("--rounds", type=int, default=2, help="subprocesses per configuration, alternating")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128, help="samples per step")
    ap.add_argument("--seq", type=int, default=32, help="tokens per sample (prompt + completion)")
    ap.add_argument("--micro-batch-tokens", type=int, default=0, help="0 = one pass over the batch")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--worker", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    runs: dict[str, list[dict[str, Any]]] = {"float32": [], "bfloat16": []}
    start = time.monotonic()
    for _ in range(args.rounds):
        for dtype in runs:
            runs[dtype].append(spawn(dtype, args))
    params = runs["float32"][0]["params"]
    print(
        f"model hidden {args.hidden} x {args.layers} layers ({params / 1e6:.1f}M parameters); batch {args.batch} x "
        f"{args.seq} tokens, micro_batch_tokens {args.micro_batch_tokens}; {args.threads} torch thread(s); "
        f"{args.rounds} x {args.steps} timed steps per configuration ({time.monotonic() - start:.0f} s)"
    )
    figures = {}
    for dtype, results in runs.items():
        median = statistics.median(t for r in results for t in r["times"])
        peak = statistics.median(r["peak_mb"] for r in results)
        base = statistics.median(r["baseline_mb"] for r in results)
        figures[dtype] = (median, peak, peak - base)
        label = "float32" if dtype == "float32" else "bf16 on fp32 masters"
        print(
            f"{label:21s} median step {median * 1e3:8.1f} ms   peak RSS {peak:7.1f} MB "
            f"(after import {base:6.1f} MB, increase {peak - base:7.1f} MB)"
        )
    (t32, p32, i32), (t16, p16, i16) = figures["float32"], figures["bfloat16"]
    print(f"bf16 / float32: step time {t16 / t32:.2f}x, peak RSS {p16 / p32:.2f}x, increase {i16 / i32:.2f}x")


if __name__ == "__main__":
    main()
