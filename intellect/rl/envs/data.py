"""Rows of a dataset: a local JSONL, JSON or Parquet file, a local dataset folder, or a Hugging Face dataset id
with a subset and a split (through the ``datasets`` library, the ``data`` extra).

Two halves, one module:

- ``check_source`` runs at ``intellect launch`` time, before anything is submitted. It proves what can be known
  offline (the file exists, is readable, parses, has the mapped columns); a hub id only the job can reach.
- ``read_rows`` runs in the roles. Every failure (no such file, a download that fails, a missing column) is a
  ``DataError``: one line naming the dataset and the cause.

Column names are mapped: ``columns`` maps an environment's field (``question``) to the dataset's column
(``problem``). Offline difficulty filtering keeps rows whose solve-rate column lies in [min, max], as INTELLECT-3
did with the ``avg@8_qwen3_4b_instruct_2507`` columns of ``PrimeIntellect/INTELLECT-3-RL``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intellect.errors import EnvError
from intellect.rl.envs.base import ArgProblem

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(EnvError):
    """A dataset could not be read: the message names the dataset and the cause."""


@dataclass(frozen=True)
class Source:
    """Where an environment's rows come from, and which of them it keeps."""

    dataset: str
    subset: str | None = None
    split: str = "train"
    columns: Mapping[str, str] = field(default_factory=dict)
    solve_rate_column: str | None = None
    min_solve_rate: float = 0.0
    max_solve_rate: float = 1.0

    @property
    def is_local(self) -> bool:
        return is_local(self.dataset)

    def describe(self) -> str:
        parts = [self.dataset] + ([f"subset {self.subset}"] if self.subset else [])
        return " ".join(parts) + (f" split {self.split}" if not self.is_local else "")


def is_local(name: str) -> bool:
    """A path on this machine (absolute or relative, a file with a known suffix, or something that exists)
    rather than a Hugging Face id (``org/name``, or a legacy id such as ``gpt2``)."""
    if name.startswith(("/", "./", "../", "~")) or name.endswith(FILE_SUFFIXES):
        return True
    return Path(name).exists()


def check_source(src: Source, needed: Mapping[str, str]) -> None:
    """Check what can be known offline (nothing, for a hub id); raise ArgProblem naming the argument.

    ``needed`` maps each required field to its default column name; ``src.columns`` overrides them."""
    unknown = sorted(set(src.columns) - set(needed))
    if unknown:
        raise ArgProblem(
            f"columns.{unknown[0]}",
            f"not a field of this environment; map one of {', '.join(sorted(needed))}",
        )
    if src.min_solve_rate > src.max_solve_rate:
        raise ArgProblem(
            "min_solve_rate",
            f"{src.min_solve_rate} is above max_solve_rate {src.max_solve_rate}; no row could pass",
        )
    if not src.is_local:
        return
    path = Path(src.dataset).expanduser()
    if not path.exists():
        raise ArgProblem("dataset", f"{path}: no such file or folder; give a .jsonl/.json/.parquet path")
    if path.is_dir():
        if not any(path.iterdir()):
            raise ArgProblem("dataset", f"{path}: the folder is empty")
        return
    if path.suffix not in FILE_SUFFIXES:
        raise ArgProblem("dataset", f"{path}: unknown format; use one of {', '.join(FILE_SUFFIXES)}")
    if src.subset is not None:
        raise ArgProblem("subset", "a local file has no subsets; drop it")
    if src.split != "train":
        raise ArgProblem("dataset_split", "a local file is one split; drop it (eval_fraction holds rows out)")
    try:
        first = next(iter(_file_rows(path, limit=1)), None)
    except DataError as exc:
        raise ArgProblem("dataset", exc.message) from exc
    if first is None:
        raise ArgProblem("dataset", f"{path}: holds no rows")
    wanted = {f: src.columns.get(f, default) for f, default in needed.items()}
    if src.solve_rate_column:
        wanted["solve_rate_column"] = src.solve_rate_column
    for fld, column in wanted.items():
        if column not in first:
            arg = "solve_rate_column" if fld == "solve_rate_column" else f"columns.{fld}"
            raise ArgProblem(
                arg, f"column {column!r} is not in {path} (its columns: {', '.join(sorted(first))})"
            )


def read_rows(src: Source, needed: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """The source's rows with fields renamed to the environment's names, filtered by solve rate."""
    wanted = {f: src.columns.get(f, default) for f, default in needed.items()}
    for n, row in enumerate(_raw_rows(src), 1):
        if src.solve_rate_column:
            rate = row.get(src.solve_rate_column)
            if not isinstance(rate, int | float) or math.isnan(rate):
                continue
            if not src.min_solve_rate <= rate <= src.max_solve_rate:
                continue
        missing = [c for c in wanted.values() if c not in row]
        if missing:
            raise DataError(f"dataset {src.describe()}: row {n} has no column {missing[0]!r}")
        mapped = {f: row[c] for f, c in wanted.items()}
        yield {**{k: v for k, v in row.items() if k not in wanted.values()}, **mapped}


def _raw_rows(src: Source) -> Iterator[dict[str, Any]]:
    path = Path(src.dataset).expanduser()
    if src.is_local and path.is_file():
        yield from _file_rows(path)
        return
    if src.dataset.startswith(("/", "./", "../", "~")) and not path.exists():
        raise DataError(f"dataset {path}: no such file or folder on {_host()}")
    yield from _hf_rows(Source(**{**src.__dict__, "dataset": str(path) if src.is_local else src.dataset}))


def _host() -> str:
    import socket

    return socket.gethostname()


def _file_rows(path: Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    try:
        if path.suffix == ".parquet":
            yield from _parquet_rows(path, limit)
            return
        with path.open() as fh:
            if path.suffix == ".json":
                data = json.load(fh)
                rows = data if isinstance(data, list) else None
                if rows is None or not all(isinstance(r, dict) for r in rows):
                    raise DataError(f"{path}: a .json dataset is a list of objects")
                yield from rows[:limit]
                return
            count = 0
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{line_no}: not JSON ({exc.msg})") from exc
                if not isinstance(item, dict):
                    raise DataError(f"{path}:{line_no}: each line is a JSON object")
                yield item
                count += 1
                if limit is not None and count >= limit:
                    return
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc


def _parquet_rows(path: Path, limit: int | None) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'intellect[data]'") from exc
    try:
        table = pq.ParquetFile(path)
        seen = 0
        for batch in table.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield row
                seen += 1
                if limit is not None and seen >= limit:
                    return
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid (a ValueError) on a corrupt or cut file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc


def _hf_rows(src: Source) -> Iterator[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"dataset {src.describe()}: Hugging Face datasets need the 'datasets' library: "
            "pip install 'intellect[data]'"
        ) from exc
    try:
        ds = datasets.load_dataset(src.dataset, src.subset, split=src.split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; each becomes one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"dataset {src.describe()}: cannot load it: {first}") from exc
    for row in ds:
        yield dict(row)
