"""``python -m intellect.rl.orchestrator --config RUN_DIR/recipe.resolved.yaml`` (INFERENCE_URLS must be set).

Exit codes: 0 done (summary.json written), 1 an expected failure (bad recipe, servers unreachable, a task
crashed), 2 misuse, 4 an environment or its data failed (``intellect.rl.failure``), 130 interrupted. A failure is
one line on stderr and in ``RUN_DIR/status/orchestrator-0.cause``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys

from intellect.errors import IntellectError, UsageError


def inference_urls(value: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
    if not urls:
        raise UsageError("INFERENCE_URLS is empty", hint="export INFERENCE_URLS=http://node-3:8000,...")
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise UsageError(f"INFERENCE_URLS: not http(s) URLs: {', '.join(bad)}")
    return urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m intellect.rl.orchestrator", description=__doc__)
    parser.add_argument("--config", required=True, help="RUN_DIR/recipe.resolved.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("INTELLECT_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from intellect.rl.placement import announce

    announce("orchestrator")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from intellect.recipe import load_recipe
    from intellect.rl.heap import freeze_heap
    from intellect.rl.orchestrator.loop import Orchestrator

    try:
        recipe = load_recipe(args.config)
        urls = inference_urls(os.environ.get("INFERENCE_URLS", ""))
        addr = os.environ.get("INTELLECT_METRICS_ADDR", "0.0.0.0")
        ready = functools.partial(freeze_heap, "orchestrator")
        summary = asyncio.run(Orchestrator(recipe, urls, metrics_addr=addr, on_ready=ready).run())
    except IntellectError as exc:
        if os.environ.get("INTELLECT_DEBUG") == "1":
            raise
        from intellect.rl.failure import fail

        return fail("orchestrator", exc, rank=0)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
