"""The one exception tree of intellect.

Only the CLI turns these into exit codes (see ``intellect/cli/main.py``)::

    IntellectError                 exit 1  an expected failure; ``hint`` says what to try next
    ├── UsageError                 exit 2  misuse: a bad flag value, a bad hostlist, a missing argument
    ├── RecipeError                exit 1  a recipe that does not load or does not validate
    ├── LaunchError                exit 1  a launch that could not be planned or submitted
    ├── SlurmError                 exit 1  a Slurm command failed
    │   └── SlurmUnreachable       exit 3  slurmctld did not answer (down, unreachable, timed out)
    ├── RunError                   exit 1  a role of a run failed
    └── EnvError                   exit 4  an environment could not be built or its data read (inside a role:
        ├── DataError                      unknown name, bad argument, a dataset that fails to load, a reward
        └── SandboxError                   function that cannot import, a sandbox that cannot isolate or start;
            └── SandboxUnavailable         intellect.sandbox); the role writes the one-line cause to
                                           ``RUN_DIR/status/<role>-<rank>.cause``

Third-party errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class IntellectError(Exception):
    """An expected failure, reported as one line plus a hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, more: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.more = list(more)  # further problems of the same check, one line each

    def __str__(self) -> str:
        return self.message


class UsageError(IntellectError):
    """The command was misused (bad flag value, malformed hostlist...)."""

    exit_code = 2


class RecipeError(IntellectError):
    """A recipe file is missing, is not YAML, or fails validation."""


class LaunchError(IntellectError):
    """A launch could not be planned or submitted. Nothing was submitted."""


class SlurmError(IntellectError):
    """A Slurm command answered with an error."""


class SlurmUnreachable(SlurmError):
    """The Slurm controller could not be reached within the timeout."""

    exit_code = 3


class RunError(IntellectError):
    """A role of a run exited with an error."""


class EnvError(IntellectError):
    """An environment could not be built, or its dataset read, inside a role (one line: name and cause)."""

    exit_code = 4
