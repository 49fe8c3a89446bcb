"""Argument checks, written once: every public entry point checks its arguments with these.

Each raises :class:`~hwnas.errors.InvalidTypeError` for a wrong type and
:class:`~hwnas.errors.InvalidValueError` for a value out of range, worded as
"`name` must be ..., but got ...".

Example:
    >>> check_number("lr", 0.1, low=0.0, inclusive=False)
    0.1
    >>> check_int("patience", 0, 1)
    Traceback (most recent call last):
    ...
    hwnas.errors.InvalidValueError: `patience` must be an integer >= 1, but got 0
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from hwnas.errors import InvalidTypeError, InvalidValueError

__all__ = ["check_bool", "check_int", "check_number", "is_number"]


def is_number(value: Any) -> bool:
    """A real number (int, float, numpy scalar, one-element tensor), not a bool."""
    if hasattr(value, "numel") and hasattr(value, "item"):  # a one-element tensor
        return bool(value.numel() == 1) and not value.dtype.is_complex
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in ``[low, high]`` (``high`` None: no bound)."""
    where = f">= {low}" if high is None else f"in [{low}, {high}]"
    message = f"`{name}` must be an integer {where}, but got {value!r}"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise InvalidTypeError(message)
    number = int(value)
    if number < low or (high is not None and number > high):
        raise InvalidValueError(message)
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False."""
    if not isinstance(value, bool):
        raise InvalidTypeError(f"`{name}` must be True or False, but got {value!r}")
    return value


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 inclusive: bool = True) -> float:
    """``value`` as a float if it is a finite real number within ``low`` and ``high``
    (both bounds included, or both excluded with ``inclusive=False``)."""
    if not is_number(value):
        raise InvalidTypeError(f"`{name}` must be a number, but got {value!r}")
    number = float(value.item() if hasattr(value, "item") else value)
    below = low is not None and (number < low if inclusive else number <= low)
    above = high is not None and (number > high if inclusive else number >= high)
    if not math.isfinite(number) or below or above:
        if low is not None and high is not None:
            where = f" in {'[' if inclusive else '('}{low:g}, {high:g}{']' if inclusive else ')'}"
        elif low is not None:
            where = f" {'>=' if inclusive else '>'} {low:g}"
        elif high is not None:
            where = f" {'<=' if inclusive else '<'} {high:g}"
        else:
            where = ""
        raise InvalidValueError(f"`{name}` must be a finite number{where}, but got {value!r}")
    return number
