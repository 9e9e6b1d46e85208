"""Async (max_async_level k=1) vs synchronous (k=0) RL: wall time for the same number of trainer steps.

The real roles run as processes with inference and trainer pinned to separate cores (taskset), the orchestrator
beside inference. Wall time is measured from weights/step_0 to weights/step_N (both STABLE markers), so start-up
is excluded. The ceiling for k=1 is (t_gen + t_train) / max(t_gen, t_train): 2.0x when the two sides are balanced.
Run: .venv/bin/python bench/async_vs_sync.py [--steps 30] [--max-new-tokens 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_run(base: Path, k: int, args: argparse.Namespace) -> tuple[Path, int]:
    run = base / f"k{k}"
    (run / "logs").mkdir(parents=True)
    data = yaml.safe_load((ROOT / "recipes" / "debug-cpu.yaml").read_text())
    data["run_dir"] = str(run)
    data["model"]["max_new_tokens"] = args.max_new_tokens
    data["model"]["tiny"].update(hidden_size=args.hidden, intermediate_size=3 * args.hidden)
    data["algorithm"].update(steps=args.steps, max_async_level=k, max_off_policy_steps=max(k, 1) + 1)
    data["algorithm"]["pretrain"] = {"steps": 0}
    data["algorithm"]["batch_size"] = args.batch
    data["evals"].update(every=0, samples=8)
    port = free_port()
    data["roles"]["inference"]["port"] = port
    data["roles"]["trainer"]["metrics_port"] = free_port()
    data["roles"]["orchestrator"]["metrics_port"] = free_port()
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(data))
    return run, port


def run_once(base: Path, k: int, args: argparse.Namespace) -> dict[str, float]:
    run, port = make_run(base, k, args)
    cfg = str(run / "recipe.resolved.yaml")
    env = {
        **os.environ,
        "INFERENCE_URLS": f"http://127.0.0.1:{port}",
        "OMP_NUM_THREADS": "1",
        "INTELLECT_METRICS_ADDR": "127.0.0.1",
        "INTELLECT_METRICS_HOST": "127.0.0.1",
    }
    cores = {
        "inference": "0",
        "orchestrator": "0",
        "trainer": "1" if os.cpu_count() and os.cpu_count() > 1 else "0",
    }
    procs = {}
    for role in ("inference", "trainer", "orchestrator"):
        argv = ["taskset", "-c", cores[role], sys.executable, "-m", f"intellect.rl.{role}", "--config", cfg]
        if role == "inference":
            argv += ["--host", "127.0.0.1", "--port", str(port)]
        log = (run / "logs" / f"{role}.log").open("w")
        procs[role] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    first, last = run / "weights" / "step_0" / "STABLE", run / "weights" / f"step_{args.steps}" / "STABLE"
    t0 = t1 = 0.0
    try:
        while not t1:  # the trainer prunes old weight folders: note the times as they appear
            if not t0 and first.exists():
                t0 = time.monotonic()
            if t0 and last.exists():
                t1 = time.monotonic()
            for role, proc in procs.items():
                if proc.poll() not in (None, 0):
                    raise SystemExit(f"{role} failed; see {run}/logs/{role}.log")
            time.sleep(0.02)
        for role in ("orchestrator", "trainer"):
            if procs[role].wait(timeout=600) != 0:
                raise SystemExit(f"{role} failed; see {run}/logs/{role}.log")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
    train = [
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r.get("role") == "trainer" and "phase" not in r
    ]
    t_train = sorted(r["step_time"] for r in train)[len(train) // 2]
    return {"wall": t1 - t0, "train_step": t_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument(
        "--hidden", type=int, default=128, help="hidden size of the tiny Llama (128: 0.8M params)"
    )
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        raise SystemExit("needs taskset (util-linux)")
    with tempfile.TemporaryDirectory() as tmp:
        sync = run_once(Path(tmp), 0, args)
        asyn = run_once(Path(tmp), 1, args)
    per_sync = sync["wall"] / args.steps
    t_train = sync["train_step"]
    t_gen = max(per_sync - t_train, 1e-9)
    ceiling = (t_gen + t_train) / max(t_gen, t_train)
    print(
        f"steps {args.steps}, batch {args.batch}, max_new_tokens {args.max_new_tokens}, hidden {args.hidden}"
    )
    print(
        f"k=0 (sync):  {sync['wall']:.1f} s  ({per_sync:.3f} s/step: generate ~{t_gen:.3f} + train {t_train:.3f})"
    )
    print(f"k=1 (async): {asyn['wall']:.1f} s  ({asyn['wall'] / args.steps:.3f} s/step)")
    print(
        f"speed-up {sync['wall'] / asyn['wall']:.2f}x  (ceiling for this balance {ceiling:.2f}x; goal 1.9x)"
    )


if __name__ == "__main__":
    main()
