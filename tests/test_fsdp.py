"""FSDP2 on CPU/gloo: two trainer ranks in micro-batches reproduce the single-process run on the same batches.

Both runs are the real entry point (``python -m intellect.rl.trainer``): the two ranks get RANK/WORLD_SIZE/
MASTER_PORT like torchrun would set them. The runs share the recipe (a short warm-up on reverse-digits, then RL
steps on hand-written rollouts), so warm-up, RL steps, weight gathering and the checkpoint of the last step are
all compared. In float32 (with the sequence-level mask, the KL term and truncated samples masked, so the ranks'
statistics must add up) both runs then go on by one step from that checkpoint, which checks the sharded
resume; in bf16 (FSDP2's mixed-precision policy against one process's cast) they agree within bf16 rounding.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from intellect.recipe import load_recipe, validate_recipe
from intellect.rl.model import CharTokenizer, build_model, load_weights
from intellect.rl.trainer.data import micro_batches, rank_slice, read_rollouts

ROOT = Path(__file__).resolve().parents[1]
TOK = CharTokenizer()
pytestmark = pytest.mark.slow


def _recipe(
    run_dir: Path, steps: int, micro_batch_tokens: int = 0, dtype: str = "float32", **algorithm: Any
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((ROOT / "recipes" / "debug-cpu.yaml").read_text())
    data["run_dir"] = str(run_dir)
    data["model"]["dtype"] = dtype
    data["model"]["tiny"] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 2}  # fmt: skip
    data["algorithm"].update({"steps": steps, "batch_size": 12, "rollouts_per_prompt": 4,
                              "micro_batch_tokens": micro_batch_tokens, **algorithm})  # fmt: skip
    data["algorithm"]["pretrain"] = {"steps": 3, "batch_size": 10, "learning_rate": 3e-3}
    data["checkpoints"] = {"every": 2, "keep": 2}
    config = run_dir / "recipe.resolved.yaml"
    config.write_text(yaml.safe_dump(validate_recipe(data).model_dump(mode="json")))
    return config


def _rollouts(run_dir: Path, step: int) -> None:
    """13 samples (an odd count, so the ranks' shares differ) of uneven lengths, one with a tool token, one
    truncated."""
    rng = random.Random(100 + step)
    lines = []
    for i in range(13):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 5)))
        completion = TOK.encode(digits[::-1][: rng.randint(1, len(digits))]) + [TOK.eos_token_id]
        mask = [1] * len(completion)
        if i == 5:
            mask[0] = 0
        lines.append(json.dumps({
            "id": f"{step}-{i}", "group": f"{step}-{i // 4}", "env": "reverse-digits", "task_id": digits,
            "prompt_ids": TOK.encode(digits + ">", bos=True), "completion_ids": completion,
            "completion_logprobs": [-4.3 + rng.gauss(0, 0.8) for _ in completion], "completion_mask": mask,
            "reward": float(i % 3 == 0), "advantage": rng.choice([-1.0, 0.5, 1.5]), "weight_steps": [0, 0],
            "truncated": i == 8,
        }))  # fmt: skip
    folder = run_dir / "rollouts" / f"step_{step}"
    folder.mkdir(parents=True)
    (folder / "rollouts.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "STABLE").write_text("")


SHARDED_BUDGET = 24  # padded tokens per pass on each rank: the two ranks run different numbers of passes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(config: Path, world_size: int) -> list[subprocess.Popen[bytes]]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER"))
    }
    port = _free_port()
    cmd = [sys.executable, "-m", "intellect.rl.trainer", "--config", str(config), "--metrics-port", "0"]
    procs = []
    for rank in range(world_size):
        env = dict(base, OMP_NUM_THREADS="1")
        if world_size > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    return procs


def _run_both(single: Path, sharded: Path, steps: int, **options: Any) -> None:
    """The single-process run (one pass per step) and the two-rank run (micro-batches), side by side."""
    procs = _launch(_recipe(single, steps, **options), 1) + _launch(
        _recipe(sharded, steps, SHARDED_BUDGET, **options), 2
    )
    _finish(procs)


def _finish(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for the runs; each must exit 0."""
    try:
        outputs = [p.communicate(timeout=150)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]


def _rl_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") != "warmup"]


def _assert_same_weights(a: Path, b: Path) -> None:
    """Equal up to float32 rounding: the ranks sum gradients in another order (differences seen: ~1e-6)."""
    wa, wb = load_weights(a), load_weights(b)
    assert set(wa) == set(wb)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)


# Every loss option on: the ranks must add their sequence counts, KL sums and token counts up.
OPTIONS: dict[str, Any] = {
    "masks": {"low": 0.5, "high": 5.0, "sequence_low": 0.2, "sequence_high": 6.0},
    "kl_coef": 0.05,
    "truncated": "mask",
}


def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    for run_dir in (single, sharded):
        for step in (1, 2, 3):
            _rollouts(run_dir, step)
    # the case this covers: rank 1 has fewer micro-batches and runs empty passes to match rank 0's collectives
    samples = read_rollouts(sharded / "rollouts" / "step_1")
    counts = [len(micro_batches(samples[rank_slice(13, r, 2)], SHARDED_BUDGET)) for r in (0, 1)]
    assert counts[0] > counts[1] > 1, counts
    _run_both(single, sharded, steps=2, **OPTIONS)
    for step in (0, 1, 2):
        _assert_same_weights(single / "weights" / f"step_{step}", sharded / "weights" / f"step_{step}")
    rows_1, rows_2 = _rl_rows(single), _rl_rows(sharded)
    assert [r["step"] for r in rows_2] == [1, 2]  # rank 0 alone writes metrics.jsonl
    assert rows_2[0]["micro_batches"] == counts[0] and rows_1[0]["micro_batches"] == 1
    for r1, r2 in zip(rows_1, rows_2, strict=True):
        assert r1["tokens"] == r2["tokens"] and r1["masked_frac"] == r2["masked_frac"]
        assert r1["masked_seq_frac"] == r2["masked_seq_frac"] and r2["truncated_masked"] == 1
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5, abs=1e-7)
        assert r2["kl"] == pytest.approx(r1["kl"], rel=1e-5) and r1["kl"] > 0
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-5)
    assert 0 < rows_1[0]["masked_frac"] < 1
    assert rows_1[0]["masked_seq_frac"] == 4 / 13  # measured on these rollouts; each rank saw some of them
    truncated = [s for s in samples if s.truncated]
    assert len(truncated) == 1 and rows_1[0]["tokens"] == sum(s.loss_tokens for s in samples) - sum(
        s.loss_tokens for s in truncated
    )
    # resume both from checkpoints/step_2 (model + optimizer state) and train step 3
    _run_both(single, sharded, steps=3, **OPTIONS)
    _assert_same_weights(single / "weights" / "step_3", sharded / "weights" / "step_3")
    assert [r["step"] for r in _rl_rows(sharded)] == [1, 2, 3]


def _masters(run_dir: Path, step: int) -> torch.Tensor:
    """The float32 master weights of checkpoints/step_N, flattened in name order."""
    state = load_file(str(run_dir / "checkpoints" / f"step_{step}" / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.float32}
    return torch.cat([state[k].flatten() for k in sorted(state)])


def test_two_ranks_in_bf16_match_one_process(tmp_path: Path) -> None:
    """bf16 compute on float32 masters: FSDP2's MixedPrecisionPolicy (bf16 all-gather, float32 reduce-scatter)
    on two ranks against one process's cast parameters, after the warm-up and two RL steps.

    The two differ by rounding only (bf16 sums in another order across micro-batches and shards), and AdamW's
    first steps, which move every weight by about lr whatever the gradient's size, turn a flipped sign of a tiny
    gradient into a full-size difference. Measured relative L2 of the difference over the total update: 1.5%,
    a third of the distance between one-process bf16 and one-process float32 (4.4%); in float32 the two-rank
    run is 7e-7 away. The bounds: under 3%, and under half the bf16-float32 distance, which a two-rank run
    that computed in float32 (as far from bf16 as the float32 run is) would not meet.
    """
    runs = {name: tmp_path / name for name in ("single", "sharded", "single-fp32")}
    for run_dir in runs.values():
        for step in (1, 2):
            _rollouts(run_dir, step)
    procs = (
        _launch(_recipe(runs["single"], 2, dtype="bfloat16"), 1)
        + _launch(_recipe(runs["sharded"], 2, SHARDED_BUDGET, dtype="bfloat16"), 2)
        + _launch(_recipe(runs["single-fp32"], 2), 1)
    )
    _finish(procs)
    init, _ = build_model(load_recipe(runs["single"] / "recipe.resolved.yaml").model, dtype=torch.float32)
    start = torch.cat([t.detach().flatten() for _, t in sorted(init.state_dict().items())])
    single, sharded, fp32 = (_masters(runs[name], 2) for name in ("single", "sharded", "single-fp32"))
    update = (single - start).norm()
    sharded_off, bf16_off = float((sharded - single).norm() / update), float((fp32 - single).norm() / update)
    assert sharded_off < 0.03 and sharded_off < 0.5 * bf16_off, (sharded_off, bf16_off)
    published = load_weights(runs["sharded"] / "weights" / "step_2")
    assert {t.dtype for t in published.values()} == {torch.bfloat16}
    for r1, r2 in zip(_rl_rows(runs["single"]), _rl_rows(runs["sharded"]), strict=True):
        assert r1["tokens"] == r2["tokens"]
        assert r2["loss"] == pytest.approx(r1["loss"], rel=0.02)
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=0.02)
