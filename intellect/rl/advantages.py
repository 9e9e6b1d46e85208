"""Group-relative advantages (GRPO). Pure Python: the orchestrator imports this without torch.

For the rollouts of one prompt (a group) with rewards r_1..r_n, the advantage of rollout i is
``r_i - mean(r)``, divided by the group's standard deviation (population std, ``ddof=0``) when
``normalize_std`` is set. A group whose rewards are all equal carries no learning signal: every advantage is
exactly 0 and ``is_degenerate`` says so, so the orchestrator can drop the group instead of spending trainer
tokens on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def group_advantages(rewards: Sequence[float], normalize_std: bool = True, eps: float = 1e-6) -> list[float]:
    """Advantages of one group: reward minus the group mean, over the group std when ``normalize_std``.

    ``eps`` guards the division: a group whose std is at most ``eps`` (all rewards equal, up to rounding)
    gets all zeros rather than a blown-up ratio of rounding errors.
    """
    n = len(rewards)
    if n == 0:
        return []
    values = [float(r) for r in rewards]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"rewards must be finite, got {values}")
    mean = math.fsum(values) / n
    centred = [v - mean for v in values]
    std = math.sqrt(math.fsum(c * c for c in centred) / n)
    if std <= eps:
        return [0.0] * n
    if not normalize_std:
        return centred
    return [c / std for c in centred]


def is_degenerate(advantages: Sequence[float], eps: float = 1e-6) -> bool:
    """True when every advantage is below ``eps`` in magnitude: the group teaches nothing."""
    return all(abs(a) < eps for a in advantages)
