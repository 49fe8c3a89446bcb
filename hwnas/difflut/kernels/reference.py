"""The PyTorch LUT-layer functions: the specification of the fused kernels and the CPU path.

A layer of ``N`` LUT nodes with ``k`` inputs each reads, for every sample ``b`` and node
``n``, the inputs ``x[b, n, :]`` in ``[0, 1]`` and its table row ``table[n]`` (``2^k``
values, address ``a = sum_j bit_j 2^j``). Soft value: the multilinear interpolation
``sum_a table[n, a] * prod_j x_j^{a_j} (1 - x_j)^{1 - a_j}``; binary value: the table entry
at the address of the bits ``x >= 0.5``.

- :func:`fold`: the specification: one input at a time, most significant first, with
  ``torch.lerp`` (exact at the end points, so binary inputs read the table exactly).
  Its intermediates hold ``batch * nodes * 2^(k-1)`` values.
- :func:`split_interpolate`: the same function as two small corner-weight vectors per
  sample and node (the low ``k // 2`` and the high ``k - k // 2`` inputs) and one batched
  matrix product with the table: intermediates of ``batch * nodes * 2^ceil(k/2)`` values.
  Faster on the CPU from ``k = 5`` on (``reports/difflut_gpu.md``).
- :func:`interpolate`: the CPU path: :func:`split_interpolate` for ``k >= 5``, else
  :func:`fold`, over chunks of nodes when the intermediates would pass ``max_elements``.
- :func:`lookup`: the binary forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["SPLIT_FROM_K", "corner_weights", "fold", "interpolate", "lookup",
           "split_interpolate"]

#: From this many inputs per node on, the CPU path is :func:`split_interpolate`.
SPLIT_FROM_K = 5


def fold(table: Tensor, x: Tensor) -> Tensor:
    """Multilinear interpolation of ``table`` (N, 2^k) at ``x`` (B, N, k): (B, N).

    Folds one input at a time, most significant first: the table's two halves along the
    top address bit are blended with ``lerp`` by that input, halving the last dim each step.
    ``torch.lerp`` returns its end points exactly at weights 0 and 1, so binary inputs read
    the table exactly.

    Example:
        >>> import torch
        >>> fold(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), torch.tensor([[[1.0, 0.5]]]))
        tensor([[2.]])
    """
    t = table
    for i in range(x.shape[-1] - 1, -1, -1):
        half = t.shape[-1] // 2
        t = torch.lerp(t[..., :half], t[..., half:], x[..., i : i + 1])
    return t.squeeze(-1)


def corner_weights(x: Tensor) -> Tensor:
    """Weights of the ``2^m`` corners at ``x`` (..., m): (..., 2^m), corner ``a`` at index ``a``.

    Example:
        >>> import torch
        >>> corner_weights(torch.tensor([0.25, 1.0]))
        tensor([0.0000, 0.0000, 0.7500, 0.2500])
    """
    w = x.new_ones((*x.shape[:-1], 1))
    for j in range(x.shape[-1]):
        xj = x[..., j : j + 1]
        w = torch.cat([w - w * xj, w * xj], -1)
    return w


def split_interpolate(table: Tensor, x: Tensor) -> Tensor:
    """:func:`fold`'s function as ``sum_h w_high[h] * (w_low @ table[n])[h]``: (B, N).

    The ``k`` inputs are split into the low ``L = k // 2`` and the high ``H = k - L``; each
    sample and node gets the corner weights of both halves (``2^L`` and ``2^H`` values) and
    one batched matrix product over nodes reads the table as an (``2^L``, ``2^H``) matrix.
    On binary inputs the weights are exactly 0 and 1, so the table is read exactly.

    Example:
        >>> import torch
        >>> table, x = torch.rand(3, 32), torch.rand(4, 3, 5)
        >>> torch.allclose(split_interpolate(table, x), fold(table, x), atol=1e-6)
        True
    """
    nodes, k = table.shape[0], x.shape[-1]
    low = k // 2
    xt = x.transpose(0, 1)  # (N, B, k): one matrix product per node
    w_low = corner_weights(xt[..., :low])
    w_high = corner_weights(xt[..., low:])
    t = table.reshape(nodes, 2 ** (k - low), 2**low).transpose(1, 2)  # t[n, lo, hi]
    return (torch.bmm(w_low, t) * w_high).sum(-1).t()


def _chunked(fn: Callable[[Tensor, Tensor], Tensor], table: Tensor, x: Tensor,
             per_node: int, max_elements: int) -> Tensor:
    """``fn`` over chunks of nodes of at most ``max_elements // per_node`` nodes each."""
    nodes = x.shape[1]
    if per_node * nodes <= max_elements:
        return fn(table, x)
    step = max(1, max_elements // per_node)
    grad = torch.is_grad_enabled() and (table.requires_grad or x.requires_grad)
    outs = []
    for start in range(0, nodes, step):
        t, xs = table[start : start + step], x[:, start : start + step]
        if grad:  # recompute the chunk in backward instead of keeping its intermediates
            outs.append(checkpoint(fn, t, xs, use_reentrant=False))
        else:
            outs.append(fn(t, xs))
    return torch.cat(outs, dim=1)


def interpolate(table: Tensor, x: Tensor, max_elements: int) -> Tensor:
    """The CPU path of the soft forward: table (N, 2^k), x (B, N, k) -> (B, N).

    :func:`split_interpolate` from ``k = SPLIT_FROM_K`` inputs on, :func:`fold` below;
    nodes are processed in chunks (recomputed in backward with activation checkpointing)
    when the largest intermediate, ``batch * nodes * 2^(k-1)`` values for :func:`fold` and
    ``batch * nodes * 2^ceil(k/2)`` for :func:`split_interpolate`, would pass
    ``max_elements``.

    Example:
        >>> import torch
        >>> table, x = torch.rand(6, 64), torch.rand(2, 6, 6)
        >>> torch.allclose(interpolate(table, x, max_elements=100), fold(table, x), atol=1e-6)
        True
    """
    batch, k = x.shape[0], x.shape[-1]
    if k >= SPLIT_FROM_K:
        return _chunked(split_interpolate, table, x, batch * 2 ** (k - k // 2), max_elements)
    return _chunked(fold, table, x, batch * 2 ** max(k - 1, 0), max_elements)


def lookup(bits: Tensor, x: Tensor) -> Tensor:
    """Binary forward: ``bits[n, address(x[b, n] >= 0.5)]``; bits (N, 2^k), x (B, N, k).

    The result has ``bits``' dtype.

    Example:
        >>> import torch
        >>> lookup(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), torch.tensor([[[0.9, 0.2]]]))
        tensor([[1.]])
    """
    weights = torch.pow(2, torch.arange(x.shape[-1], device=x.device, dtype=torch.int64))
    address = ((x >= 0.5).to(torch.int64) * weights).sum(-1)  # (B, N)
    return bits.gather(1, address.t()).t()
