"""``python -m intellect.rl.inference --config RUN_DIR/recipe.resolved.yaml [--host H] [--port P]``."""

from __future__ import annotations

import argparse
import logging
import sys

from intellect.errors import IntellectError
from intellect.recipe import load_recipe
from intellect.rl.inference import default_port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m intellect.rl.inference", description=__doc__)
    parser.add_argument("--config", required=True, help="RUN_DIR/recipe.resolved.yaml")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default: all interfaces)")
    parser.add_argument("--port", type=int, default=None, help="default: roles.inference.port + offset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from intellect.rl.placement import announce

    announce("inference")
    from intellect.rl.failure import fail

    try:
        recipe = load_recipe(args.config)
    except IntellectError as exc:
        return fail("inference", exc)
    port = args.port if args.port is not None else default_port(recipe)
    if recipe.roles.inference.backend == "vllm":
        from intellect.rl.inference.vllm import launch

        return launch(recipe, args.host, port)
    from intellect.rl.inference.server import serve

    serve(recipe, args.host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
