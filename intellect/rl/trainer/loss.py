"""Losses of the trainer: pure functions on tensors (tested on CPU tensors).

Shapes: ``logprobs``, ``old_logprobs`` and ``loss_mask`` are ``[B, T]`` token tensors (T = sequence length - 1,
as returned by ``intellect.rl.model.forward_logprobs``); ``advantages`` is ``[B]`` (one per sample, broadcast
over its tokens) or ``[B, T]``.

Normalisation (token-level mean over the batch): the summed per-token loss is divided by the number of
``loss_mask`` tokens in the whole batch, *including* the tokens that the importance-ratio masks (token- and
sequence-level) then remove. A masked token contributes zero to the sum but still counts in the denominator,
so the scale of the gradient does not jump when many tokens are masked and a long completion weighs more than
a short one, token for token. Under data parallelism each rank passes ``normalizer`` = the global token count
so that the ranks' losses add up to the single-process loss.

Samples dropped before the loss (``drop_samples``: ``algorithm.truncated`` "mask") are another matter: their
``loss_mask`` is zeroed, so they leave the denominator as well, as if the orchestrator had not sent them. The
ratio masks depend on the policy being trained, and their tokens stay counted so that the gradient's scale
does not follow the mask rate; whether a sample was truncated is a fact of the data, fixed before training,
and counting its tokens would only shrink the update of every other sample in a batch that hit the budget.
"""

from __future__ import annotations

from typing import Any

import torch


def importance_masked_pg_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    low: float,
    high: float,
    normalizer: float | None = None,
    *,
    sequence_low: float | None = None,
    sequence_high: float | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Policy-gradient loss with importance ratios masked on both sides (IcePop-style), per token and optionally
    per sequence, plus an optional KL penalty.

    ratio = exp(logprobs - old_logprobs) per token. A token whose ratio is below ``low`` or above ``high``
    carries no gradient at all (it is masked, not clipped). With ``sequence_low`` / ``sequence_high`` a sample
    (row) any of whose loss tokens has a ratio below / above them carries no gradient at all
    (``sequence_keep``). The loss is ``-(ratio * advantage) + kl_coef * k3`` summed over the kept tokens and
    divided by ``normalizer`` (default: the number of ``loss_mask`` tokens, at least 1), k3 being ``k3_kl``.
    Its gradient with respect to a kept token's logprob is ``(-ratio * advantage + kl_coef * (1 - 1 / ratio))
    / normalizer``. ``kl_coef`` 0 computes no KL at all.

    ``stats`` holds plain Python numbers: ``masked_low_frac``, ``masked_high_frac``, ``masked_frac`` (fractions
    of the ``loss_mask`` tokens masked by the token-level mask), ``mean_ratio`` (over the ``loss_mask``
    tokens), ``tokens`` (``loss_mask`` tokens), ``ratio_sum``, ``masked_low_tokens``, ``masked_high_tokens``,
    ``masked_seqs`` (rows dropped by the sequence-level mask), ``kept_tokens`` and ``kl_sum`` (k3 summed over
    the kept tokens: ``kl_sum / normalizer`` is the KL term before its weight; 0.0 when ``kl_coef`` is 0)
    (the sums let data-parallel ranks add their statistics up).
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != loss_mask.shape:
        raise ValueError(
            f"shape mismatch: logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}"
        )
    if not low < 1.0 < high:
        raise ValueError(f"need low < 1 < high (got low={low}, high={high})")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0 (got {kl_coef})")
    adv = advantages.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    mask = loss_mask.bool()
    old = old_logprobs.to(logprobs.dtype).detach()
    # Padding and tool tokens may hold anything (even -inf): zero them before exp.
    log_ratio = torch.where(mask, logprobs - old, torch.zeros_like(logprobs))
    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        too_low = mask & (ratio < low)
        too_high = mask & (ratio > high)
        seq_keep = sequence_keep(ratio, mask, sequence_low, sequence_high)
        keep = mask & ~too_low & ~too_high & seq_keep.unsqueeze(-1)
    # The differentiable terms see the kept tokens' log-ratios only: a masked token's ratio may overflow (a
    # log-ratio above ~88 is inf in float32), and its zero gradient would come back as 0 * inf = NaN.
    kept_log_ratio = torch.where(keep, log_ratio, torch.zeros_like(log_ratio))
    per_token = torch.where(keep, -torch.exp(kept_log_ratio) * adv, torch.zeros_like(ratio))
    kl_sum = 0.0
    if kl_coef > 0:
        kl = k3_kl(kept_log_ratio)  # 0 off the kept tokens
        per_token = per_token + kl_coef * kl
        kl_sum = float(kl.detach().sum().item())
    tokens = int(mask.sum().item())
    denom = float(normalizer) if normalizer is not None else float(max(tokens, 1))
    loss = per_token.sum() / denom
    n_low, n_high = int(too_low.sum().item()), int(too_high.sum().item())
    frac = 1.0 / max(tokens, 1)
    stats: dict[str, Any] = {
        "masked_low_frac": n_low * frac,
        "masked_high_frac": n_high * frac,
        "masked_frac": (n_low + n_high) * frac,
        "mean_ratio": float(ratio.detach()[mask].mean().item()) if tokens else 1.0,
        "ratio_sum": float(ratio.detach()[mask].sum().item()),
        "tokens": tokens,
        "masked_low_tokens": n_low,
        "masked_high_tokens": n_high,
        "masked_seqs": int((mask.any(-1) & ~seq_keep).sum().item()),
        "kept_tokens": int(keep.sum().item()),
        "kl_sum": kl_sum,
    }
    return loss, stats


def sequence_keep(
    ratio: torch.Tensor, loss_mask: torch.Tensor, low: float | None, high: float | None
) -> torch.Tensor:
    """``[B]`` booleans: False for a row any of whose ``loss_mask`` tokens has ``ratio`` below ``low`` or above
    ``high`` (either None = that side off). Rows without loss tokens are kept (they carry nothing anyway)."""
    mask = loss_mask.bool()
    bad = torch.zeros_like(mask)
    if low is not None:
        if not low < 1.0:
            raise ValueError(f"sequence_low must be below 1 (got {low})")
        bad |= ratio < low
    if high is not None:
        if not high > 1.0:
            raise ValueError(f"sequence_high must be above 1 (got {high})")
        bad |= ratio > high
    return ~(bad & mask).any(-1)


def k3_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(sampler || policy) from ``log_ratio`` = logprobs - old_logprobs:
    ``exp(-log_ratio) + log_ratio - 1`` (= exp(old - new) - (old - new) - 1; >= 0, and 0 where they agree)."""
    return torch.exp(-log_ratio) + log_ratio - 1.0


def drop_samples(loss_mask: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """``loss_mask`` with the rows where ``drop`` ([B] booleans) is True zeroed: those samples carry no loss and,
    passed on to the loss, leave its normaliser (see the module docstring)."""
    return torch.where(drop.bool().unsqueeze(-1), torch.zeros_like(loss_mask), loss_mask)


def masked_nll(
    logprobs: torch.Tensor, loss_mask: torch.Tensor, normalizer: float | None = None
) -> torch.Tensor:
    """Supervised loss: negative logprob summed over ``loss_mask`` tokens, over their count (or ``normalizer``)."""
    mask = loss_mask.bool()
    denom = float(normalizer) if normalizer is not None else float(max(int(mask.sum().item()), 1))
    return -torch.where(mask, logprobs, torch.zeros_like(logprobs)).sum() / denom
