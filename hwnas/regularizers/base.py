"""The plain cost regularizer and the helpers every regularizer shares.

A regularizer follows one protocol: ``reg(model, epoch=None, n_epochs=None) -> Tensor``.
``model`` is a search model: it exposes ``cost_names`` (a tuple of names) and
``cost(name)``, a differentiable scalar cost.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hwnas.regularizers import BaseRegularizer
    >>> class Tiny(nn.Module):
    ...     cost_names = ("params",)
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = nn.Parameter(torch.tensor(3.0))
    ...     def cost(self, name):
    ...         return 10 * self.w
    >>> BaseRegularizer("params", strength=0.5)(Tiny())
    tensor(15., grad_fn=<MulBackward0>)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

from hwnas.errors import InvalidTypeError, InvalidValueError, UnknownNameError
from hwnas.regularizers.registry import register

__all__ = ["BaseRegularizer", "as_real", "check_cost_names", "check_nonnegative"]


def as_real(name: str, value: float) -> float:
    """Return ``value`` as a float; TypeError unless it is a real number, ValueError if not finite.

    A one-element tensor (say a detached loss) is accepted and read with ``.item()``.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"`{name}` must be a real number, but got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidValueError(f"`{name}` must be finite, but got {value}")
    return value


def check_nonnegative(name: str, value: float) -> float:
    """Return ``value`` as a float; ValueError unless it is a finite number >= 0."""
    value = as_real(name, value)
    if value < 0:
        raise InvalidValueError(f"`{name}` must be >= 0, but got {value:g}")
    return value


def check_cost_names(model: Any, wanted: Iterable[str]) -> None:
    """KeyError naming the first cost in ``wanted`` that ``model.cost_names`` lacks."""
    known = tuple(model.cost_names)
    for name in wanted:
        if name not in known:
            raise UnknownNameError(f"unknown cost {name!r}; known: {', '.join(known)}")


@register("base")
class BaseRegularizer:
    """A constant-strength penalty on one cost: ``strength * model.cost(cost_name)``.

    Args:
        cost_name: name of the cost to penalise; checked against ``model.cost_names``
            when the regularizer is called.
        strength: the multiplier, >= 0.

    Example:
        >>> import torch
        >>> from hwnas.regularizers import BaseRegularizer
        >>> class Fake:
        ...     cost_names = ("params", "ops")
        ...     def cost(self, name):
        ...         return torch.tensor(1000.0)
        >>> reg = BaseRegularizer("params", strength=1e-3)
        >>> reg(Fake(), epoch=3, n_epochs=10)
        tensor(1.)
    """

    def __init__(self, cost_name: str, strength: float) -> None:
        if not isinstance(cost_name, str) or not cost_name:
            raise InvalidTypeError(f"`cost_name` must be a non-empty str, but got {cost_name!r}")
        self.cost_name = cost_name
        self.strength = check_nonnegative("strength", strength)

    def __call__(
        self, model: Any, epoch: int | None = None, n_epochs: int | None = None
    ) -> torch.Tensor:
        """The penalty ``strength * model.cost(cost_name)``; epochs are ignored."""
        check_cost_names(model, (self.cost_name,))
        return self.strength * model.cost(self.cost_name)

    def __repr__(self) -> str:
        return f"BaseRegularizer(cost_name={self.cost_name!r}, strength={self.strength:g})"
