"""Keep Python's cyclic garbage collector out of the steady state of a role process.

A role's heap after start-up (torch, transformers, FastAPI, the model, the datasets) holds millions of objects
that live until exit. Every full (generation 2) collection walks all of them: measured on the debug-cpu roles,
70-190 ms per collection with the whole process stopped, which is as long as a generation or a train step, and
it lands at random steps. ``freeze_heap`` collects once and moves everything alive to the permanent
generation (``gc.freeze``), so later collections only walk objects made during the run. Called once by each
role's entry point when start-up is done; library code and tests never call it (objects frozen in a
long-lived test process would never be collected if they became cyclic garbage).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_heap(role: str) -> int:
    """Collect, then freeze every surviving object; return how many are frozen."""
    start = time.monotonic()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%s: %d start-up objects frozen out of garbage collection (%.0f ms)", role, frozen,
             (time.monotonic() - start) * 1000)  # fmt: skip
    return frozen
