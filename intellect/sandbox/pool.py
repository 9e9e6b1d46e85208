"""A pool of sandboxes: at most ``size`` runs at once, and up to ``warm`` of one kind started ahead.

A warm sandbox is a ``Started`` run of the pool's ``template`` request (for the code environment: the test
harness, waiting for its job on stdin). A background thread keeps ``warm`` of them ready, so the sandbox's
start-up (namespaces, mounts, the interpreter's start) happens while the model is still generating and the
scorer only pays for the program itself. Runs of any other request start cold.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from importlib import metadata

from intellect.sandbox.api import Request, Result, Runner, SandboxError, Started
from intellect.sandbox.bwrap import BwrapRunner
from intellect.sandbox.unisolated import UnisolatedRunner

log = logging.getLogger(__name__)

GROUP = "intellect.sandboxes"  # entry points: a site's own runner (gVisor, a remote service), by name
BUILTIN = ("isolated", "unisolated")


def runner_kinds() -> list[str]:
    """The sandbox names an environment accepts: the built-in two, then those of installed packages."""
    return [*BUILTIN, *sorted(ep.name for ep in metadata.entry_points(group=GROUP) if ep.name not in BUILTIN)]


def make_runner(kind: str, python: str | None = None) -> Runner:
    """The runner a recipe names: ``isolated`` (bubblewrap), ``unisolated`` (no isolation; logged loudly), or
    the name of an entry point in ``intellect.sandboxes`` (a callable returning a Runner). ValueError when
    there is no such runner."""
    if kind == "unisolated":
        log.warning(
            "sandbox: running model-written code UNISOLATED (sandbox: unisolated): it can read and write "
            "this host's files as this user and reach the network"
        )
        return UnisolatedRunner(python)
    if kind == "isolated":
        return BwrapRunner(python)
    found = {ep.name: ep for ep in metadata.entry_points(group=GROUP)}
    if kind not in found:
        raise ValueError(f"sandbox {kind!r}: use one of {', '.join(runner_kinds())}")
    runner: Runner = found[kind].load()()
    return runner


def sandbox_preflight(kind: str, env: str) -> list[str]:
    """An environment's sandbox checked at launch, before anything is submitted: ArgProblem('sandbox') for an
    unknown name; warnings for running unisolated, or for a launch host that cannot isolate (the job's nodes
    must)."""
    from intellect.rl.envs.base import ArgProblem

    if kind not in runner_kinds():
        raise ArgProblem("sandbox", f"unknown sandbox {kind!r}; use one of {', '.join(runner_kinds())}")
    if kind == "unisolated":
        return [
            f"{env}: args.sandbox: unisolated runs model-written code WITHOUT isolation on the job's nodes"
        ]
    if kind != "isolated":
        return []
    try:
        BwrapRunner().check()
    except SandboxError as exc:
        return [
            f"{env}: this host cannot isolate model-written code ({exc}); the job's nodes must, or its roles fail at start"
        ]
    return []


class SandboxPool:
    """Runs requests through ``runner``, at most ``size`` at once (callers block for a slot)."""

    def __init__(self, runner: Runner, size: int = 8, warm: int = 0, template: Request | None = None) -> None:
        if size < 1:
            raise ValueError(f"SandboxPool size must be >= 1 (got {size})")
        self.runner = runner
        self.size = size
        self.warm = warm if template is not None else 0
        self.template = template
        self._slots = threading.BoundedSemaphore(size)
        self._ready: deque[Started] = deque()
        self._cond = threading.Condition()
        self._filler: threading.Thread | None = None
        self._closed = False
        self.warm_hits = self.cold_starts = 0

    def run(self, request: Request) -> Result:
        with self._slots:
            return self.runner.run(request)

    def run_template(self, stdin: bytes) -> Result:
        """Run the template with ``stdin``, on a sandbox started ahead when one is ready."""
        if self.template is None:
            raise ValueError("this pool has no template request")
        with self._slots:
            started = self._take() or self._cold()
            return started.finish(stdin)

    def _cold(self) -> Started:
        assert self.template is not None
        with self._cond:
            self.cold_starts += 1
        return self.runner.start(self.template)

    def _take(self) -> Started | None:
        """A warm sandbox that is still alive (one that died idle is dropped), or None."""
        if not self.warm:
            return None
        dead: list[Started] = []
        with self._cond:
            if self._filler is None and not self._closed:
                # the thread that starts a sandbox must outlive it (the kernel's parent-death signal is per
                # thread), so one long-lived thread starts them all
                self._filler = threading.Thread(target=self._fill, name="sandbox-warm", daemon=True)
                self._filler.start()
            started = None
            while self._ready and started is None:
                candidate = self._ready.popleft()
                if candidate.alive():
                    started = candidate
                else:
                    dead.append(candidate)
            self.warm_hits += started is not None
            self._cond.notify()
        for gone in dead:
            gone.cancel()
        return started

    def _fill(self) -> None:
        assert self.template is not None
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= self.warm:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                started = self.runner.start(self.template)
            except SandboxError as exc:
                log.warning("sandbox: could not start a warm sandbox: %s", exc)
                with self._cond:
                    self._cond.wait(1.0)
                continue
            with self._cond:
                if self._closed:
                    started.cancel()
                    return
                self._ready.append(started)

    def close(self) -> None:
        """Kill the sandboxes started ahead and stop starting more."""
        with self._cond:
            self._closed = True
            ready, self._ready = list(self._ready), deque()
            self._cond.notify_all()
        for started in ready:
            started.cancel()
        if self._filler is not None:
            self._filler.join(timeout=10)
