"""The learning rate of RL step N (``algorithm.lr_schedule``): a pure function of the step, so a resumed
trainer continues the schedule where its checkpoint left it with no scheduler state to save.

With W = ``warmup_steps``, S = ``algorithm.steps``, m = ``min_lr_ratio`` and lr = ``algorithm.learning_rate``:
steps 1..W ramp linearly, ``lr * N / W`` (step W trains at lr); after them, with p = (N - W) / (S - W) the
share of the decay done (1 at the last step):

    constant   lr
    linear     lr * (1 - (1 - m) * p)
    cosine     lr * (m + (1 - m) * (1 + cos(pi * p)) / 2)

so linear and cosine train the last step at ``m * lr``. The supervised warm-up has its own constant
learning rate (``algorithm.pretrain.learning_rate``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from intellect.recipe import Schedule


def lr_at(step: int, learning_rate: float, schedule: Schedule, total_steps: int) -> float:
    """The learning rate of RL step ``step`` (1..``total_steps``)."""
    if not 1 <= step <= total_steps:
        raise ValueError(f"step {step} is outside 1..{total_steps}")
    warmup = schedule.warmup_steps
    if step <= warmup:
        return learning_rate * step / warmup
    if schedule.kind == "constant" or total_steps == warmup:
        return learning_rate
    progress = (step - warmup) / (total_steps - warmup)
    floor = schedule.min_lr_ratio
    if schedule.kind == "linear":
        return learning_rate * (1.0 - (1.0 - floor) * progress)
    return learning_rate * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
