"""Dev cluster provisioning: `dev-cluster up` cold and warm for 2, 4 and 8 nodes, the rerun, a 64-node projection.

    sudo .venv/bin/python bench/provision.py [--sizes 2,4,8] [--cold-sizes 4] [--state-dir DIR]

cold: an empty image cache (debootstrap, the local apt repository, the node image) + boot + provision.
warm: the cached image and repository, fresh nodes (boot + provision). rerun: `provision` on the running
cluster, which must report changed=0 (pure Ansible overhead). Uses its own bridge and state folder and tears
down after each size. Goals (issue 4): 4 nodes warm <= 60 s, cold <= 3 min; 64-node projection <= 30 min.

The projection fits t(n) = a + b*n on the warm runs. On one 2-core host every node's tasks share the same two
cores (the nodes and the Ansible controller), so b is mostly CPU contention that real nodes do not have. On a
real cluster each node installs its own packages in parallel and only the controller's per-host work grows
with n: we take the controller CPU seconds per host (measured from this run's rerun, where nodes do nothing)
and divide by the controller's cores (forks >= nodes, pipelining and ControlPersist keep SSH cheap).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from intellect.cli.provision import provision
from intellect.devcluster import image
from intellect.devcluster.cluster import DevCluster
from intellect.devcluster.nodes import Net


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _provision(cluster: DevCluster) -> tuple[float, float, dict[str, int]]:
    cpu0, t0 = _children_cpu() + time.process_time(), time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        result = provision(cluster.inventory_dir, as_json=True)
    wall = time.monotonic() - t0
    cpu = _children_cpu() + time.process_time() - cpu0
    return wall, cpu, {h: r.changed for h, r in result.recap.items()}


def run_size(n: int, cold: bool, state_root: Path) -> dict[str, float]:
    cluster = DevCluster(state_root / f"n{n}", Net("itl-bench0", "10.215.0"))
    quiet = lambda _m: None  # noqa: E731
    cluster.teardown(quiet)
    cache = None
    if cold:
        cache = Path(tempfile.mkdtemp(prefix="intellect-bench-cache-"))
        os.environ["INTELLECT_DEVCLUSTER_CACHE"] = str(cache)
    try:
        t0 = time.monotonic()
        cluster.boot(n, quiet)
        boot = time.monotonic() - t0
        first, _, _ = _provision(cluster)
        rerun, rerun_cpu, changed = _provision(cluster)
        assert all(c == 0 for c in changed.values()), f"rerun changed something: {changed}"
        t1 = time.monotonic()
        cluster.teardown(quiet)
        down = time.monotonic() - t1
    finally:
        cluster.teardown(quiet)
        if cache is not None:
            os.environ.pop("INTELLECT_DEVCLUSTER_CACHE", None)
            shutil.rmtree(cache, ignore_errors=True)
    return {"boot": boot, "up": boot + first, "rerun": rerun, "rerun_cpu": rerun_cpu, "down": down}


def project(warm: dict[int, dict[str, float]], cores: int) -> None:
    sizes = sorted(warm)
    xs, ys = sizes, [warm[n]["up"] for n in sizes]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs) or 1.0
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    a = mean_y - b * mean_x
    largest = sizes[-1]
    cpu_per_host = warm[largest]["rerun_cpu"] / largest
    node_work = warm[sizes[0]]["up"]  # what one node does alone, bounded by the controller's own path
    real = node_work + 64 * cpu_per_host / cores
    print(f"\nfit on this host: up(n) = {a:.0f} s + {b:.1f} s/node -> 64 nodes here: {a + 64 * b:.0f} s")
    print(
        f"controller CPU per host (rerun): {cpu_per_host:.1f} s; on a real cluster with a {cores}-core controller: "
        f"{node_work:.0f} s (slowest node's own work) + 64 x {cpu_per_host:.1f} s / {cores} = {real / 60:.1f} min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="2,4,8")
    parser.add_argument("--cold-sizes", default="2,4,8")
    parser.add_argument("--controller-cores", type=int, default=16)
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/intellect/bench"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/provision.py needs root (it boots systemd-nspawn nodes)")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    cold_sizes = [int(s) for s in args.cold_sizes.split(",") if s]
    image.ensure_node_image(image.ensure_base_image())
    print(f"{'nodes':>5} {'mode':>5} {'boot s':>7} {'up s':>7} {'rerun s':>8} {'down s':>7}")
    warm: dict[int, dict[str, float]] = {}
    for n in sizes:
        for mode in ("cold", "warm") if n in cold_sizes else ("warm",):
            r = run_size(n, mode == "cold", args.state_dir)
            if mode == "warm":
                warm[n] = r
            print(
                f"{n:>5} {mode:>5} {r['boot']:>7.1f} {r['up']:>7.1f} {r['rerun']:>8.1f} {r['down']:>7.1f}",
                flush=True,
            )
    project(warm, args.controller_cores)


if __name__ == "__main__":
    main()
