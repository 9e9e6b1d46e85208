"""``WeightLoader``: a weights file read, checked against the model before it is touched, then swapped in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from intellect.rl.inference.weights import WeightLoader
from intellect.rl.model import WEIGHTS_FILE, load_weights, save_weights


class Tiny(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(4, 3)
        self.emb = torch.nn.Embedding(5, 2)
        self.register_buffer("scale", torch.ones(3))


def state_of(seed: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in Tiny(seed).state_dict().items()}


def same(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items())


def test_read_leaves_the_model_alone_until_swap(tmp_path: Path) -> None:
    """The tensors read are those ``load_weights`` gives; the model changes only at ``swap``."""
    model = Tiny(0)
    slots = WeightLoader(model)
    for step in range(1, 4):
        folder = save_weights(state_of(step), tmp_path / f"step_{step}")
        new = slots.read(folder)
        want = load_weights(folder)
        assert new.keys() == want.keys() and all(torch.equal(new[k], want[k]) for k in want)
        assert same(model, state_of(step - 1))
        slots.swap(new)
        assert same(model, state_of(step))
        assert torch.equal(model.lin(torch.ones(1, 4)), Tiny(step).lin(torch.ones(1, 4)))


def test_a_file_that_does_not_fit_changes_nothing(tmp_path: Path) -> None:
    model = Tiny(0)
    slots = WeightLoader(model)
    bad_shape = {**state_of(1), "lin.weight": torch.zeros(2, 4)}
    with pytest.raises(ValueError, match="lin.weight has shape"):
        slots.read(save_weights(bad_shape, tmp_path / "a"))
    with pytest.raises(ValueError, match="missing"):
        slots.read(save_weights({"lin.weight": torch.zeros(3, 4)}, tmp_path / "b"))
    with pytest.raises(ValueError, match="unexpected"):
        slots.read(save_weights({**state_of(1), "extra": torch.zeros(1)}, tmp_path / "c"))
    folder = save_weights(state_of(1), tmp_path / "d")
    raw = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="torn file"):
        slots.read(folder)
    (folder / WEIGHTS_FILE).write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        slots.read(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError):
        slots.read(folder)
    assert same(model, state_of(0))


def test_another_dtype_is_cast(tmp_path: Path) -> None:
    model = Tiny(0)
    want = state_of(3)
    WeightLoader(model).load(save_weights({k: v.to(torch.bfloat16) for k, v in want.items()}, tmp_path / "s"))
    assert model.lin.weight.dtype == torch.float32
    assert torch.allclose(model.lin.weight, want["lin.weight"], atol=1e-2)
