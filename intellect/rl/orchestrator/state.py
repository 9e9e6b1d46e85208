"""The orchestrator's state, saved with every batch and restored on resume (its one writer and reader).

``layout.write_rollouts(..., state=OrchestratorState(...).to_json())`` writes it to
``rollouts/step_N/orchestrator.json`` before STABLE; ``Orchestrator.open`` reads the one of the last complete batch
(``layout.read_orchestrator_state(run_dir, first - 1)``) and continues from it. Version 1:

    {
      "version": 1,
      "batch": 3,                          the batch it was saved with (the run resumes at batch 4)
      "seq": 41,                           groups started so far (the next group id is ...-g42)
      "counts": {"dropped_stale": 0, "dropped_off_policy": 2, "dropped_zero_adv": 5, "failed": 0,
                 "failed_groups": 0, "groups_started": 41, "tokens": 1804},
                                           ``telemetry.Counts`` as of the step record of that batch
      "pools": {"coin-flip": {"easy": [7, 2], "normal": [0, 3], "hard": [11]}},
                                           each seen task's pool by task index (``DifficultyPools.state``)
      "sampler": {"rng": [3, [625 ints], null],
                                           ``random.Random.getstate()`` of the task sampler
                  "again": [["coin-flip", 9, "normal"], ...],
                                           draws to make first: the reschedule queue, then the tasks of every
                                           group started but in no saved batch (in flight, or kept for a later
                                           batch), in the order they started
                  "tasks": {"coin-flip": 200}},
                                           tasks per environment: pools and draws of an environment whose count
                                           changed are not restored
      "control_rng": [3, [625 ints], null] the ``shuffle_rewards`` control experiment's RNG
    }

A state of another version is refused (``RunError``): a newer writer's state is not guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intellect.errors import RunError

VERSION = 1


@dataclass
class OrchestratorState:
    batch: int
    seq: int
    counts: dict[str, int]
    pools: dict[str, dict[str, list[int]]]
    sampler: dict[str, Any]
    control_rng: list[Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "batch": self.batch,
            "seq": self.seq,
            "counts": dict(self.counts),
            "pools": self.pools,
            "sampler": self.sampler,
            "control_rng": self.control_rng,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "orchestrator.json") -> OrchestratorState:
        version = data.get("version")
        if version != VERSION:
            raise RunError(
                f"{where}: orchestrator state version {version!r}; this orchestrator reads version {VERSION}",
                hint="resume with the intellect version that wrote the run, or start a new run directory",
            )
        try:
            return cls(
                batch=int(data["batch"]),
                seq=int(data["seq"]),
                counts={str(k): int(v) for k, v in data["counts"].items()},
                pools={
                    str(env): {str(p): [int(i) for i in v] for p, v in pools.items()}
                    for env, pools in data["pools"].items()
                },
                sampler=dict(data["sampler"]),
                control_rng=list(data["control_rng"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunError(f"{where}: malformed orchestrator state: {exc!r}") from exc


def rng_state(state: tuple[Any, ...]) -> list[Any]:
    """``random.Random.getstate()`` as JSON (a list)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_tuple(data: list[Any]) -> tuple[Any, ...]:
    """The inverse of ``rng_state``: what ``random.Random.setstate`` takes."""
    version, internal, gauss = data
    return int(version), tuple(int(x) for x in internal), gauss
