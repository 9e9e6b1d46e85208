"""Continuous batching pays: 64 concurrent requests vs the same 64 one at a time (tokens/s, ratio; goal ≥ 10x).

    .venv/bin/python bench/inference_batching.py [--requests 64] [--tokens 64] [--threads 1] [--size debug|9.5m]

Starts the real embedded server (``python -m intellect.rl.inference``) as a subprocess on 127.0.0.1, so the
client does not share a GIL with the decode loop. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "debug": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4},
    "9.5m": {"hidden_size": 384, "intermediate_size": 1152, "num_hidden_layers": 5, "num_attention_heads": 6},
}


def write_recipe(run_dir: Path, size: str, max_seq_len: int, max_batch: int = 128) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "debug-cpu.yaml").read_text())
    data["run_dir"] = str(run_dir)
    data["roles"]["inference"]["max_batch"] = max_batch
    data["model"].update(tiny=SIZES[size], max_seq_len=max_seq_len, max_new_tokens=min(64, max_seq_len - 8))
    path = run_dir / "recipe.resolved.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def spawn_server(recipe: Path, threads: int = 1) -> Iterator[str]:
    """The embedded server as a child process; yields its URL once /health answers; stops it by PID."""
    port = free_port()
    env = {**os.environ, "INTELLECT_INFERENCE_THREADS": str(threads)}
    argv = [sys.executable, "-m", "intellect.rl.inference", "--config", str(recipe), "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the inference server did not start (exit {proc.poll()})")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def body(i: int, tokens: int) -> dict[str, Any]:
    return {"prompt": f"{i}+{i}=", "max_tokens": tokens, "temperature": 1.0, "seed": i, "ignore_eos": True}


async def concurrent(url: str, n: int, tokens: int) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        resps = await asyncio.gather(*(c.post("/v1/completions", json=body(i, tokens)) for i in range(n)))
    return sum(len(r.json()["choices"][0]["token_ids"]) for r in resps)


def sequential(url: str, n: int, tokens: int) -> int:
    with httpx.Client(base_url=url, timeout=600) as c:
        return sum(
            len(c.post("/v1/completions", json=body(i, tokens)).json()["choices"][0]["token_ids"])
            for i in range(n)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", choices=sorted(SIZES), default="debug")
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        spawn_server(write_recipe(Path(tmp), args.size, args.tokens + 16), args.threads) as url,
    ):
        asyncio.run(concurrent(url, 8, 8))  # warm-up
        before = _batch_sums(httpx.get(f"{url}/metrics").text)
        t0 = time.perf_counter()
        batched = asyncio.run(concurrent(url, args.requests, args.tokens))
        t1 = time.perf_counter()
        after = _batch_sums(httpx.get(f"{url}/metrics").text)
        single = sequential(url, args.requests, args.tokens)
        t2 = time.perf_counter()
    rate_b, rate_s = batched / (t1 - t0), single / (t2 - t1)
    mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
    print(f"model={args.size} requests={args.requests} tokens/request={args.tokens} threads={args.threads}")
    print(f"one at a time : {rate_s:9.0f} tokens/s  ({t2 - t1:.2f} s)")
    print(f"concurrent    : {rate_b:9.0f} tokens/s  ({t1 - t0:.2f} s)")
    print(f"ratio         : {rate_b / rate_s:9.1f}x  (goal >= 10x)")
    print(f"mean decode batch while concurrent: {mean_batch:.1f} sequences")


def _batch_sums(metrics: str) -> tuple[float, float]:
    """(sum, count) of the decode batch-size histogram."""
    values = {}
    for line in metrics.splitlines():
        if line.startswith("intellect_inference_batch_size_"):
            name, value = line.split(" ")
            values[name] = float(value)
    return values["intellect_inference_batch_size_sum"], values["intellect_inference_batch_size_count"]


if __name__ == "__main__":
    main()
