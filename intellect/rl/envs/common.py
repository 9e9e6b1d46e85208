"""Helpers shared by the built-in environments: hash splits, seeded sampling, tag parsing, verdicts, and the
bases of generated and file-backed environments."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from intellect.rl.envs.base import Environment, RewardFn, Rubric, Score, Task, Turn

T = TypeVar("T")

SPLITS = ("train", "eval")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def key_hash(key: str) -> str:
    """A short stable id for a task's key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def split_of(key: str, salt: str, eval_fraction: float) -> str:
    """'eval' or 'train' for ``key``, from a hash: the same key always lands in the same split."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


def sample_split(
    draw: Callable[[random.Random], tuple[str, T]],
    *,
    split: str,
    salt: str,
    size: int,
    seed: int,
    eval_fraction: float,
) -> list[tuple[str, T]]:
    """Up to ``size`` distinct (key, payload) pairs of ``split``, drawn with a seeded generator.

    ``draw`` returns a key (the text that must never appear in both splits) and anything needed to build the
    task. Sampling stops after ``20 * size`` draws, so a small key space yields all it can, deterministically.
    """
    rng = random.Random(f"{salt}:{split}:{seed}")
    seen: set[str] = set()
    out: list[tuple[str, T]] = []
    for _ in range(20 * size):
        key, payload = draw(rng)
        if key in seen or split_of(key, salt, eval_fraction) != split:
            continue
        seen.add(key)
        out.append((key, payload))
        if len(out) == size:
            break
    if not out:
        raise ValueError(f"{salt}: no {split} task could be drawn; widen the arguments")
    return out


def tag_contents(text: str, tag: str, allow_unclosed: bool = True) -> list[str]:
    """Contents of every ``<tag>...</tag>`` in order; an unclosed tag at the very end counts when allowed
    (servers drop the stop string that ended the turn)."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
    if allow_unclosed:
        tail = text.rsplit(f"</{tag}>", 1)[-1]
        match = re.search(rf"<{tag}>((?:(?!<{tag}>).)*)$", tail, flags=re.DOTALL)
        if match:
            found.append(match.group(1))
    return found


def assistant_texts(completion: str, transcript: Sequence[Turn]) -> list[str]:
    """The assistant turns of an episode; a single-turn episode is its completion."""
    turns = [t.text for t in transcript if t.role == "assistant"]
    return turns or [completion]


def verdict(score: Score, component: str) -> Score:
    """Set ``correct`` from one component (exactly 1.0) rather than from the weighted reward."""
    score.correct = not score.errors and score.components.get(component) == 1.0
    return score


class GeneratedEnv(Environment):
    """An environment whose tasks a seeded generator draws: each split is built once, and a task's key decides
    its split, so train and eval never share one. Subclasses set ``name``, ``default_size`` (per split),
    ``correct_by`` (the rubric component that decides ``Score.correct``) and ``rubric``, and implement
    ``_draw``."""

    default_size: ClassVar[dict[str, int]]
    correct_by: ClassVar[str]

    def __init__(self, *, split: str, size: int | None, seed: int, eval_fraction: float, **args: Any) -> None:
        super().__init__(**args, split=check_split(split), size=size, seed=seed)
        self.split, self.size, self.seed, self.eval_fraction = split, size, seed, eval_fraction
        self._cache: dict[str, list[Task]] = {}

    def tasks(self, split: str | None = None) -> Sequence[Task]:
        """The tasks of ``split`` (default: the ``split`` argument), in a fixed seeded order."""
        split = check_split(split or self.split)
        if split not in self._cache:
            self._cache[split] = self._build(split)
        return self._cache[split]

    def score(self, task: Task, completion: str, transcript: Sequence[Turn] = ()) -> Score:
        return verdict(super().score(task, completion, transcript), self.correct_by)

    def _build(self, split: str) -> list[Task]:
        pairs = sample_split(
            self._draw,
            split=split,
            salt=self.name,
            size=self.size or self.default_size[split],
            seed=self.seed,
            eval_fraction=self.eval_fraction,
        )
        return [task for _, task in pairs]

    def _draw(self, rng: random.Random) -> tuple[str, Task]:
        """One random task and its key (the text that must never appear in both splits)."""
        raise NotImplementedError


class DatasetEnv(GeneratedEnv):
    """A generated environment that can read its tasks from a local JSONL file (``path``) instead, one JSON
    object a line; a row's key decides its split and the first row of a key wins. Its rubric is a correctness
    reward (weight 1) and a format reward (``format_weight``): subclasses set them as ``rewards`` and implement
    ``_row``, which turns one parsed line into its key and task (None to skip it) and raises KeyError or
    TypeError on a row without ``fields``."""

    rewards: ClassVar[tuple[RewardFn, RewardFn]]
    fields: ClassVar[str]

    def __init__(
        self,
        path: str | None = None,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        eval_fraction: float = 0.15,
        format_weight: float = 0.1,
    ) -> None:
        super().__init__(path=path, split=split, size=size, seed=seed, eval_fraction=eval_fraction)
        self.path = path
        correct, form = self.rewards
        self.rubric = Rubric([(correct, 1.0), (form, format_weight)])

    def _build(self, split: str) -> list[Task]:
        return self._load(split) if self.path else super()._build(split)

    def _load(self, split: str) -> list[Task]:
        assert self.path is not None
        found: dict[str, Task] = {}
        with Path(self.path).open() as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    key, task = self._row(json.loads(line))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{self.path}:{line_no}: need a JSON object with {self.fields}") from exc
                if task is not None and split_of(key, self.name, self.eval_fraction) == split:
                    found.setdefault(key, task)
        tasks = list(found.values())
        return tasks[: self.size] if self.size else tasks

    def _row(self, item: Any) -> tuple[str, Task | None]:
        raise NotImplementedError
