"""Group-relative advantages: pure Python, checked against hand-computed values."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from intellect.rl.advantages import group_advantages, is_degenerate


def test_centred_and_std_normalised() -> None:
    # rewards 0, 0, 1, 1: mean 0.5, population std 0.5 -> -1, -1, 1, 1
    assert group_advantages([0.0, 0.0, 1.0, 1.0]) == pytest.approx([-1.0, -1.0, 1.0, 1.0])


def test_hand_computed_uneven_group() -> None:
    rewards = [1.0, 0.0, 0.0, 0.0]
    mean = 0.25
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 4)
    expected = [(r - mean) / std for r in rewards]
    assert group_advantages(rewards) == pytest.approx(expected, abs=1e-12)
    assert sum(group_advantages(rewards)) == pytest.approx(0.0, abs=1e-12)


def test_without_std_normalisation_only_centres() -> None:
    assert group_advantages([0.2, 0.6, 1.0], normalize_std=False) == pytest.approx([-0.4, 0.0, 0.4])


@pytest.mark.parametrize("rewards", [[1.0, 1.0, 1.0], [0.0] * 8, [0.3, 0.3 + 1e-9]])
def test_equal_rewards_give_zeros_and_degenerate(rewards: list[float]) -> None:
    adv = group_advantages(rewards)
    assert adv == [0.0] * len(rewards)
    assert is_degenerate(adv)


def test_informative_group_is_not_degenerate() -> None:
    assert not is_degenerate(group_advantages([0.0, 1.0]))
    assert is_degenerate([1e-7, -1e-7])
    assert not is_degenerate([1e-7, 0.5])


def test_empty_group_and_non_finite() -> None:
    assert group_advantages([]) == []
    with pytest.raises(ValueError, match="finite"):
        group_advantages([0.0, float("nan")])


def test_module_does_not_import_torch() -> None:
    code = "import sys, intellect.rl.advantages; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
