"""Name -> regularizer/penalty registry.

Example:
    >>> from hwnas.regularizers import registry
    >>> @registry.register("my_zero")
    ... def my_zero(model, epoch=None, n_epochs=None):
    ...     return 0.0
    >>> registry.get("my_zero") is my_zero
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["register", "get", "names"]

_F = TypeVar("_F", bound=Callable[..., Any])
_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(*names: str) -> Callable[[_F], _F]:
    """Decorator: register a regularizer class or penalty function under one or more names."""
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"`names` must be non-empty strings, but got {names!r}")

    def deco(obj: _F) -> _F:
        for name in names:
            if name in _REGISTRY and _REGISTRY[name] is not obj:
                raise ValueError(
                    f"regularizer name {name!r} is already registered to {_REGISTRY[name]!r}"
                )
            _REGISTRY[name] = obj
        return obj

    return deco


def names() -> list[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Callable[..., Any]:
    """The regularizer or penalty registered as ``name``; KeyError lists the known names."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown regularizer {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]
