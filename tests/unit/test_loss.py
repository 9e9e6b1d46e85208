"""The importance-masked policy-gradient loss on CPU tensors, against float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from intellect.rl.trainer.loss import importance_masked_pg_loss, masked_nll

LOW, HIGH = 0.5, 5.0


def _constructed() -> tuple[torch.Tensor, ...]:
    """Two samples x 5 tokens with chosen ratios; the last token of sample 1 is padding."""
    ratios = torch.tensor([[1.0, 0.4, 6.0, 2.0, 0.501], [0.499, 4.99, 5.01, 1.3, 100.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -3.0, -0.5, -1.5], [-0.7, -2.2, -4.0, -1.1, -9.0]], dtype=torch.float64)
    logprobs = old + ratios.log()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    advantages = torch.tensor([1.5, -0.5], dtype=torch.float64)
    return logprobs, old, advantages, mask


def test_masked_fractions_are_exact() -> None:
    logprobs, old, adv, mask = _constructed()
    _, stats = importance_masked_pg_loss(logprobs, old, adv, mask, LOW, HIGH)
    # 9 loss tokens. Below 0.5: 0.4, 0.499 (0.501 kept). Above 5: 6.0, 5.01 (4.99 kept; the 100 is padding).
    assert stats["tokens"] == 9
    assert stats["masked_low_tokens"] == 2 and stats["masked_high_tokens"] == 2
    assert stats["masked_low_frac"] == pytest.approx(2 / 9, abs=1e-12)
    assert stats["masked_high_frac"] == pytest.approx(2 / 9, abs=1e-12)
    assert stats["masked_frac"] == pytest.approx(4 / 9, abs=1e-12)
    assert stats["kept_tokens"] == 5
    loss_ratios = [1.0, 0.4, 6.0, 2.0, 0.501, 0.499, 4.99, 5.01, 1.3]
    assert stats["mean_ratio"] == pytest.approx(sum(loss_ratios) / 9, rel=1e-9)


def test_loss_value_matches_hand_computation() -> None:
    logprobs, old, adv, mask = _constructed()
    loss, _ = importance_masked_pg_loss(logprobs, old, adv, mask, LOW, HIGH)
    kept = [(1.0, 1.5), (2.0, 1.5), (0.501, 1.5), (4.99, -0.5), (1.3, -0.5)]
    expected = -sum(r * a for r, a in kept) / 9  # normalised by all 9 loss tokens, masked ones included
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_masked_tokens_get_exactly_zero_gradient() -> None:
    logprobs, old, adv, mask = _constructed()
    logprobs = logprobs.float().requires_grad_(True)
    loss, _ = importance_masked_pg_loss(logprobs, old.float(), adv.float(), mask, LOW, HIGH)
    loss.backward()
    grad = logprobs.grad
    assert grad is not None
    zero = [(0, 1), (0, 2), (1, 0), (1, 2), (1, 4)]  # ratio masked low/high, and padding
    for i, j in zero:
        assert grad[i, j].item() == 0.0
    for i, j in [(0, 0), (0, 3), (0, 4), (1, 1), (1, 3)]:
        assert grad[i, j].item() != 0.0


def test_gradient_matches_float64_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    logprobs64 = -torch.rand(4, 7, generator=gen, dtype=torch.float64) * 3
    old64 = logprobs64 + torch.randn(4, 7, generator=gen, dtype=torch.float64) * 0.6
    adv = torch.randn(4, generator=gen, dtype=torch.float64)
    mask = (torch.rand(4, 7, generator=gen) > 0.25).long()
    ratio = torch.exp(logprobs64 - old64)
    keep = mask.bool() & (ratio >= LOW) & (ratio <= HIGH)
    assert 0 < keep.sum() < mask.sum()  # the draw exercises both sides of the mask
    # d loss / d logprob = -ratio * A / n_loss_tokens on kept tokens, 0 elsewhere
    by_hand = torch.where(keep, -ratio * adv[:, None] / mask.sum(), torch.zeros_like(ratio))

    x64 = logprobs64.clone().requires_grad_(True)
    loss64, _ = importance_masked_pg_loss(x64, old64, adv, mask, LOW, HIGH)
    loss64.backward()
    assert x64.grad is not None
    torch.testing.assert_close(x64.grad, by_hand, rtol=1e-12, atol=1e-15)

    x32 = logprobs64.float().requires_grad_(True)
    loss32, _ = importance_masked_pg_loss(x32, old64.float(), adv.float(), mask, LOW, HIGH)
    loss32.backward()
    assert x32.grad is not None
    torch.testing.assert_close(x32.grad.double(), by_hand, rtol=1e-5, atol=1e-7)
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-5)


def test_on_policy_gradient_is_plain_policy_gradient() -> None:
    # ratio 1 everywhere: d loss / d logprob = -A / n for every loss token
    logprobs = torch.full((2, 3), -1.0, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = importance_masked_pg_loss(
        logprobs, logprobs.detach(), torch.tensor([2.0, -1.0]), mask, LOW, HIGH
    )
    loss.backward()
    assert logprobs.grad is not None
    expected = torch.tensor([[-2 / 5, -2 / 5, 0.0], [1 / 5, 1 / 5, 1 / 5]])
    torch.testing.assert_close(logprobs.grad, expected)
    assert stats["masked_frac"] == 0.0 and stats["mean_ratio"] == pytest.approx(1.0)


def test_normalizer_and_token_advantages() -> None:
    logprobs = torch.zeros(1, 4, requires_grad=True)
    adv = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    loss, _ = importance_masked_pg_loss(
        logprobs, torch.zeros(1, 4), adv, torch.ones(1, 4), LOW, HIGH, normalizer=20
    )
    assert loss.item() == pytest.approx(-10 / 20)


def test_padding_with_infinite_logprobs_stays_finite() -> None:
    logprobs = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    old = torch.tensor([[-1.0, float("-inf")]])
    loss, stats = importance_masked_pg_loss(
        logprobs, old, torch.tensor([1.0]), torch.tensor([[1, 0]]), LOW, HIGH
    )
    loss.backward()
    assert math.isfinite(loss.item()) and logprobs.grad is not None
    assert torch.isfinite(logprobs.grad).all() and stats["tokens"] == 1


def test_empty_mask_gives_zero_loss() -> None:
    logprobs = torch.zeros(2, 3, requires_grad=True)
    loss, stats = importance_masked_pg_loss(
        logprobs, torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3), LOW, HIGH
    )
    assert loss.item() == 0.0 and stats["tokens"] == 0 and stats["masked_frac"] == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        importance_masked_pg_loss(
            torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2), torch.ones(2, 3), LOW, HIGH
        )
    with pytest.raises(ValueError, match="low < 1 < high"):
        importance_masked_pg_loss(
            torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), 1.2, 5.0
        )


def test_masked_nll_averages_completion_tokens() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert masked_nll(logprobs, mask).item() == pytest.approx((2 + 3 + 6) / 3)
