"""Helpers shared by the built-in environments: hash splits, seeded sampling, tag parsing, verdicts."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence

from intellect.rl.envs.base import Environment, Score, Task, Turn

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
    draw: Callable[[random.Random], tuple[str, object]],
    *,
    split: str,
    salt: str,
    size: int,
    seed: int,
    eval_fraction: float,
) -> list[tuple[str, object]]:
    """Up to ``size`` distinct (key, payload) pairs of ``split``, drawn with a seeded generator.

    ``draw`` returns a key (the text that must never appear in both splits) and anything needed to build the
    task. Sampling stops after ``20 * size`` draws, so a small key space yields all it can, deterministically.
    """
    rng = random.Random(f"{salt}:{split}:{seed}")
    seen: set[str] = set()
    out: list[tuple[str, object]] = []
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


class DatasetEnv(Environment):
    """An environment whose tasks come from a local JSONL file (``path``) or, without one, from a seeded
    generator; train and eval never share a task. Subclasses set ``name`` and ``rubric`` and implement
    ``_generate(split)`` and ``_load(split)``, both returning tasks; each split is built once."""

    def __init__(
        self,
        path: str | None = None,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        eval_fraction: float = 0.15,
    ) -> None:
        super().__init__(path=path, split=check_split(split), size=size, seed=seed)
        self.path, self.split, self.size, self.seed = path, split, size, seed
        self.eval_fraction = eval_fraction
        self._cache: dict[str, list[Task]] = {}

    def tasks(self, split: str | None = None) -> Sequence[Task]:
        split = check_split(split or self.split)
        if split not in self._cache:
            self._cache[split] = self._load(split) if self.path else self._generate(split)
        return self._cache[split]

    def _generate(self, split: str) -> list[Task]:
        raise NotImplementedError

    def _load(self, split: str) -> list[Task]:
        raise NotImplementedError
