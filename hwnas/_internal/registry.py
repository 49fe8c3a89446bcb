"""One registry type: costs, slicers, channel rules and regularizers all use it.

A :class:`Registry` maps keys to values. Class keys are looked up along the class
hierarchy (``__mro__``), so a subclass of ``nn.Conv2d`` finds what is registered for
``nn.Conv2d``; any other key (a function, a name) is looked up exactly. A miss raises
:class:`~hwnas.errors.UnknownNameError` naming what is registered and how to add to it.

A registry is complete without import-order effects: ``providers`` names the modules
that register its built-in entries, and every read imports them first (once), so
``regularizers.get("functional")`` finds the DiffLUT regularizer whether or not
:mod:`hwnas.difflut` was imported before.

Example:
    >>> from torch import nn
    >>> reg = Registry("slicer", hint="hwnas.register_slicer")
    >>> reg.register(nn.modules.conv._ConvNd, "conv slicer")
    >>> reg.lookup(nn.Conv2d)
    'conv slicer'
    >>> try:
    ...     reg.get(nn.Linear)
    ... except KeyError as e:
    ...     print(e)
    no slicer registered for Linear; known: _ConvNd (add one with hwnas.register_slicer)
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterator
from typing import Generic, TypeVar

from hwnas.errors import InvalidValueError, UnknownNameError

__all__ = ["Registry", "key_name"]

V = TypeVar("V")

# One clock for every registry: a version is never reused, even across copies.
_CLOCK = itertools.count(1)


def key_name(key: object) -> str:
    """A readable name of a registry key: a class or function name, else ``str(key)``."""
    if isinstance(key, str):
        return key
    return getattr(key, "__name__", None) or str(key)


class Registry(Generic[V]):
    """Keys (classes along their MRO, or exact keys) to values.

    Args:
        what: What the values are, for messages ("cost", "slicer", "channel rule").
        hint: How a user adds an entry, for messages (e.g. ``"hwnas.register_slicer"``).
    """

    def __init__(self, what: str, hint: str = "", providers: tuple[str, ...] = (),
                 unique: bool = False) -> None:
        self.what = what
        self.hint = hint
        #: Modules that register the built-in entries, imported before the first read.
        self.providers = providers
        #: Refuse to register a key again with another value (names must stay unambiguous).
        self.unique = unique
        self._loaded = not providers
        self._table: dict[object, V] = {}
        #: Changes on every change (never to an earlier value), so caches of looked-up
        #: values can be keyed on it.
        self.version = next(_CLOCK)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a provider's own registrations read the registry
            for module in self.providers:
                importlib.import_module(module)

    def register(self, key: object, value: V) -> None:
        """Register ``value`` under ``key`` (replacing an earlier value, unless the
        registry is ``unique``: then another value under a known key is an error)."""
        if self.unique and key in self._table and self._table[key] is not value:
            raise InvalidValueError(f"{self.what} name {key_name(key)!r} is already "
                                    f"registered to {self._table[key]!r}")
        self._table[key] = value
        self.version = next(_CLOCK)

    def copy(self) -> Registry[V]:
        """An independent copy (with a new version), e.g. to restore after a test."""
        self._load()
        other: Registry[V] = Registry(self.what, self.hint, unique=self.unique)
        other._table = dict(self._table)
        return other

    def lookup(self, key: object) -> V | None:
        """The value for ``key``: along the MRO for a class, exact otherwise; None on a miss."""
        self._load()
        if isinstance(key, type):
            for cls in key.__mro__:
                if cls in self._table:
                    return self._table[cls]
            return None
        return self._table.get(key)

    def get(self, key: object) -> V:
        """Like :meth:`lookup`, but a miss raises an error that lists the known keys."""
        value = self.lookup(key)
        if value is None:
            hint = f" (add one with {self.hint})" if self.hint else ""
            raise UnknownNameError(
                f"no {self.what} registered for {key_name(key)}; known: "
                f"{', '.join(self.names()) or 'none'}{hint}"
            )
        return value

    def names(self) -> list[str]:
        """Sorted names of the registered keys."""
        self._load()
        return sorted(key_name(k) for k in self._table)

    def __contains__(self, key: object) -> bool:
        return self.lookup(key) is not None

    def __iter__(self) -> Iterator[object]:
        self._load()
        return iter(list(self._table))

    def __len__(self) -> int:
        self._load()
        return len(self._table)
