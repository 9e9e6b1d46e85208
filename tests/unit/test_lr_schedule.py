"""``lr_at``: the learning rate of RL step N, against values computed by hand."""

from __future__ import annotations

import pytest

from intellect.recipe import Schedule
from intellect.rl.trainer.schedule import lr_at


def _lrs(kind: str, steps: int, warmup: int = 0, floor: float = 0.0, lr: float = 1.0) -> list[float]:
    schedule = Schedule(kind=kind, warmup_steps=warmup, min_lr_ratio=floor)  # type: ignore[arg-type]
    return [lr_at(step, lr, schedule, steps) for step in range(1, steps + 1)]


def test_constant() -> None:
    assert _lrs("constant", 5, lr=3e-4) == [3e-4] * 5
    assert _lrs("constant", 5, floor=0.5, lr=3e-4) == [3e-4] * 5  # min_lr_ratio is for the decays


def test_warmup_ramps_linearly_to_the_peak() -> None:
    # 4 warm-up steps of 10 at lr 1e-3: 1/4, 2/4, 3/4, 4/4 of it, then constant
    assert _lrs("constant", 10, warmup=4, lr=1e-3) == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3] + [1e-3] * 6, rel=1e-12
    )


def test_linear_decay_ends_at_min_lr_ratio() -> None:
    # warm-up 2 of 6: 0.5, 1.0; then p = 1/4, 2/4, 3/4, 4/4 and lr = 1 - 0.9 p
    assert _lrs("linear", 6, warmup=2, floor=0.1) == pytest.approx(
        [0.5, 1.0, 0.775, 0.55, 0.325, 0.1], rel=1e-12
    )
    assert _lrs("linear", 4, lr=2e-6)[-1] == 0.0  # min_lr_ratio 0: the last step trains at 0


def test_cosine_decay_ends_at_min_lr_ratio() -> None:
    # no warm-up, 4 steps: p = 1/4, 2/4, 3/4, 1 and (1 + cos(pi p)) / 2 = 0.8535534, 0.5, 0.1464466, 0
    assert _lrs("cosine", 4) == pytest.approx([0.8535533906, 0.5, 0.1464466094, 0.0], abs=1e-10)
    # min_lr_ratio 0.2: 0.2 + 0.8 x the above
    assert _lrs("cosine", 4, floor=0.2, lr=1e-3) == pytest.approx(
        [8.828427125e-4, 6e-4, 3.171572875e-4, 2e-4], rel=1e-9
    )
    # warm-up 1 of 3: 1.0 at step 1 (the peak), then p = 1/2, 1
    assert _lrs("cosine", 3, warmup=1, floor=0.5) == pytest.approx([1.0, 0.75, 0.5], rel=1e-12)


def test_warmup_over_every_step_never_decays() -> None:
    assert _lrs("cosine", 3, warmup=3, floor=0.1) == pytest.approx([1 / 3, 2 / 3, 1.0], rel=1e-12)


def test_steps_outside_the_run_are_refused() -> None:
    for step in (0, 5):
        with pytest.raises(ValueError, match="outside 1..4"):
            lr_at(step, 1.0, Schedule(), 4)
