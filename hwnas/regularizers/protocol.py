"""What a regularizer may ask of a model, and what a training loop may ask of a regularizer.

A regularizer is ``reg(model, epoch=None, n_epochs=None) -> Tensor``. The model it is given
is described by these protocols, which :class:`hwnas.SearchModel` implements:

- :class:`CostModel`: ``cost_names`` and a differentiable ``cost(name)`` (BaseRegularizer,
  DUCCIO); :class:`BatchedCostModel` adds ``costs_of(names)``, several costs in one
  evaluation, which DUCCIO uses when the model has it;
- :class:`GatedModel`: ``expected_l0()`` and ``gated_weights()`` (the L0 and expected-L2
  penalties; :class:`hwnas.L0` implements it too).

A training loop asks a regularizer only what these protocols declare:

- :class:`Stateful`: ``state_dict()`` / ``load_state_dict()`` (checkpoints);
- :class:`Scheduled`: ``current_strengths(epoch, n_epochs)`` (history and progress).

Example:
    >>> import torch
    >>> from torch import nn
    >>> import hwnas
    >>> search = hwnas.wrap(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)),
    ...                     torch.randn(1, 3))
    >>> isinstance(search, CostModel), isinstance(search, GatedModel)
    (True, True)
    >>> isinstance(hwnas.DUCCIO({"params": 10.0}, task_loss=1.0), Scheduled)
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["BatchedCostModel", "CostModel", "GatedModel", "Regularizer", "Scheduled", "Stateful"]


@runtime_checkable
class CostModel(Protocol):
    """A model with named, differentiable costs."""

    cost_names: tuple[str, ...]

    def cost(self, name: str, mode: str | None = None) -> torch.Tensor:
        """The differentiable total cost ``name``."""
        ...


@runtime_checkable
class BatchedCostModel(CostModel, Protocol):
    """A cost model that evaluates several costs at once (a regularizer prefers it)."""

    def costs_of(self, names: Sequence[str], mode: str | None = None) -> torch.Tensor:
        """The costs ``names`` as one vector, in that order."""
        ...


@runtime_checkable
class GatedModel(Protocol):
    """A model whose weights are multiplied by hard-concrete gates."""

    def expected_l0(self) -> torch.Tensor:
        """Expected number of open gates, differentiable."""
        ...

    def gated_weights(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(weight, P(z != 0))`` pairs, the probability broadcastable to the weight."""
        ...


@runtime_checkable
class Regularizer(Protocol):
    """``reg(model, epoch=None, n_epochs=None) -> Tensor``."""

    def __call__(self, model: Any, epoch: int | None = None,
                 n_epochs: int | None = None) -> torch.Tensor:
        ...


@runtime_checkable
class Stateful(Protocol):
    """A regularizer whose state a checkpoint must keep."""

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ...


@runtime_checkable
class Scheduled(Protocol):
    """A regularizer whose strengths follow a schedule over the epochs."""

    def current_strengths(self, epoch: int | None = None,
                          n_epochs: int | None = None) -> dict[str, float]:
        ...
