"""Weight hand-off: write + POST /update_weights (read + swap, end to end) vs the floor of write + read.

    .venv/bin/python bench/weight_handoff.py [--reps 10] [--dir /dev/shm]

For the debug-cpu model (0.8M) and a 9.5M variant: the trainer side writes ``weights/step_N`` with
``save_weights`` (safetensors, then STABLE), the client POSTs ``/update_weights`` to the real embedded server
(a subprocess), which reads the file and swaps the weights in between two decode steps. The floor is
``save_weights`` + ``load_weights`` of the same file in one process. Prints medians and minima (floor and hand-off interleaved) and the ratio (goal ≤ 1.5x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from inference_batching import spawn_server, write_recipe

from intellect.recipe import load_recipe
from intellect.rl import layout
from intellect.rl.model import build_model, load_weights, save_weights


def measure(size: str, reps: int, base: str) -> tuple[float, list[float], list[float]]:
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        run = Path(tmp)
        recipe_path = write_recipe(run, size, 64)
        recipe = load_recipe(recipe_path)
        model, _ = build_model(recipe.model)
        state = model.state_dict()
        megabytes = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
        floor, handoff = [], []
        with spawn_server(recipe_path) as url, httpx.Client(base_url=url, timeout=120) as client:
            for i in range(1, reps + 1):  # interleaved, so that load from other processes hits both alike
                t0 = time.perf_counter()
                save_weights(state, run / "floor" / f"step_{i}")
                load_weights(run / "floor" / f"step_{i}")
                t1 = time.perf_counter()
                path = save_weights(state, layout.weights_dir(run, i))
                resp = client.post("/update_weights", json={"path": str(path), "step": i})
                t2 = time.perf_counter()
                assert resp.status_code == 200, resp.text
                floor.append(t1 - t0)
                handoff.append(t2 - t1)
        return megabytes, floor, handoff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"weights written under {args.dir or tempfile.gettempdir()}; {args.reps} interleaved repetitions")
    for size in ("debug", "9.5m"):
        mb, floor, handoff = measure(size, args.reps, args.dir)
        for label, pick in (("median", statistics.median), ("min", min)):
            f, h = pick(floor), pick(handoff)
            print(
                f"{size:6s} {mb:5.1f} MB {label:6s}  floor write+read {f * 1e3:7.1f} ms   "
                f"write+/update_weights {h * 1e3:7.1f} ms   ratio {h / f:4.2f}x (goal <= 1.5x)"
            )


if __name__ == "__main__":
    main()
