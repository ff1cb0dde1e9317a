"""Keyword options of registered factories (models, data sets, loss terms, schedules), checked by name.

The one place that answers "does this factory take an option called X?", so that a config's options can
be checked before anything is built or read, with the closest valid name in the error.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Iterable

from distillab.config import ConfigError
from distillab.registry import close_matches


def _own_parameters(fn: Callable) -> tuple[list[str], bool]:
    """(named keyword parameters, whether it also takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _init_chain(cls: type) -> list[Callable]:
    """The ``__init__`` methods of ``cls`` and its bases, most derived first, up to (not into) torch's own
    classes and ``object``, whose ``*args, **kwargs`` take nothing a config could set."""
    return [k.__init__ for k in cls.__mro__
            if "__init__" in vars(k) and k is not object and not k.__module__.startswith("torch")]


def options_of(factory: Callable, skip: Iterable[str] = ()) -> list[str] | None:
    """The keyword options ``factory`` accepts, or None when it takes any keyword.

    A ``**kwargs`` that is passed on is followed: for a class, to its base classes' ``__init__``; for a
    function, to the class named by its return annotation.
    """
    names: list[str] = []
    if inspect.isclass(factory):
        chain: list[Callable] = _init_chain(factory)
    else:
        chain = [factory]
        try:
            ret = typing.get_type_hints(factory).get("return")
        except (NameError, TypeError):
            ret = None
        if inspect.isclass(ret):
            chain += _init_chain(ret)
    open_ended = True
    for fn in chain:
        own, more = _own_parameters(fn)
        names += [n for n in own if n not in names]
        if not more:
            open_ended = False
            break
    if open_ended:
        return None
    return [n for n in names if n not in set(skip)]


def option_default(factory: Callable, name: str) -> Any:
    """The default of keyword option ``name`` of a registered factory (a class: its ``__init__``), or None
    where it has no such option or no default."""
    p = inspect.signature(factory).parameters.get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def check_options(factory: Callable, options: dict[str, Any], where: str, what: str,
                  skip: Iterable[str] = ()) -> None:
    """Refuse an option ``factory`` does not take, naming the closest valid one (``where.key`` in the message)."""
    valid = options_of(factory, skip)
    if valid is None:
        return
    for key in options:
        if key not in valid:
            matches = close_matches(key, valid)
            hint = f"did you mean {matches[0]!r}?" if matches else f"valid options: {', '.join(valid) or 'none'}"
            raise ConfigError(f"unknown option {where}.{key} for {what}: {hint}")


def construct(factory: Callable, options: dict[str, Any], where: str, what: str):
    """``factory(**options)``, with an unknown option named (and its closest valid one) before construction."""
    check_options(factory, options, where, what)
    try:
        return factory(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
