"""Peak tensor memory of a computation on any device (the CPU has no allocator statistics).

:class:`TensorMemory` is a dispatch mode that adds up the storages the operators inside it
create and frees them when they die, so :func:`peak_bytes` gives the largest total of tensor
bytes a function (and the backward it runs) held at once, beyond what existed before. The
benchmark and the tests use it to compare the memory of the LUT-layer paths.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["TensorMemory", "peak_bytes"]


class TensorMemory(TorchDispatchMode):
    """Tracks the bytes of the storages created inside the mode: ``current`` and ``peak``."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:
            return
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out


def peak_bytes(fn: Callable[[], Any]) -> int:
    """The most tensor bytes ``fn()`` held at once (storages it created).

    Example:
        >>> import torch
        >>> peak_bytes(lambda: torch.ones(1000) * 2)    # two 4000-byte tensors at once
        8000
    """
    with TensorMemory() as mode:
        fn()
    return mode.peak
