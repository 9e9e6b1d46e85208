"""logic: procedural logic and reasoning tasks with verifiable scorers, from ``reasoning-gym`` (the ``logic``
extra; pinned, imported on first use).

With no ``dataset``, the tasks are drawn offline from reasoning-gym's generators named in ``tasks`` (with
``task_config[name]`` passed to each generator) and scored by that generator's own scorer. ``dataset`` reads
rows of the schema of the ``logic`` subset of ``PrimeIntellect/INTELLECT-3-RL``: a ``question`` column and an
``info`` column holding JSON with ``task_name`` (``task`` in older rows) and ``game_data_str``/``game_data``, a
JSON record with the gold ``answer`` and ``metadata``. Its solve rate is ``avg@16_qwen3_4b_instruct_2507``.
A row that reasoning-gym generated (its metadata names a ``source_dataset`` reasoning-gym knows) is scored by
reasoning-gym; any other row by an exact match with the gold answer after whitespace and case folding, since
the other task families' verifiers are not part of reasoning-gym. ``write_dataset`` exports generated tasks in
that schema, for offline runs and tests.

The answer is the last ``<answer>...</answer>``, else the last ``\\boxed{}``, else the completion's last line.
Reward: reasoning-gym's score (partial credit for some tasks; weight 1), plus ``solved_weight`` for a full score
and ``format_weight`` for giving an answer at all.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from intellect.errors import EnvError
from intellect.rl.envs.base import ArgProblem, Rubric, Task, Turn
from intellect.rl.envs.common import (
    DatasetEnv,
    Fraction01,
    NonNegative,
    check_split,
    key_hash,
    split_of,
    tag_contents,
)
from intellect.rl.envs.math_env import last_boxed

DEFAULT_SIZE = {"train": 2000, "eval": 200}
DEFAULT_TASKS = ("spell_backward",)
INSTALL = "pip install 'intellect[logic]'"


@functools.cache
def _gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as exc:
        raise EnvError(f"environment 'logic' needs reasoning-gym: {INSTALL}") from exc
    return reasoning_gym


@functools.cache
def known_tasks() -> list[str]:
    _gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def extract_answer(completion: str) -> str:
    tagged = tag_contents(completion, "answer")
    if tagged:
        return tagged[-1].strip()
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    lines = [ln for ln in completion.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _fold(text: str) -> str:
    return " ".join(str(text).split()).casefold()


@functools.lru_cache(maxsize=64)
def _scorer(task: str) -> Any:
    """A reasoning-gym dataset of ``task`` whose ``score_answer`` scores entries of that task."""
    return _gym().create_dataset(task, size=1, seed=0)


def logic_correct(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    answer = extract_answer(completion)
    entry = task.info["entry"]
    source = (entry.get("metadata") or {}).get("source_dataset")
    if source and source in known_tasks():
        return float(_scorer(source).score_answer(answer, entry))
    gold = entry.get("answer")
    return 1.0 if gold is not None and answer and _fold(answer) == _fold(gold) else 0.0


def logic_solved(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    """1 only for a full score: a bonus on top of reasoning-gym's partial credit (``solved_weight``)."""
    return 1.0 if logic_correct(task, completion, transcript) == 1.0 else 0.0


def answered(task: Task, completion: str, transcript: Sequence[Turn] = ()) -> float:
    return 1.0 if extract_answer(completion) else 0.0


class Logic(DatasetEnv):
    name = "logic"
    default_size = DEFAULT_SIZE
    requires = (("reasoning_gym", "logic"),)
    correct_by = "logic_correct"
    rewards = (logic_correct, answered)
    fields = {"question": "question", "info": "info"}

    def __init__(
        self,
        tasks: list[str] | None = None,
        task_config: dict[str, dict[str, Any]] | None = None,
        eval_fraction: Fraction01 = 0.1,
        format_weight: NonNegative = 0.0,
        solved_weight: NonNegative = 0.0,
        **data: Any,
    ) -> None:
        """``data``: the dataset arguments of DatasetEnv (checked from its signature)."""
        self.task_names = list(tasks or DEFAULT_TASKS)
        self.task_config = dict(task_config or {})
        super().__init__(eval_fraction=eval_fraction, format_weight=format_weight, **data)
        self.rubric = Rubric([(logic_correct, 1.0), (logic_solved, solved_weight), (answered, format_weight)])

    @classmethod
    def preflight(cls, args: dict[str, Any], role: str) -> list[str]:
        warnings = super().preflight(args, role)
        if args.get("dataset"):
            return warnings
        try:
            known = set(known_tasks())
        except EnvError as exc:
            raise ArgProblem("tasks", exc.message) from exc
        names = list(args.get("tasks") or DEFAULT_TASKS)
        configs = args.get("task_config") or {}
        for i, name in enumerate(names):
            if name not in known:
                import difflib

                guess = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"did you mean {guess[0]!r}?" if guess else "see reasoning_gym.factory.DATASETS"
                raise ArgProblem(f"tasks[{i}]", f"{name!r} is not a reasoning-gym task; {hint}")
        for name, config in configs.items():
            if name not in names:
                raise ArgProblem(
                    f"task_config.{name}", f"{name!r} is not in tasks; add it there or drop this"
                )
            try:
                _gym().create_dataset(name, size=1, seed=0, **config)
            except Exception as exc:  # noqa: BLE001 - reasoning-gym's configs raise TypeError/AssertionError
                raise ArgProblem(f"task_config.{name}", f"reasoning-gym refuses it: {exc}") from exc
        return warnings

    def _build(self, split: str) -> list[Task]:
        if self.source is not None:
            return super()._build(split)
        split = check_split(split)
        want = self.size or self.default_size[split]
        per_task = -(-want // len(self.task_names))
        tasks: list[Task] = []
        for name in self.task_names:
            tasks += self._generate(name, split, per_task)
        if not tasks:
            raise EnvError(f"logic: tasks {self.task_names} gave no {split} task; widen task_config")
        return tasks[:want]

    def _generate(self, name: str, split: str, count: int) -> list[Task]:
        """``count`` tasks of ``name`` whose questions hash into ``split``, drawn from one seeded generator."""
        pool = max(64, int(count / max(min(self.eval_fraction, 1 - self.eval_fraction), 0.01) * 1.5))
        try:
            data = _gym().create_dataset(name, size=pool, seed=self.seed, **self.task_config.get(name, {}))
        except EnvError:
            raise
        except Exception as exc:  # noqa: BLE001 - a generator that refuses its config is one line
            raise EnvError(f"logic: reasoning-gym task {name!r}: {exc}") from exc
        out: dict[str, Task] = {}
        for entry in data:
            question = str(entry["question"])
            if question in out or split_of(question, self.name, self.eval_fraction) != split:
                continue
            out[question] = _task(question, name, _plain(entry))
            if len(out) == count:
                break
        return list(out.values())

    def _row(self, item: dict[str, Any]) -> tuple[str, Task]:
        question = str(item["question"])
        info = item["info"]
        info = json.loads(info) if isinstance(info, str) else info
        if not isinstance(info, dict):
            raise ValueError("info is not a JSON object")
        task_name = info.get("task_name") or info.get("task") or "unknown"
        game = info.get("game_data_str") or info.get("game_data") or {}
        game = json.loads(game) if isinstance(game, str) else game
        if not isinstance(game, dict) or game.get("answer") is None:
            raise ValueError("game_data holds no object with an answer")
        entry = {
            "question": game.get("question", question),
            "answer": game.get("answer"),
            "metadata": game.get("metadata") or {},
        }
        return question, _task(question, str(task_name), entry)

    def reference(self, task: Task) -> str | None:
        answer = task.info["entry"].get("answer")
        return None if answer is None else str(answer)


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    """A reasoning-gym entry as JSON-safe data (its metadata may hold tuples or sets)."""
    return json.loads(json.dumps({k: entry[k] for k in ("question", "answer", "metadata")}, default=list))


def _task(question: str, task_name: str, entry: dict[str, Any]) -> Task:
    return Task(
        id=f"logic-{key_hash(question)}",
        prompt=question,
        answer=entry.get("answer"),
        info={"task_name": task_name, "entry": entry},
    )


def write_dataset(path: str | Path, tasks: Sequence[str], size: int, seed: int = 0) -> Path:
    """Generated tasks as rows of the INTELLECT-3-RL ``logic`` schema (JSONL, or Parquet by suffix), with a
    made-up solve-rate column ``avg@16_qwen3_4b_instruct_2507`` cycling through 0, 0.25, ..., 1."""
    rows = []
    for name in tasks:
        for i, entry in enumerate(_gym().create_dataset(name, size=size, seed=seed)):
            game = _plain(entry)
            info = {"task_name": name, "game_data_str": json.dumps(game)}
            rows.append(
                {
                    "question": game["question"],
                    "info": json.dumps(info),
                    "avg@16_qwen3_4b_instruct_2507": (i % 5) / 4,
                }
            )
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
