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
PORT_STRIDE_ENV = "INTELLECT_PORT_STRIDE"


def default_port(recipe: Recipe) -> int:
    """``roles.inference.port`` plus an offset when several servers share one address.

    ``$INTELLECT_PORT_OFFSET`` wins (the local executor sets it per rank); inside a Slurm step the offset is
    ``SLURM_PROCID x $INTELLECT_PORT_STRIDE``, the stride being 1 only when the allocation's nodes share an
    address (several slurmd on one host) and 0 on a real cluster.
    """
    if PORT_OFFSET_ENV in os.environ:
        return recipe.roles.inference.port + int(os.environ[PORT_OFFSET_ENV])
    stride = int(os.environ.get(PORT_STRIDE_ENV, "0"))
    return recipe.roles.inference.port + int(os.environ.get("SLURM_PROCID", "0")) * stride
