"""Shared test helpers. Markers are declared in pyproject.toml (--strict-markers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
FAKE_PYTHON = ROOT / "tests" / "fixtures" / "fake-python"


def load_module(path: Path):  # type: ignore[no-untyped-def]
    """A Python file that is not on the import path (an Ansible filter plugin or module), as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120):
    """Run the real ``intellect`` entry point in a subprocess (exit codes, stdout/stderr split)."""
    full_env = {k: v for k, v in os.environ.items() if k != "INTELLECT_DEBUG"}
    full_env.update({"NO_COLOR": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "intellect.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


_BUILTIN_INTERN = sys.intern


@pytest.fixture(autouse=True)
def _builtin_sys_intern():
    """Importing ansible.module_utils (the playbooks' modules are loaded in-process by some tests) swaps
    sys.intern for a patch object that breaks a later torch._dynamo import in the same process."""
    sys.intern = _BUILTIN_INTERN
    yield
