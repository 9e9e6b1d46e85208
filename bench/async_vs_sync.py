"""Async (max_async_level k=1) vs synchronous (k=0) RL: wall time for the same number of trainer steps.

The real roles run as processes pinned with taskset: inference and the orchestrator on core 0, the trainer on
core 1 (``--orchestrator-core`` moves the orchestrator: 1, or ``any`` for the scheduler to place). Timing runs
from weights/step_SKIP to weights/step_N (their STABLE markers): start-up (the roles still importing, the eval
before training, the first batches) is left out of both modes. The ceiling for k=1 is
(t_gen + t_train) / max(t_gen, t_train): 2.0x when the two sides are balanced.

Defaults, chosen so that generation and training take about as long per step, each on its core: the debug-cpu
model (0.8M parameters), batch 128 (16 prompts x 8), up to 24 new tokens, after a 30-step supervised warm-up that
is not timed. Measured on the 2-core development machine (2026-12-01), CPU seconds per step at k=1: inference
0.085-0.105 and orchestrator 0.03 on core 0, trainer 0.16-0.17 on core 1, so k=1 runs at the trainer's pace.
The script prints these figures for each run, so the balance can be checked. The warm-up matters: a cold model
scores 0 on nearly every sample, so most groups are dropped for zero advantage, and the two modes end up
generating different numbers of groups.
Warmed up, about 16.2 groups are generated per 16 kept. The orchestrator sits on the inference core
because the trainer's core has no CPU to spare. ``--kv-on-update recompute`` runs the server in its former mode
(rebuild the KV cache of the sequences in flight at each weight update) for comparison.

At k=0 the trainer notices each batch 20-35 ms late: it polls with a 1 ms -> 50 ms backoff. The script prints
this delay and the speed-up without it, because the delay is part of what k=1 hides.

Run: .venv/bin/python bench/async_vs_sync.py [--steps 24] [--repeat 2] [--hidden 128] [--max-new-tokens 24]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from intellect.rl import layout

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_run(base: Path, name: str, k: int, args: argparse.Namespace) -> tuple[Path, int]:
    run = base / name
    (run / "logs").mkdir(parents=True)
    data = yaml.safe_load((ROOT / "recipes" / "debug-cpu.yaml").read_text())
    data["run_dir"] = str(run)
    data["model"]["max_new_tokens"] = args.max_new_tokens
    data["model"]["tiny"].update(hidden_size=args.hidden, intermediate_size=3 * args.hidden)
    data["algorithm"].update(steps=args.steps, max_async_level=k, max_off_policy_steps=max(k, 1) + 1)
    data["algorithm"]["pretrain"] = {"steps": args.pretrain, "learning_rate": 3e-3, "batch_size": 64}
    data["algorithm"]["batch_size"] = args.batch
    data["evals"].update(every=0, samples=8)
    data["checkpoints"] = {"every": args.steps, "keep": 1}
    port = free_port()
    data["roles"]["inference"]["port"] = port
    data["roles"]["trainer"]["metrics_port"] = free_port()
    data["roles"]["orchestrator"]["metrics_port"] = free_port()
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(data))
    return run, port


def start_roles(run: Path, port: int, args: argparse.Namespace) -> dict[str, subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "INFERENCE_URLS": f"http://127.0.0.1:{port}",
        "OMP_NUM_THREADS": "1",
        "INTELLECT_METRICS_ADDR": "127.0.0.1",
        "INTELLECT_METRICS_HOST": "127.0.0.1",
        "INTELLECT_INFERENCE_KV_ON_UPDATE": args.kv_on_update,
    }
    two = (os.cpu_count() or 1) > 1
    cores = {"inference": "0", "trainer": "1" if two else "0", "orchestrator": args.orchestrator_core}
    procs = {}
    for role in ("inference", "trainer", "orchestrator"):
        argv = [sys.executable, "-m", f"intellect.rl.{role}", "--config", str(run / "recipe.resolved.yaml")]
        if role == "inference":
            argv += ["--host", "127.0.0.1", "--port", str(port)]
        if cores[role] != "any":
            argv = ["taskset", "-c", cores[role], *argv]
        with (run / "logs" / f"{role}.log").open("w") as log:
            procs[role] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return procs


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (taskset execs the role, so the pid is the role's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch(
    run: Path, procs: dict[str, subprocess.Popen[bytes]], args: argparse.Namespace
) -> tuple[float, dict[str, float]]:
    """Seconds from weights/step_SKIP to weights/step_N (the trainer prunes old folders: note them as they come),
    and the CPU seconds each role used in that window."""
    first = layout.weights_dir(run, args.skip) / layout.STABLE
    last = layout.weights_dir(run, args.steps) / layout.STABLE
    t0 = t1 = 0.0
    cpu: dict[str, float] = {}
    while not t1:
        if not t0 and first.exists():
            t0 = time.monotonic()
            cpu = {role: -cpu_seconds(p.pid) for role, p in procs.items()}
        if t0 and last.exists():
            t1 = time.monotonic()
            cpu = {role: cpu[role] + cpu_seconds(p.pid) for role, p in procs.items()}
        for role, proc in procs.items():
            if proc.poll() not in (None, 0):
                raise SystemExit(f"{role} failed; see {run}/logs/{role}.log")
        time.sleep(0.01)
    for role in ("orchestrator", "trainer"):
        if procs[role].wait(timeout=600) != 0:
            raise SystemExit(f"{role} failed; see {run}/logs/{role}.log")
    return t1 - t0, cpu


def run_once(base: Path, name: str, k: int, args: argparse.Namespace) -> dict[str, Any]:
    run, port = make_run(base, name, k, args)
    procs = start_roles(run, port, args)
    try:
        wall, cpu = watch(run, procs, args)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
    records = layout.read_jsonl(layout.metrics_path(run))
    timed = range(args.skip + 1, args.steps + 1)
    train = [r for r in records if r.get("role") == "trainer" and "phase" not in r and r["step"] in timed]
    orch = [r for r in records if r.get("kind") == "step"]
    n = args.steps - args.skip
    return {
        "wall": wall,
        "cpu": {role: seconds / n for role, seconds in cpu.items()},
        "train_step": statistics.median(r["step_time"] for r in train),
        "wait": statistics.mean(r["wait_time"] for r in train),
        "age": statistics.mean(r["rollout_age"] for r in train),
        "groups": sum(r["groups_started"] for r in orch) / max(len(orch), 1),  # all steps: groups start early
    }


def report(args: argparse.Namespace, sync: list[dict[str, Any]], asyn: list[dict[str, Any]]) -> None:
    n = args.steps - args.skip
    print(
        f"steps {args.skip}..{args.steps} timed, batch {args.batch}, max_new_tokens {args.max_new_tokens}, "
        f"hidden {args.hidden}, pretrain {args.pretrain}, orchestrator core {args.orchestrator_core}, "
        f"kv_on_update {args.kv_on_update}"
    )
    for i, (s, a) in enumerate(zip(sync, asyn, strict=True)):
        per_sync, t_train = s["wall"] / n, s["train_step"]
        t_gen = max(per_sync - t_train, 1e-9)
        ceiling = (t_gen + t_train) / max(t_gen, t_train)
        print(
            f"[{i}] k=0: {s['wall']:.1f} s ({per_sync:.3f} s/step: generate ~{t_gen:.3f} + train {t_train:.3f}; "
            f"{s['groups']:.1f} groups/step)   k=1: {a['wall']:.1f} s ({a['wall'] / n:.3f} s/step; train "
            f"{a['train_step']:.3f}; {a['groups']:.1f} groups/step)   speed-up {s['wall'] / a['wall']:.2f}x "
            f"(ceiling {ceiling:.2f}x)"
        )
        print(
            f"    k=0: the trainer saw each batch {s['age'] * 1000:.0f} ms after it was complete (rollout polls). "
            f"k=1: the trainer waited {a['wait'] * 1000:.0f} ms per step for rollouts; without the k=0 poll delay "
            f"the speed-up would be {(s['wall'] - n * s['age']) / a['wall']:.2f}x"
        )
        for mode, r in (("k=0", s), ("k=1", a)):
            print(
                f"    {mode} CPU s/step: " + ", ".join(f"{role} {sec:.3f}" for role, sec in r["cpu"].items())
            )
    ratios = [s["wall"] / a["wall"] for s, a in zip(sync, asyn, strict=True)]
    print(f"speed-up median {statistics.median(ratios):.2f}x over {len(ratios)} pair(s) (goal 1.9x)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--skip", type=int, default=2, help="timing starts at weights/step_SKIP")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny Llama (128: 0.8M)")
    parser.add_argument("--pretrain", type=int, default=30, help="supervised warm-up steps (not timed)")
    parser.add_argument("--orchestrator-core", default="0", help="0, 1 or any (left to the scheduler)")
    parser.add_argument("--kv-on-update", choices=("keep", "recompute"), default="keep")
    parser.add_argument("--repeat", type=int, default=1, help="sync/async pairs, interleaved")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders under this folder")
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        raise SystemExit("needs taskset (util-linux)")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    sync, asyn = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for i in range(args.repeat):
            sync.append(run_once(base, f"k0-{i}", 0, args))
            asyn.append(run_once(base, f"k1-{i}", 1, args))
    report(args, sync, asyn)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
