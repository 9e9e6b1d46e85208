"""Running untrusted (model-written) code: one API, several runners.

``Runner.run(Request(argv, files, stdin, limits)) -> Result(stdout, stderr, exit_code, signal, wall_s, cpu_s,
stopped, limits_by, isolated, runner)``. ``BwrapRunner`` isolates with bubblewrap (see ``bwrap``);
``UnisolatedRunner`` does not, and is only used when asked for by name; a site adds its own (gVisor, a remote
sandbox service) as an entry point in ``intellect.sandboxes`` (``make_runner``). ``SandboxPool`` bounds how
many runs go at once and keeps sandboxes started ahead. ``harness.check_program`` scores a program against tests without
trusting anything the program prints or returns. Standard library only: roles import this without torch.
"""

from __future__ import annotations

from intellect.sandbox.api import (
    PYTHON,
    Limits,
    Request,
    Result,
    Runner,
    SandboxError,
    SandboxUnavailable,
    Started,
)
from intellect.sandbox.bwrap import BwrapRunner
from intellect.sandbox.pool import SandboxPool, make_runner, runner_kinds
from intellect.sandbox.unisolated import UnisolatedRunner

__all__ = [
    "PYTHON",
    "BwrapRunner",
    "Limits",
    "Request",
    "Result",
    "Runner",
    "SandboxError",
    "SandboxPool",
    "SandboxUnavailable",
    "Started",
    "UnisolatedRunner",
    "make_runner",
    "runner_kinds",
]
