"""Output helpers: stdout carries data (JSON, scripts), stderr carries status, warnings and hints.

rich is imported lazily so that ``--json`` paths return before any rich code runs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def status_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def data_console() -> Any:
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def status(message: str) -> None:
    status_console().print(message)


def verbatim(text: object) -> str:
    """``text`` escaped for rich, so it prints as it is: a node's reason keeps its ``[intellect]`` marker (how a
    person tells automation's drains from their own), and a reason holding ``[bold]`` prints those characters.
    Everything that came from Slurm, a user or a node goes through this before rich sees it."""
    from rich.markup import escape

    return escape("" if text is None else str(text))


def error_line(message: str, hint: str | None = None) -> None:
    """One line: the error, then the next thing to try. Plain text: it must survive any terminal."""
    line = " ".join(f"error: {message}".split())
    if hint:
        line += f" (try: {hint})"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
