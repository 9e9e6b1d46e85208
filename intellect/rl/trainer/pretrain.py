"""Supervised warm-up: teach a tiny model from scratch the format of its environments before RL.

A random 0.8M-parameter model almost never earns a reward, so RL would have no signal. A short run of
next-token training on ``env.reference(task)`` completions (bos + prompt + reference + eos, the loss on the
completion tokens only) gets it to a partial solve rate, where group-relative advantages start to differ.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from intellect.rl.trainer.data import WarmupSampler, build_sft_batch, rank_slice
from intellect.rl.trainer.distributed import DistInfo, all_reduce_sum
from intellect.rl.trainer.loss import masked_nll
from intellect.rl.trainer.precision import Precision

log = logging.getLogger(__name__)


@dataclass
class WarmupResult:
    steps: int
    loss: float
    seconds: float
    tokens: int


def supervised_warmup(
    model: torch.nn.Module,
    tokenizer: object,
    sampler: WarmupSampler,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    max_grad_norm: float,
    info: DistInfo,
    device: torch.device,
    precision: Precision | None = None,
    log_every: int = 25,
) -> WarmupResult:
    """Run ``steps`` AdamW steps of next-token loss on reference completions; return the last loss.

    Every rank draws the same batch (same sampler state) and trains on its slice; the loss is normalised by the
    global token count, so the ranks together compute the single-process gradient. The forward and backward
    passes run in ``precision``'s compute dtype, the AdamW steps on the float32 masters (as the RL steps do).
    """
    precision = precision or Precision()
    optim = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    start = time.monotonic()
    loss_value, tokens = 0.0, 0
    model.train()
    for step in range(1, steps + 1):
        pairs = sampler.sample(batch_size)
        full = build_sft_batch(pairs, tokenizer)
        local = build_sft_batch(pairs[rank_slice(len(pairs), info.rank, info.world_size)], tokenizer)
        batch = local.to(device)
        global_tokens = full.tokens
        logp = precision.logprobs(model, batch.input_ids, batch.attention_mask)
        loss = masked_nll(logp, batch.loss_mask, normalizer=global_tokens)
        optim.zero_grad(set_to_none=True)
        (loss * info.world_size).backward()  # FSDP averages gradients over ranks; undo it
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optim.step()
        loss_value = all_reduce_sum([loss.item()], info, device)[0]
        tokens += global_tokens
        if info.is_main and (step % log_every == 0 or step == steps):
            log.info(
                "warm-up step %d/%d loss %.4f (%.1f s)", step, steps, loss_value, time.monotonic() - start
            )
    return WarmupResult(steps=steps, loss=loss_value, seconds=time.monotonic() - start, tokens=tokens)
