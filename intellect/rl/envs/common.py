"""Helpers shared by the built-in environments: hash splits, seeded sampling, tag parsing, verdicts, and the
bases of generated and file-backed environments."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from annotated_types import Ge, Interval

from intellect.rl.envs.base import ArgProblem, Environment, RewardFn, Rubric, Score, Task, Turn
from intellect.rl.envs.data import DataError, Source, check_source, read_rows

T = TypeVar("T")
log = logging.getLogger(__name__)

SPLITS = ("train", "eval")

# Argument types of environments: the registry turns these annotations into checks at launch.
Split = Literal["train", "eval"]
Fraction01 = Annotated[float, Interval(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Ge(0.0)]
PositiveInt = Annotated[int, Ge(1)]


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

    @classmethod
    def preflight(cls, args: dict[str, Any], role: str) -> list[str]:
        fraction = args.get("eval_fraction")
        if fraction is not None and role == "train" and fraction >= 1:
            raise ArgProblem(
                "eval_fraction", f"{fraction} holds every task out for evals, none is left to train on"
            )
        if fraction is not None and role == "eval" and fraction <= 0:
            raise ArgProblem(
                "eval_fraction", f"{fraction} holds no task out, so this eval has none; raise it (1 = all)"
            )
        return []

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
    """A generated environment that can read its tasks from a dataset instead (``data.Source``): a local JSONL,
    JSON or Parquet file or dataset folder, or a Hugging Face dataset id with ``subset`` and ``dataset_split``.

    ``columns`` maps the environment's fields (``fields``: field -> default column) to the dataset's columns;
    ``solve_rate_column`` with ``min_solve_rate``/``max_solve_rate`` filters rows by difficulty offline. A row's
    key decides its split (``eval_fraction`` of the keys are held out; 1 = the whole dataset is an eval set) and
    the first row of a key wins. The rubric is a correctness reward (weight 1) and a format reward
    (``format_weight``): subclasses set them as ``rewards`` and implement ``_row``, which turns one row (fields
    already renamed) into its key and task, or None to skip it."""

    rewards: ClassVar[tuple[RewardFn, RewardFn]]
    fields: ClassVar[dict[str, str]]

    def __init__(
        self,
        dataset: str | None = None,
        subset: str | None = None,
        dataset_split: str = "train",
        columns: dict[str, str] | None = None,
        solve_rate_column: str | None = None,
        min_solve_rate: Fraction01 = 0.0,
        max_solve_rate: Fraction01 = 1.0,
        split: Split = "train",
        size: PositiveInt | None = None,
        seed: int = 0,
        eval_fraction: Fraction01 = 0.15,
        format_weight: NonNegative = 0.1,
    ) -> None:
        super().__init__(dataset=dataset, split=split, size=size, seed=seed, eval_fraction=eval_fraction)
        self.source = _source(locals()) if dataset else None
        correct, form = self.rewards
        self.rubric = Rubric([(correct, 1.0), (form, format_weight)])

    @classmethod
    def preflight(cls, args: dict[str, Any], role: str) -> list[str]:
        warnings = super().preflight(args, role)
        if not args.get("dataset"):
            for arg in ("subset", "columns", "solve_rate_column"):
                if args.get(arg):
                    raise ArgProblem(arg, "applies to a dataset; set args.dataset too, or drop it")
            return warnings
        source = _source(args)
        check_source(source, cls.fields)
        needs = "datasets" if not source.is_local or Path(source.dataset).is_dir() else None
        needs = "pyarrow" if source.dataset.endswith(".parquet") else needs
        if needs and importlib.util.find_spec(needs) is None:
            raise ArgProblem(
                "dataset", f"reading it needs the Python module {needs}: pip install 'intellect[data]'"
            )
        return warnings

    def _build(self, split: str) -> list[Task]:
        if self.source is None:
            return super()._build(split)
        found: dict[str, Task] = {}
        skipped, first_skip = 0, ""
        for n, row in enumerate(read_rows(self.source, self.fields), 1):
            try:
                key, task = self._row(row)
            except (KeyError, TypeError, ValueError) as exc:
                skipped += 1
                first_skip = first_skip or f"row {n}: {type(exc).__name__}: {exc}"
                continue
            if task is not None and split_of(key, self.name, self.eval_fraction) == split:
                found.setdefault(key, task)
        where = f"dataset {self.source.describe()}"
        if skipped:
            log.warning(
                "%s: skipped %d rows that do not fit %s (first: %s)", where, skipped, self.name, first_skip
            )
        tasks = list(found.values())
        if not tasks:
            why = f"; {skipped} rows do not fit it, first {first_skip}" if skipped else ""
            raise DataError(
                f"{where}: no {split} rows for {self.name} (after the solve-rate filter and eval_fraction){why}"
            )
        return tasks[: self.size] if self.size else tasks

    def _row(self, item: dict[str, Any]) -> tuple[str, Task | None]:
        raise NotImplementedError


def _source(args: dict[str, Any]) -> Source:
    return Source(
        dataset=args["dataset"],
        subset=args.get("subset"),
        split=args.get("dataset_split") or "train",
        columns=args.get("columns") or {},
        solve_rate_column=args.get("solve_rate_column"),
        min_solve_rate=args.get("min_solve_rate", 0.0),
        max_solve_rate=args.get("max_solve_rate", 1.0),
    )
