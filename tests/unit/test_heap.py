"""``freeze_heap``: a role's start-up heap leaves the objects a full garbage collection walks.

Run in a fresh interpreter (freezing the pytest process would keep its garbage for the rest of the session).
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, logging
logging.basicConfig(level=logging.INFO)
import torch, transformers  # a role's start-up heap: the big imports
from intellect.rl.heap import freeze_heap
before = len(gc.get_objects())
frozen = freeze_heap("probe")
after = len(gc.get_objects())
junk = [[i] for i in range(1000)]
print(json.dumps({"before": before, "frozen": frozen, "after": after, "with_new": len(gc.get_objects())}))
"""


def test_frozen_start_up_objects_are_no_longer_walked() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["frozen"] > 100_000 and counts["frozen"] > 0.9 * counts["before"]
    assert counts["after"] < 1_000  # what a full collection now walks
    assert counts["with_new"] - counts["after"] >= 1_000  # objects made after the freeze are still collected
    assert "start-up objects frozen" in out.stderr
