"""The async bound, as pure functions (the contract is in ``intellect.rl``'s docstring).

Trainer step N reads batch N and writes weights N. With ``max_async_level`` k, batch N may only contain
rollouts whose first weight step is at least N-1-k; before generating for batch N the servers must run weights
of at least that step. A rollout whose first step is older than N-1-max_off_policy_steps is stale: dropped and
its task rescheduled. Since the recipe guarantees max_off_policy_steps >= k, the async bound is the tighter of
the two; a rollout between the two thresholds is dropped and rescheduled too (``Verdict.BEYOND_ASYNC``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class Verdict(enum.Enum):
    ACCEPT = "accept"
    BEYOND_ASYNC = "beyond_async"  # first step older than N-1-k: not allowed in batch N, rescheduled
    STALE = "stale"  # first step older than N-1-max_off_policy_steps: dropped, rescheduled


def min_weight_step(batch: int, max_async_level: int) -> int:
    """The oldest weights batch ``batch`` may come from (and the servers must run before generating for it)."""
    return max(0, batch - 1 - max_async_level)


def stale_before(batch: int, max_off_policy_steps: int) -> int:
    """Rollouts whose first weight step is below this are stale for ``batch``."""
    return batch - 1 - max_off_policy_steps


def judge(first_step: int, batch: int, max_async_level: int, max_off_policy_steps: int) -> Verdict:
    """May a rollout whose first weight step is ``first_step`` go into ``batch``?"""
    if first_step < stale_before(batch, max_off_policy_steps):
        return Verdict.STALE
    if first_step < min_weight_step(batch, max_async_level):
        return Verdict.BEYOND_ASYNC
    return Verdict.ACCEPT


def judge_group(
    first_steps: Sequence[int], batch: int, max_async_level: int, max_off_policy_steps: int
) -> Verdict:
    """A group is as old as its oldest sample: one verdict for all its samples."""
    if not first_steps:
        return Verdict.ACCEPT
    return judge(min(first_steps), batch, max_async_level, max_off_policy_steps)


def off_policy_lag(first_step: int, batch: int) -> int:
    """How many trainer steps older than the on-policy weights (N-1) a rollout of batch N is."""
    return batch - 1 - first_step
