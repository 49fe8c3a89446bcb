"""Argument checks shared by the DiffLUT modules."""

from __future__ import annotations

from typing import Any

from hwnas.errors import InvalidValueError


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an int in ``[low, high]``, else an InvalidValueError naming ``name``.

    Example:
        >>> check_int("k", 3, 1, 12)
        3
    """
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        where = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidValueError(f"`{name}` must be an integer {where}, but got {value!r}")
    return value
