"""CLI start-up and dry-run launch times, as ratios to `python -c pass` measured in the same run.

Goals (issue 2): `intellect --help` ≤ 0.25 s; a dry-run launch ≤ 0.5 s; rendering O(nodes).
Run: .venv/bin/python bench/cli_start.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REPEAT = 7


def timed(argv: list[str]) -> float:
    samples = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def big_recipe(folder: Path, nodes: int) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "intellect3.yaml").read_text())
    trainer = nodes // 4
    data["cluster"]["nodes"] = nodes
    data["roles"]["trainer"]["nodes"] = trainer
    data["roles"]["inference"]["nodes"] = nodes - trainer
    data["cluster"]["exclude"] = [f"node-{i:04d}" for i in range(0, nodes, 97)]
    path = folder / f"intellect3-{nodes}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def in_process_render(path: Path) -> float:
    from intellect.launch import prepare

    samples = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        prepare(path)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    py = sys.executable
    cli = [py, "-m", "intellect.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        big = big_recipe(Path(tmp), 4096)
        base = timed([py, "-c", "pass"])
        rows = [
            ("python -c pass", base),
            ("intellect --help", timed([*cli, "--help"])),
            (
                "launch intellect3 --dry-run --json",
                timed([*cli, "launch", "recipes/intellect3.yaml", "--dry-run", "--json"]),
            ),
            ("launch 4096 nodes --dry-run --json", timed([*cli, "launch", str(big), "--dry-run", "--json"])),
        ]
        r64 = in_process_render(ROOT / "recipes" / "intellect3.yaml")
        r4096 = in_process_render(big)
    print(f"{'command':40s} {'median s':>9s} {'x python':>9s}")
    for name, secs in rows:
        print(f"{name:40s} {secs:9.3f} {secs / base:9.2f}")
    print(
        f"in-process plan+render: 60 nodes {r64 * 1e3:.2f} ms, 4096 nodes {r4096 * 1e3:.2f} ms "
        f"(ratio {r4096 / r64:.2f} for 68x the nodes)"
    )


if __name__ == "__main__":
    main()
