"""The async bound and the off-policy bound, as pure functions (the contract is in ``intellect.rl``'s docstring).

Trainer step N reads batch N and writes weights N. A rollout is tagged with ``weight_steps`` (first, last): the
weight steps the servers ran from its first token to its last. Two recipe fields bound it:

``max_async_level`` k
    How far inference may run ahead of the trainer. Batch N accepts only rollouts whose first weight step is at
    least N-1-k (``min_weight_step``), and before generating for batch N the servers must run weights of at
    least that step. A group with an older sample is ``Verdict.BEYOND_ASYNC``: dropped (``dropped_stale``) and
    its task rescheduled. The client sends a group's requests only to servers that satisfy the bound, so this
    verdict is a safety net rather than a common case.

``max_off_policy_steps``
    How many weight updates one rollout may span from its first token to its last (updates land mid-generation,
    between decode steps). A group any of whose samples has last - first > max_off_policy_steps is
    ``Verdict.OFF_POLICY``: dropped (``dropped_off_policy``) and its task rescheduled. Since first >= N-1-k and
    last <= N-1 (weights N do not exist before batch N is handed over), a span never exceeds k:
    max_off_policy_steps binds only when it is below k. With 0, no trained rollout was hit by an update.

A group is judged as a whole (its samples share advantages): one verdict for all its samples, the async bound
first.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class Verdict(enum.Enum):
    ACCEPT = "accept"
    BEYOND_ASYNC = (
        "beyond_async"  # a first step older than N-1-k: not allowed in batch N; dropped, rescheduled
    )
    OFF_POLICY = "off_policy"  # a span of more than max_off_policy_steps updates: dropped, rescheduled


def min_weight_step(batch: int, max_async_level: int) -> int:
    """The oldest weights batch ``batch`` may come from (and the servers must run before generating for it)."""
    return max(0, batch - 1 - max_async_level)


def span(weight_steps: tuple[int, int]) -> int:
    """Weight updates a rollout spans from its first token to its last (``last - first``)."""
    first, last = weight_steps
    return last - first


def judge(
    weight_steps: tuple[int, int], batch: int, max_async_level: int, max_off_policy_steps: int
) -> Verdict:
    """May a rollout tagged ``weight_steps`` (first, last) go into ``batch``?"""
    if weight_steps[0] < min_weight_step(batch, max_async_level):
        return Verdict.BEYOND_ASYNC
    if span(weight_steps) > max_off_policy_steps:
        return Verdict.OFF_POLICY
    return Verdict.ACCEPT


def judge_group(
    weight_steps: Sequence[tuple[int, int]], batch: int, max_async_level: int, max_off_policy_steps: int
) -> Verdict:
    """One verdict for a group: BEYOND_ASYNC if any sample is, else OFF_POLICY if any sample is, else ACCEPT."""
    verdicts = {judge(ws, batch, max_async_level, max_off_policy_steps) for ws in weight_steps}
    for verdict in (Verdict.BEYOND_ASYNC, Verdict.OFF_POLICY):
        if verdict in verdicts:
            return verdict
    return Verdict.ACCEPT


def off_policy_lag(first_step: int, batch: int) -> int:
    """How many trainer steps older than the on-policy weights (N-1) a rollout of batch N is."""
    return batch - 1 - first_step
