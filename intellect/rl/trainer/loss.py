"""Losses of the trainer: pure functions on tensors (tested on CPU tensors).

Shapes: ``logprobs``, ``old_logprobs`` and ``loss_mask`` are ``[B, T]`` token tensors (T = sequence length - 1,
as returned by ``intellect.rl.model.forward_logprobs``); ``advantages`` is ``[B]`` (one per sample, broadcast
over its tokens) or ``[B, T]``.

Normalisation (token-level mean over the batch): the summed per-token loss is divided by the number of
``loss_mask`` tokens in the whole batch, *including* the tokens that the importance-ratio mask then removes.
A masked token contributes zero to the sum but still counts in the denominator, so the scale of the gradient
does not jump when many tokens are masked and a long completion weighs more than a short one, token for token.
Under data parallelism each rank passes ``normalizer`` = the global token count so that the ranks' losses add
up to the single-process loss.
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
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Policy-gradient loss with importance ratios masked on both sides (IcePop-style).

    ratio = exp(logprobs - old_logprobs) per token. A token whose ratio is below ``low`` or above ``high``
    carries no gradient at all (it is masked, not clipped). The loss is ``-(ratio * advantage)`` summed over
    the kept tokens and divided by ``normalizer`` (default: the number of ``loss_mask`` tokens, at least 1).
    Its gradient with respect to a kept token's logprob is ``-ratio * advantage / normalizer``.

    ``stats`` holds plain Python numbers: ``masked_low_frac``, ``masked_high_frac``, ``masked_frac`` (fractions
    of the ``loss_mask`` tokens), ``mean_ratio`` (over the ``loss_mask`` tokens), ``tokens`` (``loss_mask``
    tokens), ``ratio_sum``, ``masked_low_tokens``, ``masked_high_tokens`` and ``kept_tokens``
    (the sums let data-parallel ranks add their statistics up).
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != loss_mask.shape:
        raise ValueError(
            f"shape mismatch: logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}"
        )
    if not low < 1.0 < high:
        raise ValueError(f"need low < 1 < high (got low={low}, high={high})")
    adv = advantages.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    mask = loss_mask.bool()
    old = old_logprobs.to(logprobs.dtype).detach()
    # Padding and tool tokens may hold anything (even -inf): zero them before exp.
    log_ratio = torch.where(mask, logprobs - old, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    with torch.no_grad():
        too_low = mask & (ratio < low)
        too_high = mask & (ratio > high)
        keep = mask & ~too_low & ~too_high
    per_token = torch.where(keep, -ratio * adv, torch.zeros_like(ratio))
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
        "kept_tokens": int(keep.sum().item()),
    }
    return loss, stats


def masked_nll(
    logprobs: torch.Tensor, loss_mask: torch.Tensor, normalizer: float | None = None
) -> torch.Tensor:
    """Supervised loss: negative logprob summed over ``loss_mask`` tokens, over their count (or ``normalizer``)."""
    mask = loss_mask.bool()
    denom = float(normalizer) if normalizer is not None else float(max(int(mask.sum().item()), 1))
    return -torch.where(mask, logprobs, torch.zeros_like(logprobs)).sum() / denom
