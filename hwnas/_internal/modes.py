"""Train/eval modes put back as they were: one context manager instead of a save-and-restore
pair at every place that evaluates a user's model.

Every module's own flag is restored (``model.train(was_training)`` would set all
submodules alike, losing a frozen BatchNorm the user had put in eval mode).

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).eval())
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training, net[1].training
    (True, False)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode", "kept_modes"]


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Whatever the block does to the modes, every module's mode is as before afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block, every module's mode as before after it."""
    with kept_modes(model):
        model.eval()
        yield model
