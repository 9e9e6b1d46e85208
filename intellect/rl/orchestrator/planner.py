"""Which batch each rollout group is generated for, and when a batch is complete (pure bookkeeping).

A group is started *for* a target batch b: the earliest batch, from the one being assembled up to the last,
whose accepted plus in-flight groups are fewer than ``groups_per_batch``. Its requests then only go to servers
running weights >= b-1-k, so every group meets the async bound of the batch it lands in. A dropped group
(stale, degenerate, failed) frees its place and the next group started fills it. With
``prompts_per_step x (1 + k)`` groups in flight, batches b..b+k are generated concurrently: continuous
batching up to the async bound.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic, TypeVar

G = TypeVar("G")


class BatchPlanner(Generic[G]):
    def __init__(self, first: int, last: int, groups_per_batch: int) -> None:
        if groups_per_batch < 1:
            raise ValueError(f"groups_per_batch must be >= 1 (got {groups_per_batch})")
        self.assembling = first
        self.last = last
        self.per_batch = groups_per_batch
        self.inflight: Counter[int] = Counter()
        self.accepted: dict[int, list[G]] = {}

    def planned(self, batch: int) -> int:
        return len(self.accepted.get(batch, ())) + self.inflight[batch]

    def next_target(self) -> int | None:
        """The batch the next group should be generated for, or None when every batch is fully planned."""
        for batch in range(self.assembling, self.last + 1):
            if self.planned(batch) < self.per_batch:
                return batch
        return None

    def start(self, batch: int) -> None:
        if batch < self.assembling or batch > self.last:
            raise ValueError(f"batch {batch} is outside {self.assembling}..{self.last}")
        self.inflight[batch] += 1

    def finish(self, batch: int, group: G | None) -> None:
        """A group for ``batch`` finished: kept (``group``) or dropped (None)."""
        if self.inflight[batch] <= 0:
            raise ValueError(f"no group in flight for batch {batch}")
        self.inflight[batch] -= 1
        if group is not None:
            self.accepted.setdefault(batch, []).append(group)

    def complete(self, batch: int) -> bool:
        return len(self.accepted.get(batch, ())) >= self.per_batch

    def take(self, batch: int) -> list[G]:
        """Hand over the complete batch being assembled; the next one becomes the one assembled."""
        if batch != self.assembling or not self.complete(batch):
            raise ValueError(f"batch {batch} is not the complete batch being assembled ({self.assembling})")
        self.assembling += 1
        return self.accepted.pop(batch)

    @property
    def groups_in_flight(self) -> int:
        return sum(self.inflight.values())
