"""Name -> regularizer/penalty registry (one :class:`~hwnas._internal.registry.Registry`).

The built-in names (``base``, ``duccio``, the penalties, and DiffLUT's ``functional*``
regularizers) are found whether or not their modules were imported before.

Example:
    >>> from hwnas.regularizers import registry
    >>> @registry.register("my_zero")
    ... def my_zero(model, epoch=None, n_epochs=None):
    ...     return 0.0
    >>> registry.get("my_zero") is my_zero
    True
    >>> "functional_exact" in registry.names()
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hwnas._internal.registry import Registry
from hwnas.errors import InvalidValueError, UnknownNameError

__all__ = ["REGULARIZERS", "get", "names", "register"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: Name -> regularizer class or penalty function.
REGULARIZERS: Registry[Callable[..., Any]] = Registry(
    "regularizer", hint="hwnas.regularizers.register",
    providers=("hwnas.regularizers.base", "hwnas.regularizers.duccio",
               "hwnas.regularizers.penalties", "hwnas.difflut.sensitivity"),
    unique=True)


def register(*names: str) -> Callable[[_F], _F]:
    """Decorator: register a regularizer class or penalty function under one or more names."""
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidValueError(f"`names` must be non-empty strings, but got {names!r}")

    def deco(obj: _F) -> _F:
        for name in names:
            REGULARIZERS.register(name, obj)
        return obj

    return deco


def names() -> list[str]:
    """All registered names, sorted."""
    return REGULARIZERS.names()


def get(name: str) -> Callable[..., Any]:
    """The regularizer or penalty registered as ``name``; an error lists the known names."""
    found = REGULARIZERS.lookup(name)
    if found is None:
        raise UnknownNameError(f"unknown regularizer {name!r}; known: {', '.join(names())}")
    return found
