"""A role that fails says why in one line: on stderr (its log) and in ``RUN_DIR/status/<role>-<rank>.cause``,
which ``intellect jobs`` and ``intellect logs`` show, so nobody has to read a traceback to learn the cause.

Exit codes of the roles (``python -m intellect.rl.{inference,orchestrator,trainer}``):

    0    done
    1    an expected failure (a bad recipe, servers unreachable, a rollout step that never came)
    2    misuse (a bad flag or environment variable)
    4    an environment could not be built or its data read (EnvError: unknown name, bad argument, a dataset
         that fails to download, a reward function whose library is missing)
    130  interrupted
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from intellect.errors import IntellectError
from intellect.rl.layout import STATUS

CAUSE_SUFFIX = ".cause"


def role_rank() -> int:
    """This process's rank within its role: the batch script's INTELLECT_ROLE_RANK (server i of a per-node
    inference step), else Slurm's task id, else torchrun's RANK, else 0."""
    for var in ("INTELLECT_ROLE_RANK", "SLURM_PROCID", "RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def fail(role: str, exc: IntellectError, run_dir: str | Path | None = None, rank: int | None = None) -> int:
    """Report ``exc`` as one line on stderr and in the run directory; return the exit code to use."""
    line = printable(exc.message)
    if exc.hint:
        line += f" (try: {printable(exc.hint)})"
    print(f"{role}: error: {line}", file=sys.stderr, flush=True)
    folder = run_dir or os.environ.get("INTELLECT_RUN_DIR")
    if folder:
        path = Path(folder) / STATUS / f"{role}-{role_rank() if rank is None else rank}{CAUSE_SUFFIX}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(line + "\n")
        except OSError as err:
            print(f"{role}: cannot record the cause in {path}: {err.strerror}", file=sys.stderr)
    return exc.exit_code


def printable(text: str) -> str:
    """One line without control characters: a cause carries text from servers, datasets and plugins, and it is
    printed on terminals."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def read_causes(run_dir: str | Path) -> dict[str, str]:
    """``{"trainer-0": "one line", ...}`` for every role process of the run that recorded a failure."""
    out: dict[str, str] = {}
    for path in sorted(Path(run_dir, STATUS).glob(f"*{CAUSE_SUFFIX}")):
        try:
            out[path.name[: -len(CAUSE_SUFFIX)]] = printable(path.read_text(errors="replace"))
        except OSError:
            continue
    return out
