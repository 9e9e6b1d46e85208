"""The inference role: one HTTP API (see ``intellect.rl``), two backends.

- ``embedded`` (CPU, tiny models): ``server.py`` over the continuous-batching ``engine.py``.
- ``vllm`` (GPU nodes): ``vllm.py`` starts vLLM's OpenAI server and fronts it with a thin proxy that adds
  ``POST /update_weights`` and ``/health`` with ``weight_step``.

``python -m intellect.rl.inference --config RUN_DIR/recipe.resolved.yaml`` picks the backend from
``roles.inference.backend``. Importing this package imports neither torch nor vllm.
"""

from __future__ import annotations

import os

from intellect.recipe import Recipe

PORT_OFFSET_ENV = "INTELLECT_PORT_OFFSET"


def default_port(recipe: Recipe) -> int:
    """``roles.inference.port`` plus ``$INTELLECT_PORT_OFFSET`` (several runs on one node)."""
    return recipe.roles.inference.port + int(os.environ.get(PORT_OFFSET_ENV, "0"))
