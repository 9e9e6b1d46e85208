"""How much one core slows down when the other core works too: the floor under ``async_vs_sync.py``'s speed-up.

At k=0 the trainer and the inference server take turns, so one core works while the other idles; at k=1 both
work at once. If a core runs slower while its neighbour is busy (a shared L3 cache and memory bus, a boost clock
that drops when more cores are active, a hypervisor that places both vCPUs on one physical core), the k=1
speed-up is capped below the 2.0x of a perfectly balanced pair, whatever the RL code does.

This times a fixed workload shaped like the debug-cpu trainer step (single-threaded torch: a forward and backward
of a 2-layer MLP at hidden 128 on 128 x 32 tokens) pinned to core 1, alone and then with a second copy pinned to
core 0, in alternating rounds so that drifts in the machine's load hit both. It prints the slowdown; the k=1
ceiling on this machine is then about 2 / slowdown.

Run: .venv/bin/python bench/core_contention.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

WORKER = r"""
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
import torch
torch.set_num_threads(1)
torch.manual_seed(0)
h = 128
x = torch.randn(128 * 32, h)
net = torch.nn.Sequential(torch.nn.Linear(h, 3 * h), torch.nn.SiLU(), torch.nn.Linear(3 * h, h),
                          torch.nn.Linear(h, 3 * h), torch.nn.SiLU(), torch.nn.Linear(3 * h, h))
def step():
    net.zero_grad()
    net(x).square().mean().backward()
for _ in range(20):
    step()
print("ready", flush=True)
sys.stdin.readline()
n, end = 0, time.perf_counter() + float(sys.argv[2])
start = time.perf_counter()
while time.perf_counter() < end:
    step()
    n += 1
print(n / (time.perf_counter() - start), flush=True)
"""


def run(cores: list[int], seconds: float) -> float:
    """Steps per second of the worker on the first core (all workers start together)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(c), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for c in cores
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    rates = [float(p.communicate()[0].strip()) for p in procs]
    return rates[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 cores", file=sys.stderr)
        return 2
    alone, shared = [], []
    for i in range(args.rounds):
        a = run([1], args.seconds)
        s = run([1, 0], args.seconds)
        alone.append(a)
        shared.append(s)
        print(
            f"round {i + 1}: alone {a:.1f} steps/s, beside a busy core {s:.1f} steps/s ({a / s:.3f}x slower)"
        )
        time.sleep(0.2)
    slow = statistics.median(alone) / statistics.median(shared)
    print(
        f"median: alone {statistics.median(alone):.1f}, beside a busy core {statistics.median(shared):.1f} steps/s"
    )
    print(f"slowdown with both cores busy: {slow:.3f}x; k=1 ceiling for a balanced pair: {2 / slow:.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
