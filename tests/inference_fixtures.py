"""Fixtures shared by the tests of the embedded inference server: a test module loads them with
``pytest_plugins = ["tests.inference_fixtures"]`` (and imports nothing else from here, so that pytest can
rewrite this module's asserts).

``server`` runs ``app_for(recipe)`` over real HTTP (uvicorn on 127.0.0.1) for the whole module: the module
defines a module-scoped ``recipe`` fixture. A plugin's autouse fixture would apply to every test of the session,
so a module asks for ``one_thread`` itself: ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from intellect.recipe import Recipe
from intellect.rl.inference.server import BackgroundServer, app_for


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """As the server process does (``configure_threads``): small matmuls are fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server(recipe: Recipe, one_thread: None) -> Iterator[BackgroundServer]:
    with BackgroundServer(app_for(recipe)) as srv:
        yield srv
