"""Devices and precision: the one place that decides where and in what dtype things run.

The policy (``shared/DESIGN.md``): the model's device decides. :func:`device_of` reads it,
:func:`resolve_device` turns a user's ``device`` setting (``"auto"``, ``"cpu"``, ``"cuda"``,
``"cuda:1"``, ...) into a ``torch.device`` that exists on this machine, and
:func:`autocast` is the mixed-precision context of a training step (``"fp32"``: none).

Example:
    >>> import torch
    >>> resolve_device("cpu"), resolve_device(None, torch.nn.Linear(1, 1))
    (device(type='cpu'), device(type='cpu'))
    >>> with autocast(torch.device("cpu"), "bf16"):
    ...     torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype
    torch.bfloat16
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from hwnas.errors import InvalidTypeError, InvalidValueError

__all__ = ["DEVICE_CHOICES", "PRECISIONS", "autocast", "check_device", "check_precision",
           "describe_device", "device_of", "grad_scaler", "resolve_device", "to_device"]

#: The mixed-precision settings of ``FitConfig(precision=...)`` and their autocast dtypes.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}
#: What a ``device`` setting may be, for messages (any torch device string also works).
DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU without either."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a batch (nested tuples and lists) moved to ``device``; the rest as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def check_device(value: Any, what: str = "device") -> None:
    """InvalidTypeError / InvalidValueError unless ``value`` is None or a device string
    torch understands (availability is checked by :func:`resolve_device`)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidTypeError(f"`{what}` must be {DEVICE_CHOICES} (a string) or None, but "
                               f"got {value!r}")
    if value == "auto":
        return
    try:
        torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise InvalidValueError(f"`{what}` must be {DEVICE_CHOICES}, but got {value!r}") from e


def resolve_device(value: str | None, model: nn.Module | None = None) -> torch.device:
    """The device a run uses: ``value`` (``"auto"``: CUDA when available, else the CPU), or
    the model's device when ``value`` is None. A CUDA device gets its index (``cuda`` is the
    current one), so DistributedDataParallel and the caches see one name for it.

    Raises:
        InvalidValueError: the device does not exist on this machine.
    """
    check_device(value)
    if value is None:
        device = device_of(model) if model is not None else torch.device("cpu")
    elif value == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValueError(
                f"`device` {value or str(device)!r} is not available: this machine has no "
                "CUDA device (torch.cuda.is_available() is False); use 'cpu' or 'auto'")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise InvalidValueError(
                f"`device` {value!r} is not available: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}")
        device = torch.device("cuda", index)
    return device


def describe_device(device: torch.device) -> str:
    """``device`` for a person: ``"cuda:0 (NVIDIA H200)"``, ``"cpu"``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def check_precision(value: Any) -> None:
    """InvalidValueError unless ``value`` is one of :data:`PRECISIONS`."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise InvalidValueError(f"`precision` must be one of {', '.join(map(repr, PRECISIONS))}"
                                f", but got {value!r}")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` of ``precision`` on ``device``'s type; no context for ``"fp32"``."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """The gradient scaler of a run: active for ``"fp16"`` only (bf16 has float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
