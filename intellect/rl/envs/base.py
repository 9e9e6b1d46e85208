"""Environment = dataset + parser + rubric (+ tools and turns).

This is the interface the orchestrator (rollouts, rewards, evals) and the trainer (supervised warm-up through
``reference``) rely on. Environments never import torch.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Task:
    """One prompt of a dataset. ``id`` is unique within its environment and split; key tasks by ``id``."""

    id: str
    prompt: str
    answer: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One message of a multi-turn transcript: role is 'assistant' (sampled) or 'tool' (environment)."""

    role: str
    text: str


@dataclass
class Score:
    """The rubric's verdict on one rollout."""

    reward: float
    components: dict[str, float]
    errors: list[str]
    correct: bool

    @property
    def failed(self) -> bool:
        """A reward function raised: the sample must be masked and the error counted, not scored 0 silently."""
        return bool(self.errors)


RewardFn = Callable[[Task, str, Sequence[Turn]], float]


class Rubric:
    """Weighted reward functions. A function that raises is recorded in ``Score.errors`` and logged."""

    def __init__(self, funcs: Sequence[tuple[RewardFn, float]], correct_threshold: float = 1.0) -> None:
        self.funcs = list(funcs)
        self.correct_threshold = correct_threshold
        self.error_count = 0

    def score(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> Score:
        components: dict[str, float] = {}
        errors: list[str] = []
        total = sum(w for _, w in self.funcs) or 1.0
        reward = 0.0
        for fn, weight in self.funcs:
            name = getattr(fn, "__name__", repr(fn))
            try:
                value = float(fn(task, completion, transcript))
            except Exception as exc:  # noqa: BLE001 - any failure of a reward function is counted
                self.error_count += 1
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                log.warning("reward function %s failed on task %s: %s", name, task.id, exc)
                continue
            components[name] = value
            reward += weight * value
        reward /= total
        return Score(
            reward=reward, components=components, errors=errors, correct=reward >= self.correct_threshold
        )


class ArgProblem(ValueError):
    """A bad environment argument found before submission: ``arg`` is its path under ``args`` (``dataset``,
    ``columns.question``), the message says what is wrong and how to fix it."""

    def __init__(self, arg: str, message: str) -> None:
        super().__init__(message)
        self.arg = arg


class Environment:
    """Base class. Subclasses set ``name``, build ``rubric`` and implement ``tasks``.

    Single-turn environments leave ``max_turns`` at 1 and ``respond`` returning None. Multi-turn environments
    return the tool's reply to the assistant's last turn from ``respond`` (the orchestrator appends it with
    completion mask 0 and asks the model again), or None when the episode is over.
    """

    name: str = "base"
    max_turns: int = 1
    stop: list[str] | None = None
    # (module, pip extra) pairs the rubric imports on first use; checked at launch and when the role builds it
    requires: tuple[tuple[str, str], ...] = ()
    # threads of its own for score() and respond(), for an environment that blocks on work elsewhere (a sandbox
    # pool of that size); 0: asyncio's shared default pool, which holds min(32, cores + 4) threads
    workers: int = 0

    def __init__(self, **args: Any) -> None:
        self.args = args
        self.rubric = Rubric([])
        self._executor: ThreadPoolExecutor | None = None

    def executor(self) -> ThreadPoolExecutor | None:
        """The pool that runs this environment's score() and respond() off the event loop (None: the default)."""
        if self.workers > 0 and getattr(self, "_executor", None) is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"env-{self.name}")
            weakref.finalize(self, self._executor.shutdown, wait=False)
        return getattr(self, "_executor", None)

    @classmethod
    def preflight(cls, args: dict[str, Any], role: str) -> list[str]:
        """Check validated ``args`` for ``role`` ('train' or 'eval') before a job is submitted, without building
        the environment. Raise ArgProblem for what would fail in the job; return warnings for what cannot be
        known here (a dataset only the job can download)."""
        return []

    def tasks(self, split: str = "train") -> Sequence[Task]:
        """A deterministic dataset for ``split`` ('train' or 'eval'); train and eval never share a task."""
        raise NotImplementedError

    def reference(self, task: Task) -> str | None:
        """A gold completion for supervised warm-up, where the environment has one."""
        return None

    def respond(self, task: Task, transcript: Sequence[Turn]) -> str | None:
        """The tool's reply to the last assistant turn, or None when the episode is done."""
        return None

    def score(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> Score:
        return self.rubric.score(task, completion, transcript)
