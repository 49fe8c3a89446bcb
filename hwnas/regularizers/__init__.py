"""Regularizers and penalties for the search, looked up by name.

A regularizer has one signature, ``reg(model, epoch=None, n_epochs=None) -> Tensor``,
where ``model`` exposes ``cost_names`` and a differentiable ``cost(name)``:

- ``"base"``: :class:`BaseRegularizer`, a constant strength times one cost.
- ``"duccio"``: :class:`DUCCIO`, hinge penalties on costs above their targets.
- ``"l0"``, ``"expected_l2"``: :func:`l0_penalty`, :func:`expected_l2_penalty` on the gates.

Penalties on functions and outputs: ``"gradient_penalty"`` (:func:`gradient_penalty`),
``"output_magnitude"`` (:func:`output_magnitude_penalty`). :class:`Every` applies a
penalty on every n-th call only.

Example:
    >>> import torch
    >>> from hwnas import regularizers
    >>> class Fake(torch.nn.Module):
    ...     cost_names = ("params", "ops")
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.logit = torch.nn.Parameter(torch.zeros(()))
    ...     def cost(self, name):
    ...         return 1000.0 * torch.sigmoid(self.logit)   # 500 at the start
    >>> reg = regularizers.get("duccio")({"params": 400.0}, task_loss=1.0)
    >>> loss = reg(Fake(), epoch=10, n_epochs=20)   # full strength 1/100 from epoch 10 on
    >>> round(loss.item(), 6)
    1.0
    >>> "duccio" in regularizers.names()
    True
"""

# importing the submodules registers their names
from hwnas.regularizers.base import BaseRegularizer
from hwnas.regularizers.duccio import DUCCIO
from hwnas.regularizers.penalties import (
    Every,
    expected_l2_penalty,
    gradient_penalty,
    l0_penalty,
    output_magnitude_penalty,
)
from hwnas.regularizers.registry import get, names, register

__all__ = [
    "BaseRegularizer",
    "DUCCIO",
    "Every",
    "expected_l2_penalty",
    "get",
    "gradient_penalty",
    "l0_penalty",
    "names",
    "output_magnitude_penalty",
    "register",
]
