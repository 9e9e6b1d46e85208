"""Environments by name: ``make_env(spec)`` builds one from a recipe's ``EnvSpec`` (``spec.args`` become keyword
arguments, checked against the constructor's parameters). No torch here: the orchestrator and the CLI import this.

Built in: reverse-digits, math, code, science, logic, calculator, python-tool (code and python-tool run the
model's code in ``intellect.sandbox``). Installed packages add more through the entry
point group ``intellect.environments`` (see ``registry``); ``register(name, factory)`` adds one in this process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from intellect.rl.envs.base import Environment, Rubric, Score, Task, Turn
from intellect.rl.envs.calculator import Calculator
from intellect.rl.envs.code_env import Code
from intellect.rl.envs.logic_env import Logic
from intellect.rl.envs.math_env import Math
from intellect.rl.envs.python_tool import PythonTool
from intellect.rl.envs.registry import GROUP, SpecProblem, available, build, check_spec, register
from intellect.rl.envs.reverse_digits import ReverseDigits
from intellect.rl.envs.science_env import Science

if TYPE_CHECKING:
    from intellect.recipe import EnvSpec

__all__ = [
    "GROUP",
    "Environment",
    "Rubric",
    "Score",
    "SpecProblem",
    "Task",
    "Turn",
    "available",
    "check_spec",
    "make_env",
    "register",
]


def make_env(spec: EnvSpec) -> Environment:
    """Build the environment a recipe names; EnvError (one line, saying what is allowed) on a bad name or
    argument, or when it cannot be built."""
    return build(spec.name, dict(spec.args))


for _cls in (ReverseDigits, Math, Calculator, Code, Science, Logic, PythonTool):
    register(_cls.name, _cls)
