"""LUT-layer kernels: the PyTorch reference and, on CUDA, fused Triton kernels.

:func:`interpolate` (the soft forward, differentiable in the table and the inputs) and
:func:`lookup` (the binary forward) choose by device: on a CUDA tensor, with Triton
installed, ``k <= FUSED_MAX_K`` and float32/bfloat16/float16 operands, the fused
kernels of :mod:`~hwnas.difflut.kernels.triton_lut` (never storing the ``2^k`` corners of
a sample; memory ``O(batch * nodes * k)``); everywhere else (CPU, ``meta``, float64, larger
``k``) the PyTorch functions of :mod:`~hwnas.difflut.kernels.reference`, which are their
specification. Triton is optional: it is imported only when a CUDA tensor asks for it.

Inputs: either ``x`` (batch, in_features) and ``index`` (nodes, k), the input each node
input reads (no gathered copy is made on the fused path), or ``x`` (batch, nodes, k) already
gathered and ``index=None``.

Example:
    >>> import torch
    >>> table, x = torch.rand(3, 16), torch.rand(2, 5)
    >>> index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [4, 3, 2, 1]])
    >>> gathered = x[:, index]                     # (2, 3, 4)
    >>> torch.equal(interpolate(table, x, index), interpolate(table, gathered))
    True
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch
from torch import Tensor

from hwnas.difflut.kernels import reference

__all__ = ["FUSED_MAX_K", "interpolate", "lookup", "triton_available", "uses_fused"]

#: Largest number of inputs per node the fused kernels are built for.
FUSED_MAX_K = 8
_DEFAULT_MAX_ELEMENTS = 2**23
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether Triton can be imported (checked once, without importing it).

    Example:
        >>> isinstance(triton_available(), bool)
        True
    """
    return importlib.util.find_spec("triton") is not None


def uses_fused(table: Tensor, x: Tensor) -> bool:
    """Whether :func:`interpolate` / :func:`lookup` run the fused kernels for these operands.

    Example:
        >>> import torch
        >>> uses_fused(torch.rand(4, 16), torch.rand(2, 4, 4))    # a CPU tensor
        False
    """
    k = (table.shape[-1]).bit_length() - 1
    return (x.device.type == "cuda" and 1 <= k <= FUSED_MAX_K and x.dtype in _FUSED_DTYPES
            and table.dtype in _FUSED_DTYPES and x.shape[0] > 0 and triton_available())


def _gathered(x: Tensor, index: Tensor | None) -> Tensor:
    if index is None:
        return x
    return x.index_select(1, index.reshape(-1)).reshape(x.shape[0], *index.shape)


def _columns(x: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
    """The fused kernels' operands: (batch, columns) inputs and the column of each input."""
    if index is not None:
        return x, index.reshape(-1)
    flat = x.reshape(x.shape[0], -1)
    return flat, torch.arange(flat.shape[1], device=x.device)


def interpolate(table: Tensor, x: Tensor, index: Tensor | None = None,
                max_elements: int = _DEFAULT_MAX_ELEMENTS) -> Tensor:
    """Soft forward of a LUT layer: (batch, nodes) in ``x``'s dtype.

    Args:
        table: Soft table values (nodes, 2^k).
        x: Inputs in ``[0, 1]``: (batch, in_features) with ``index``, or (batch, nodes, k).
        index: int64 (nodes, k): the input read by each node input, or None.
        max_elements: Largest intermediate of the PyTorch path before it works in chunks
            of nodes (:func:`~hwnas.difflut.kernels.reference.interpolate`).

    Example:
        >>> import torch
        >>> interpolate(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), torch.tensor([[[1.0, 0.5]]]))
        tensor([[2.]])
    """
    if uses_fused(table, x):
        from hwnas.difflut.kernels import triton_lut

        return triton_lut.interpolate(*_columns(x, index), table)
    return reference.interpolate(table.to(x.dtype), _gathered(x, index), max_elements)


def lookup(bits: Tensor, x: Tensor, index: Tensor | None = None) -> Tensor:
    """Binary forward of a LUT layer: ``bits[n, address(x >= 0.5)]``, (batch, nodes).

    Args:
        bits: The table as 0/1 values (nodes, 2^k); the result has its dtype.
        x: Inputs (batch, in_features) with ``index``, or (batch, nodes, k).
        index: int64 (nodes, k), or None.

    Example:
        >>> import torch
        >>> lookup(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), torch.tensor([[0.9, 0.2]]),
        ...        torch.tensor([[0, 1]]))
        tensor([[1.]])
    """
    if uses_fused(bits, x):
        from hwnas.difflut.kernels import triton_lut

        return triton_lut.lookup(*_columns(x, index), bits)
    return reference.lookup(bits, _gathered(x, index))
