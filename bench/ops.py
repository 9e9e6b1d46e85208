"""On-call command latency on a real Slurm, and parse time of 4,096-node sinfo/squeue output.

- `intellect nodes --json` and `intellect drain`/`resume` on the dev cluster's login node (node1), median of 9 runs
  each, beside `sinfo` alone as the floor. The script runs itself on node1 over SSH (`--here`), so SSH is not
  timed. The cluster is the one `intellect dev-cluster up` started (INTELLECT_DEVCLUSTER_DIR picks another);
  without one, it starts a loopback Slurm (munged, slurmctld and 3 slurmd on 127.0.0.1) instead and says so.
- Parsing a 4,096-node `sinfo -N` and a 4,096-job `squeue` output in the recorded 22.05 format (tests/fixtures/slurm),
  at 512, 1,024 and 4,096 lines to show O(nodes). Goal: ≤ 0.5 s at 4,096 nodes.
Run: .venv/bin/python bench/ops.py   (as root; `sudo intellect dev-cluster up --nodes 3` first)
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


def live_rows(env: dict[str, str]) -> list[tuple[str, float]]:
    """Latencies against the Slurm that ``env`` points at; drains and resumes its second node."""
    cli = [sys.executable, "-m", "intellect.cli.main"]
    names = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N"], env=env, capture_output=True, text=True, check=True
    )
    node = sorted(set(names.stdout.split()))[1]
    rows = [
        ("sinfo -N (floor)", timed(["sinfo", "-N", "-h"], env)),
        ("intellect nodes --json", timed([*cli, "nodes", "--json"], env)),
    ]
    drains = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        subprocess.run([*cli, "drain", node, "--reason", "bench"], env=env, check=True, capture_output=True)
        drains.append(time.perf_counter() - t0)
        subprocess.run([*cli, "resume", node], env=env, check=True, capture_output=True)
    rows.append((f"intellect drain {node}", statistics.median(drains)))
    rows.append(("python -c pass", timed([sys.executable, "-c", "pass"], env)))
    return rows


def live_latency() -> tuple[str, list[tuple[str, float]] | str]:
    from intellect.devcluster.cluster import DevCluster, default_state_dir

    if os.geteuid() != 0:
        return "live", "skipped: needs root (the dev cluster or a loopback Slurm)"
    dev = DevCluster(default_state_dir())
    if dev.read_state():
        proc = dev.ssh(1, f"{sys.executable} {ROOT / 'bench' / 'ops.py'} --here", timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"bench on node1 failed: {proc.stderr.strip()}")
        rows = [(name, float(secs)) for name, secs in (ln.rsplit(" ", 1) for ln in proc.stdout.splitlines())]
        return f"dev cluster ({dev.state_dir}), on node1, 3 nspawn nodes", rows
    from intellect.devcluster.loopback import LoopbackCluster, missing_tools

    if missing_tools():
        return "live", "skipped: no dev cluster, and no Slurm for a loopback one (scripts/debian-deps)"
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LoopbackCluster(Path(tmp) / "slurm", nodes=3)
        with cluster:
            env = {**cluster.env(), "INTELLECT_STATE_DIR": str(Path(tmp) / "state")}
            return "loopback Slurm (no dev cluster up), 3 slurmd", live_rows(env)


def main() -> None:
    if sys.argv[1:] == ["--here"]:  # on a dev-cluster node: the node's own Slurm, one "name seconds" per line
        with tempfile.TemporaryDirectory() as tmp:
            for name, secs in live_rows({**os.environ, "INTELLECT_STATE_DIR": tmp}):
                print(f"{name} {secs:.4f}")
        return
    print("parse (median of 9):")
    for n, ts, tq in parse_times():
        print(f"  {n:5d} nodes: sinfo {ts * 1e3:7.2f} ms   squeue {tq * 1e3:7.2f} ms")
    where, live = live_latency()
    print(f"live, {where} (median of 9):")
    if isinstance(live, str):
        print("  " + live)
        return
    for name, secs in live:
        print(f"  {name:28s} {secs:6.3f} s")


if __name__ == "__main__":
    main()
