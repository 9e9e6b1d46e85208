"""The loss options of the reference run on CPU tensors, against values computed by hand.

One batch serves every test: 4 samples x 4 tokens with chosen importance ratios (token masks low 0.5, high 5).

    row  ratios                      loss mask   advantage   token mask           sequence mask (0.2, 10)
    0    1.0   2.0   0.8  (100)      1 1 1 0     +1.0        all kept             kept (the 100 is padding)
    1    0.4   7.0   1.5   1.2       1 1 1 1     -1.0        0.4 low, 7.0 high    kept (0.2 <= r <= 10)
    2    1.0   0.1   1.0   1.0       1 1 1 1     +2.0        0.1 low              dropped: 0.1 < 0.2
    3    1.0  12.0   1.0   1.0       1 1 1 1     +0.5        12 high              dropped: 12 > 10

15 loss tokens. Per kept token the loss is -ratio * advantage, so the row sums over the token-kept tokens are
row 0: -(1.0 + 2.0 + 0.8) = -3.8; row 1: +(1.5 + 1.2) = +2.7; row 2: -2 * 3 = -6.0; row 3: -0.5 * 3 = -1.5.
"""

from __future__ import annotations

import math

import pytest
import torch

from intellect.rl.trainer import loss as loss_mod
from intellect.rl.trainer.loss import drop_samples, importance_masked_pg_loss, k3_kl, sequence_keep

LOW, HIGH = 0.5, 5.0
SEQ_LOW, SEQ_HIGH = 0.2, 10.0
RATIOS = [[1.0, 2.0, 0.8, 100.0], [0.4, 7.0, 1.5, 1.2], [1.0, 0.1, 1.0, 1.0], [1.0, 12.0, 1.0, 1.0]]
MASK = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
ADV = [1.0, -1.0, 2.0, 0.5]


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ratios = torch.tensor(RATIOS, dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.5, -2.5, -0.7, -1.1],
                        [-0.9, -1.9, -2.9, -3.9], [-0.3, -4.0, -1.0, -2.0]], dtype=torch.float64)  # fmt: skip
    logprobs = (old + ratios.log()).requires_grad_(True)
    return logprobs, old, torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK)


def _loss(**options: object) -> tuple[torch.Tensor, dict[str, object], torch.Tensor]:
    logprobs, old, adv, mask = _batch()
    drop = options.pop("drop", None)
    if drop is not None:
        mask = drop_samples(mask, torch.tensor(drop))
    loss, stats = importance_masked_pg_loss(logprobs, old, adv, mask, LOW, HIGH, **options)  # type: ignore[arg-type]
    loss.backward()
    assert logprobs.grad is not None
    return loss, stats, logprobs.grad


def test_token_masks_alone() -> None:
    loss, stats, _ = _loss()
    assert loss.item() == pytest.approx((-3.8 + 2.7 - 6.0 - 1.5) / 15, rel=1e-12)  # -8.6 / 15
    assert stats["masked_low_tokens"] == 2 and stats["masked_high_tokens"] == 2  # 0.4, 0.1 and 7, 12
    assert stats["masked_seqs"] == 0 and stats["kept_tokens"] == 11 and stats["kl_sum"] == 0.0


def test_sequence_keep_drops_rows_with_any_token_outside() -> None:
    ratios, mask = torch.tensor(RATIOS), torch.tensor(MASK)
    assert sequence_keep(ratios, mask, SEQ_LOW, SEQ_HIGH).tolist() == [True, True, False, False]
    assert sequence_keep(ratios, mask, SEQ_LOW, None).tolist() == [True, True, False, True]
    assert sequence_keep(ratios, mask, None, SEQ_HIGH).tolist() == [True, True, True, False]
    assert sequence_keep(ratios, mask, None, None).tolist() == [True] * 4
    # the padding's 100 does not count: with it as a loss token, row 0 goes too
    assert sequence_keep(ratios, torch.ones(4, 4), None, SEQ_HIGH).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="sequence_low"):
        sequence_keep(ratios, mask, 1.5, None)
    with pytest.raises(ValueError, match="sequence_high"):
        sequence_keep(ratios, mask, None, 0.9)


@pytest.mark.parametrize(
    ("seq_low", "seq_high", "expected_sum", "dropped_rows"),
    [
        (SEQ_LOW, SEQ_HIGH, -3.8 + 2.7, [2, 3]),  # -1.1
        (SEQ_LOW, None, -3.8 + 2.7 - 1.5, [2]),  # -2.6
        (None, SEQ_HIGH, -3.8 + 2.7 - 6.0, [3]),  # -7.1
    ],
)
def test_sequence_mask_with_the_token_masks(
    seq_low: float | None, seq_high: float | None, expected_sum: float, dropped_rows: list[int]
) -> None:
    loss, stats, grad = _loss(sequence_low=seq_low, sequence_high=seq_high)
    # the dropped rows' tokens still count in the denominator: 15, not 15 - 4 * len(dropped_rows)
    assert loss.item() == pytest.approx(expected_sum / 15, rel=1e-12)
    assert stats["masked_seqs"] == len(dropped_rows) and stats["tokens"] == 15
    assert stats["masked_low_tokens"] == 2 and stats["masked_high_tokens"] == 2  # token stats unchanged
    for row in dropped_rows:
        assert grad[row].abs().sum().item() == 0.0  # no gradient at all
    # a kept row's kept tokens: -ratio * A / 15; row 0's 2.0 gets -2/15, row 1's 1.5 gets +1.5/15
    assert grad[0, 1].item() == pytest.approx(-2.0 / 15, rel=1e-12)
    assert grad[1, 2].item() == pytest.approx(1.5 / 15, rel=1e-12)
    assert grad[1, 0].item() == 0.0 and grad[1, 1].item() == 0.0  # token-masked in a kept row


def test_k3_values() -> None:
    # k3(r) = 1/r + ln r - 1 for r = exp(log_ratio)
    log_ratio = torch.tensor([math.log(r) for r in (1.0, 2.0, 0.8, 1.5, 1.2)], dtype=torch.float64)
    expected = [0.0, 0.1931471806, 0.0268564487, 0.0721317748, 0.0156548901]
    assert k3_kl(log_ratio).tolist() == pytest.approx(expected, abs=1e-9)
    # exp(old - new) - (old - new) - 1 with old = -1.0, new = -1.5: exp(0.5) - 0.5 - 1
    assert k3_kl(torch.tensor(-0.5, dtype=torch.float64)).item() == pytest.approx(0.1487212707, abs=1e-9)


def test_kl_term_on_the_kept_tokens() -> None:
    loss, stats, grad = _loss(kl_coef=0.1, sequence_low=SEQ_LOW, sequence_high=SEQ_HIGH)
    # kept tokens: row 0's 1.0, 2.0, 0.8 and row 1's 1.5, 1.2 (k3 of 1.0 is 0)
    kl_sum = 0.1931471806 + 0.0268564487 + 0.0721317748 + 0.0156548901  # 0.3077902942
    assert stats["kl_sum"] == pytest.approx(kl_sum, abs=1e-9)
    assert loss.item() == pytest.approx((-1.1 + 0.1 * kl_sum) / 15, rel=1e-9)
    # d/d logprob = (-ratio * A + kl_coef * (1 - 1/ratio)) / 15: row 0's 2.0 -> (-2 + 0.05) / 15
    assert grad[0, 1].item() == pytest.approx(-1.95 / 15, rel=1e-12)
    assert grad[1, 2].item() == pytest.approx((1.5 + 0.1 / 3) / 15, rel=1e-12)
    assert grad[0, 0].item() == pytest.approx(-1.0 / 15, rel=1e-12)  # ratio 1: no KL gradient
    assert grad[2].abs().sum().item() == 0.0 and grad[3].abs().sum().item() == 0.0
    assert grad[1, 0].item() == 0.0 and grad[1, 1].item() == 0.0  # token-masked: no KL either


def test_kl_off_computes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_: torch.Tensor) -> torch.Tensor:
        raise AssertionError("k3 computed with kl_coef 0")

    monkeypatch.setattr(loss_mod, "k3_kl", boom)
    loss, stats, _ = _loss(kl_coef=0.0)
    assert stats["kl_sum"] == 0.0 and loss.item() == pytest.approx(-8.6 / 15, rel=1e-12)
    with pytest.raises(AssertionError, match="k3 computed"):
        _loss(kl_coef=0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        importance_masked_pg_loss(*_batch(), LOW, HIGH, kl_coef=-1.0)


def test_dropped_samples_leave_the_normaliser() -> None:
    mask = torch.tensor(MASK)
    assert drop_samples(mask, torch.tensor([False, True, False, False])).tolist() == [
        [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1],
    ]  # fmt: skip
    # row 1 truncated: 11 loss tokens left; its 0.4 and 7.0 no longer count as masked
    loss, stats, grad = _loss(drop=[False, True, False, False])
    assert loss.item() == pytest.approx((-3.8 - 6.0 - 1.5) / 11, rel=1e-12)  # -11.3 / 11
    assert stats["tokens"] == 11 and stats["masked_low_tokens"] == 1 and stats["masked_high_tokens"] == 1
    assert grad[1].abs().sum().item() == 0.0


def test_every_option_together() -> None:
    """Row 1 truncated, rows 2 and 3 dropped by the sequence mask, KL 0.1: only row 0 trains, over 11 tokens."""
    loss, stats, grad = _loss(
        drop=[False, True, False, False], sequence_low=SEQ_LOW, sequence_high=SEQ_HIGH, kl_coef=0.1
    )
    kl_sum = 0.1931471806 + 0.0268564487  # row 0's 2.0 and 0.8
    assert loss.item() == pytest.approx((-3.8 + 0.1 * kl_sum) / 11, rel=1e-9)
    assert stats["tokens"] == 11 and stats["masked_seqs"] == 2 and stats["kept_tokens"] == 3
    assert stats["kl_sum"] == pytest.approx(kl_sum, abs=1e-9)
    assert (stats["masked_low_frac"], stats["masked_high_frac"]) == pytest.approx((1 / 11, 1 / 11))
    assert grad[1:].abs().sum().item() == 0.0
    by_hand = [-1.0 / 11, (-2.0 + 0.05) / 11, (-0.8 + 0.1 * (1 - 1.25)) / 11]  # ratios 1.0, 2.0, 0.8
    assert grad[0, :3].tolist() == pytest.approx(by_hand, rel=1e-12)


def test_a_masked_token_whose_ratio_overflows_keeps_the_gradient_finite() -> None:
    """old logprob -100 under a policy at -0.5: the ratio exp(99.5) is inf in float32, so the token is masked
    high; its zero gradient must not come back as 0 * inf = NaN. The kept token (ratio 1): -1 * A / 2."""
    for options, grad in (({"kl_coef": 0.1}, [[-0.5, 0.0]]), ({"sequence_high": SEQ_HIGH}, [[0.0, 0.0]])):
        logprobs = torch.tensor([[-1.0, -0.5]], requires_grad=True)
        old = torch.tensor([[-1.0, -100.0]])
        loss, stats = importance_masked_pg_loss(
            logprobs, old, torch.tensor([1.0]), torch.ones(1, 2), LOW, HIGH, **options
        )
        loss.backward()
        assert logprobs.grad is not None and logprobs.grad.tolist() == grad, options
        assert stats["masked_high_tokens"] == 1 and math.isfinite(loss.item())
