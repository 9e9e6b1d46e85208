"""Environments by name: ``make_env(spec)`` builds one from a recipe's ``EnvSpec`` (``spec.args`` become keyword
arguments). No torch here: the orchestrator and the CLI import this.

Built in: reverse-digits, math, calculator, code. ``register(name, factory)`` adds more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from intellect.rl.envs.base import Environment, Rubric, Score, Task, Turn
from intellect.rl.envs.calculator import Calculator
from intellect.rl.envs.code_env import Code
from intellect.rl.envs.math_env import Math
from intellect.rl.envs.reverse_digits import ReverseDigits

if TYPE_CHECKING:
    from intellect.recipe import EnvSpec

__all__ = ["Environment", "Rubric", "Score", "Task", "Turn", "available", "make_env", "register"]

Factory = Callable[..., Environment]
_REGISTRY: dict[str, Factory] = {}


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``factory(**args)`` available as environment ``name``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(_REGISTRY)


def make_env(spec: EnvSpec) -> Environment:
    """Build the environment a recipe names; a bad name or argument raises ValueError saying what is allowed."""
    factory = _REGISTRY.get(spec.name)
    if factory is None:
        raise ValueError(f"unknown environment {spec.name!r}; known: {', '.join(available())}")
    _check_args(spec.name, factory, spec.args)
    return factory(**spec.args)


def _check_args(name: str, factory: Factory, args: dict[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p, v in params.items() if v.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(f"environment {name!r}: unknown args {unknown}; allowed: {', '.join(allowed)}")


for _cls in (ReverseDigits, Math, Calculator, Code):
    register(_cls.name, _cls)
