"""Passes over data without gradients: evaluation and BatchNorm recalibration.

A batch is ``(inputs, targets)`` or ``(x1, ..., xn, targets)``. :func:`evaluate` and
:func:`recalibrate_batchnorm_` are re-exported by :mod:`hwnas.training.fit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwnas._internal.devices import device_of, to_device
from hwnas._internal.modes import eval_mode
from hwnas.errors import InvalidTypeError, InvalidValueError

__all__ = ["correct", "correct_tensor", "device_of", "evaluate", "metrics",
           "recalibrate_batchnorm_", "split_batch", "to_device"]


def split_batch(batch: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    """``(inputs, targets)`` of one batch."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise InvalidTypeError(
            "each batch must be a (inputs, targets) pair (or (x1, ..., xn, targets)), "
            f"but got {type(batch).__name__}"
        )
    return tuple(batch[:-1]), batch[-1]


def correct_tensor(output: Any, target: Any) -> torch.Tensor | None:
    """Number of correct class predictions as a 0-d tensor on the output's device, or None
    when targets are not class indices."""
    if (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)
            and output.dim() == 2 and target.dim() == 1 and not target.is_floating_point()):
        return (output.argmax(1) == target).sum()
    return None


def correct(output: Any, target: Any) -> int | None:
    """Number of correct class predictions, or None when targets are not class indices."""
    found = correct_tensor(output, target)
    return None if found is None else int(found)


def metrics(model: Callable[..., Any], data: Iterable, loss_fn: Callable,
            device: torch.device, what: str = "data") -> dict[str, float]:
    """Mean loss (and accuracy) over ``data`` in the model's current modes, no gradients.

    Raises:
        InvalidValueError: ``data`` holds no batch.
    """
    total, n, right, counted = 0.0, 0, 0, 0
    with torch.no_grad():
        for batch in data:
            inputs, target = split_batch(to_device(batch, device))
            output = model(*inputs)
            size = inputs[0].shape[0]
            total += float(loss_fn(output, target)) * size
            n += size
            c = correct(output, target)
            if c is not None:
                right += c
                counted += size
    if n == 0:
        raise InvalidValueError(f"`{what}` is empty: it yielded no example")
    result = {"loss": total / n}
    if counted:
        result["accuracy"] = right / counted
    return result


def evaluate(
    model: nn.Module, data: Iterable, loss_fn: Callable | None = None, device: str | None = None,
    **forward_kwargs: Any,
) -> dict[str, float]:
    """Mean loss and accuracy (for class-index targets) of ``model`` in eval mode.

    ``forward_kwargs`` go to every forward call (``gates="off"`` evaluates a SearchModel
    without its gates). The model's train/eval mode is restored afterwards.

    Raises:
        InvalidValueError: ``data`` holds no batch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> data = [(torch.eye(3), torch.arange(3))]
        >>> evaluate(nn.Identity(), data)["accuracy"]
        1.0
    """
    dev = torch.device(device) if device else device_of(model)
    with eval_mode(model):
        forward = partial(model, **forward_kwargs) if forward_kwargs else model
        return metrics(forward, data, loss_fn or F.cross_entropy, dev)


def recalibrate_batchnorm_(
    model: nn.Module, data: Iterable, device: str | None = None, max_batches: int | None = None
) -> int:
    """Recompute every BatchNorm's running statistics on ``data`` with the eval-mode gates.

    During the search, BatchNorm statistics are accumulated under *sampled* gates; the
    exported architecture uses the deterministic ones, whose activations have other
    statistics. This re-estimates the statistics (a cumulative average over the batches)
    with the gates fixed, the standard recalibration for networks whose width changes.
    Weights are not touched. Returns the number of batches used.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> recalibrate_batchnorm_(net, [(torch.randn(8, 3) + 5, None)])
        1
        >>> bool(net[1].running_mean.abs().sum() > 0)
        True
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return 0
    dev = torch.device(device) if device else device_of(model)
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in data:
                if max_batches is not None and used >= max_batches:
                    break
                inputs = batch[:-1] if isinstance(batch, (list, tuple)) and len(batch) > 1 \
                    else (batch,)
                model(*to_device(tuple(inputs), dev))
                used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return used
