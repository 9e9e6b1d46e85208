"""Environments by name: the built-in ones and those of installed packages (entry point group
``intellect.environments``), found the same way in the CLI and in every role.

An environment's arguments are its constructor's parameters: their annotations (with ``Annotated[...,
Field(ge=..., le=...)]`` for ranges) and defaults are turned into a strict pydantic model, so a recipe's
``args`` are checked for names, types and ranges before anything is submitted, and a plugin gets the same checks
for free. No torch here.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."intellect.environments"]
    my-env = "my_pkg.envs:MyEnv"     # an Environment subclass, or a function returning an Environment
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import json
import typing
from collections.abc import Callable
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from intellect.errors import EnvError
from intellect.rl.envs.base import ArgProblem, Environment

GROUP = "intellect.environments"

Factory = Callable[..., Environment]
_BUILTIN: dict[str, Factory] = {}


class SpecProblem(EnvError):
    """A recipe's environment entry is wrong: ``field`` is its path within the entry (``name``,
    ``args.dataset``)."""

    def __init__(
        self, field: str, message: str, hint: str | None = None, others: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.field = field
        self.others = others or []  # further (field, message) problems of the same entry


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``factory(**args)`` available as environment ``name`` (in this process only; packages use the
    entry point group so that every role finds them)."""
    if name in _BUILTIN and not replace:
        raise ValueError(f"environment {name!r} is already registered")
    _BUILTIN[name] = factory
    args_model.cache_clear()


@functools.cache
def _plugins() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def refresh_plugins() -> None:
    """Forget the entry points read so far (after a package is installed into a running process)."""
    _plugins.cache_clear()
    args_model.cache_clear()


def available() -> list[str]:
    return sorted({*_BUILTIN, *_plugins()})


def factory_for(name: str) -> Factory:
    """The factory of environment ``name``; SpecProblem('name') with a close match when there is none."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    ep = _plugins().get(name)
    if ep is None:
        known = available()
        guess = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {guess[0]!r}?" if guess else f"known: {', '.join(known)}"
        raise SpecProblem("name", f"unknown environment {name!r}; {hint}")
    try:
        loaded = ep.load()
    except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is one line
        dist = ep.dist.name if ep.dist else "?"
        raise SpecProblem(
            "name", f"environment {name!r} (package {dist}) cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(loaded):
        raise SpecProblem("name", f"environment {name!r}: entry point {ep.value} is not callable")
    return typing.cast(Factory, loaded)


@functools.cache
def args_model(factory: Factory) -> tuple[type[BaseModel], bool]:
    """A strict model of ``factory``'s keyword arguments, and whether it also takes ``**kwargs``.

    A class whose constructor ends in ``**kwargs`` and passes them up (``def __init__(self, extra=1, **data)``)
    takes its bases' parameters too: they are collected up the MRO until a constructor without ``**kwargs``."""
    fields: dict[str, Any] = {}
    open_ended = True
    for target in _constructors(factory):
        params, hints = _params(target)
        open_ended = False
        for name, param in params:
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif param.kind is not inspect.Parameter.VAR_POSITIONAL and name not in fields:
                default = ... if param.default is inspect.Parameter.empty else param.default
                fields[name] = (hints.get(name, Any), default)
        if not open_ended:
            break
    config = ConfigDict(extra="allow" if open_ended else "forbid", strict=True, arbitrary_types_allowed=True)
    name = f"{getattr(factory, '__name__', 'env')}Args"
    try:
        return create_model(name, __config__=config, **fields), open_ended
    except Exception:  # noqa: BLE001 - an annotation pydantic cannot model: check the names, accept any value
        loose: dict[str, Any] = {k: (object, default) for k, (_, default) in fields.items()}
        return create_model(name, __config__=config, **loose), open_ended


def _constructors(factory: Factory) -> list[Callable[..., Any]]:
    """The function itself, or the ``__init__`` each class of the MRO defines (below Environment's)."""
    if not inspect.isclass(factory):
        return [factory]
    return [
        c.__dict__["__init__"] for c in factory.__mro__ if "__init__" in c.__dict__ and c is not Environment
    ]


def _params(target: Callable[..., Any]) -> tuple[list[tuple[str, inspect.Parameter]], dict[str, Any]]:
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - an unresolvable annotation means: accept any value
        hints = {}
    params = [(n, p) for n, p in inspect.signature(target).parameters.items() if n != "self"]
    return params, hints


def validate_args(factory: Factory, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` checked against the factory's parameters, with defaults filled in; SpecProblem('args.X')."""
    model, _ = args_model(factory)
    try:  # JSON mode: strict, yet a string is a Path and a list a tuple, as a recipe can only write them
        valid = model.model_validate_json(json.dumps(args, default=str))
    except ValidationError as exc:
        found = [(_arg_path(err["loc"]), _arg_message(model, err)) for err in exc.errors()]
        raise SpecProblem(found[0][0], found[0][1], others=found[1:]) from exc
    extra = valid.model_extra or {}
    return {**{name: getattr(valid, name) for name in type(valid).model_fields}, **extra}


def _arg_path(loc: tuple[int | str, ...]) -> str:
    out = "args"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _arg_message(model: type[BaseModel], err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = list(model.model_fields)
        guess = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"allowed: {', '.join(allowed)}"
        return f"unknown argument; {hint}"
    if kind == "missing":
        return "missing; this environment needs it"
    if kind == "literal_error" and err["loc"] == ("split",):
        return (
            f"{err['input']!r} is not a split: use 'train' or 'eval'; a benchmark is a dataset of its own "
            "(args.dataset, with eval_fraction: 1)"
        )
    bounds = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
    if kind in bounds:
        return f"must be {bounds[kind]} {next(iter(ctx.values()))} (got {err['input']!r})"
    return f"{err['msg'].lower()} (got {err['input']!r})"


def check_requires(name: str, factory: Factory, load: bool = False) -> None:
    """SpecProblem('name') when a library the environment's rubric imports is not installed here; with
    ``load`` (in a role, which needs it anyway) also when it is installed but fails to import."""
    for module, extra in getattr(factory, "requires", ()):
        if importlib.util.find_spec(module) is None:
            raise SpecProblem(
                "name",
                f"environment {name!r} needs the Python module {module}: pip install 'intellect[{extra}]'",
            )
        if load:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - a broken install of any kind is one line
                raise SpecProblem(
                    "name",
                    f"environment {name!r}: its reward library {module} cannot be imported: "
                    f"{type(exc).__name__}: {exc}",
                    hint=f"pip install --force-reinstall 'intellect[{extra}]'",
                ) from exc


def check_spec(name: str, args: dict[str, Any], role: str) -> list[str]:
    """Everything about one recipe entry that can be known before submission; warnings for the rest."""
    factory = factory_for(name)
    check_requires(name, factory)
    valid = validate_args(factory, args)
    preflight = getattr(factory, "preflight", None)
    if preflight is None:
        return []
    try:
        return list(preflight(valid, role))
    except ArgProblem as exc:
        raise SpecProblem(f"args.{exc.arg}", str(exc)) from exc


def build(name: str, args: dict[str, Any]) -> Environment:
    """The environment ``name`` built with ``args``; EnvError (one line) on any failure."""
    factory = factory_for(name)
    check_requires(name, factory, load=True)
    valid = validate_args(factory, args)
    try:
        return factory(**{k: valid[k] for k in args})
    except EnvError:
        raise
    except (ValueError, TypeError, ImportError, OSError) as exc:
        raise EnvError(f"environment {name!r}: {exc}") from exc
