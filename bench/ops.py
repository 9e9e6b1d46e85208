"""On-call command latency on a real Slurm, and parse time of 4,096-node sinfo/squeue output.

- `intellect nodes --json` and `intellect drain`/`resume` against a loopback Slurm (munged, slurmctld and 3 slurmd
  started here; needs root and Debian's Slurm), median of 9 runs each, beside `sinfo` alone as the floor.
- Parsing a 4,096-node `sinfo -N` and a 4,096-job `squeue` output in the recorded 22.05 format (tests/fixtures/slurm),
  at 512, 1,024 and 4,096 lines to show O(nodes). Goal: ≤ 0.5 s at 4,096 nodes.
Run: .venv/bin/python bench/ops.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from intellect.slurm.nodes import parse_sinfo, parse_squeue  # noqa: E402

REPEAT = 9


def synthetic(n: int) -> tuple[str, str]:
    sinfo = []
    squeue = []
    for i in range(n):
        if i % 97 == 0:
            sinfo.append(
                f"node-{i:04d}|drained|root|2026-11-23T15:31:45|gpu:h200:8|96|2000000|"
                f"[intellect] alice 2026-11-23T15:00:00Z: Xid 79 on GPU {i % 8}"
            )
        else:
            sinfo.append(f"node-{i:04d}|allocated|Unknown|Unknown|gpu:h200:8|96|2000000|none")
        squeue.append(f"{1000 + i}|intellect3|alice|RUNNING|1-02:03:04|1|node-{i:04d}|None")
    return "\n".join(sinfo) + "\n", "\n".join(squeue) + "\n"


def parse_times() -> list[tuple[int, float, float]]:
    rows = []
    for n in (512, 1024, 4096):
        s, q = synthetic(n)
        ts = []
        tq = []
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            nodes = parse_sinfo(s)
            t1 = time.perf_counter()
            jobs = parse_squeue(q)
            t2 = time.perf_counter()
            assert len(nodes) == n and len(jobs) == n
            ts.append(t1 - t0)
            tq.append(t2 - t1)
        rows.append((n, statistics.median(ts), statistics.median(tq)))
    return rows


def timed(argv: list[str], env: dict[str, str]) -> float:
    out = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def live_latency() -> list[tuple[str, float]] | str:
    from intellect.devcluster.loopback import LoopbackCluster, missing_tools

    if os.geteuid() != 0 or missing_tools():
        return "skipped: needs root and Debian's slurmctld/slurmd/munge (scripts/debian-deps)"
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LoopbackCluster(Path(tmp) / "slurm", nodes=3)
        with cluster:
            env = {**cluster.env(), "INTELLECT_STATE_DIR": str(Path(tmp) / "state")}
            cli = [sys.executable, "-m", "intellect.cli.main"]
            rows = [
                ("sinfo -N (floor)", timed(["sinfo", "-N", "-h"], env)),
                ("intellect nodes --json", timed([*cli, "nodes", "--json"], env)),
            ]
            drains = []
            for _ in range(REPEAT):
                t0 = time.perf_counter()
                subprocess.run(
                    [*cli, "drain", "node-2", "--reason", "bench"], env=env, check=True, capture_output=True
                )
                drains.append(time.perf_counter() - t0)
                subprocess.run([*cli, "resume", "node-2"], env=env, check=True, capture_output=True)
            rows.append(("intellect drain node-2", statistics.median(drains)))
            rows.append(("python -c pass", timed([sys.executable, "-c", "pass"], env)))
    return rows


def main() -> None:
    print("parse (median of 9):")
    for n, ts, tq in parse_times():
        print(f"  {n:5d} nodes: sinfo {ts * 1e3:7.2f} ms   squeue {tq * 1e3:7.2f} ms")
    live = live_latency()
    print("live, loopback Slurm with 3 nodes (median of 9):")
    if isinstance(live, str):
        print("  " + live)
        return
    for name, secs in live:
        print(f"  {name:28s} {secs:6.3f} s")


if __name__ == "__main__":
    main()
