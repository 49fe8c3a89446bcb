"""Fused Triton kernels of the LUT layer: soft forward, backward, binary lookup.

Imported only where Triton is installed (:mod:`hwnas.difflut.kernels` checks first). The
kernels compute :func:`~hwnas.difflut.kernels.reference.fold`'s function without storing
the ``2^k`` corners of a sample in memory: a program owns a block of ``BN`` nodes (their
table rows stay in registers) and walks ``ROWS`` samples one at a time. For each sample
the ``(BN, 2^k)`` table tile is folded one input at a time, least significant first (the
two halves of the tile along that address bit are blended with ``lerp``, the formula of
``torch.lerp``, so binary inputs read the table exactly), which leaves the ``BN`` outputs.

Backward recomputes the same fold. At step ``j`` the difference of the two halves, folded
over the inputs above ``j``, is ``d out / d x_j``; the table's gradient of one sample is
its corner weights times the output gradient, built by unfolding from the top input down,
and summed over the program's samples in registers, then over programs by ``torch.sum``
(deterministic: no atomics). Memory of one pass: inputs, outputs and input gradients
(``batch * nodes * k``) plus ``ceil(batch / ROWS) * nodes * 2^k`` partial table gradients.

The kernels follow Triton's ``TRITON_INTERPRET``: set to 1 before Triton is first imported,
they run in Triton's interpreter on CPU tensors (how the tests check them without a GPU).

Element ``(b, n, j)`` of the inputs is read at ``x[b, cols[n * k + j]]``: a layer with
fixed connections passes its (batch, in_features) input and its connection indices (no
gathered copy is made), any other caller its (batch, nodes * k) gathered inputs and
``cols = arange(nodes * k)``.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["LUTInterpolate", "interpolate", "lookup", "tile"]

_TILE = 2048  # table values a program holds: BN * 2^k


def tile(k: int) -> tuple[int, int]:
    """``(BN, ROWS)``: nodes per program and samples each program walks, for ``k`` inputs.

    ``ROWS >= 2^k / k`` keeps the partial table gradients within ``batch * nodes * k``.

    Example:
        >>> tile(4), tile(8)
        ((64, 32), (8, 128))
    """
    bn = max(1, min(64, _TILE // 2**k))
    return bn, max(32, 2**k // 2)


@triton.jit
def _lerp(lo, hi, w):
    # torch.lerp's formula: exact at w = 0 and w = 1
    return tl.where(w < 0.5, lo + w * (hi - lo), hi - (hi - lo) * (1.0 - w))


@triton.jit
def _fold_low(t, w):
    # blend the two halves of t (BN, 2m) along its lowest address bit: (BN, m)
    lo, hi = tl.split(tl.reshape(t, (t.shape[0], t.shape[1] // 2, 2)))
    return _lerp(lo, hi, w[:, None])


@triton.jit
def _input(x_ptr, cols_ptr, b, stride_b, nodes, mask, K: tl.constexpr, j: tl.constexpr):
    col = tl.load(cols_ptr + nodes * K + j, mask=mask, other=0)
    return tl.load(x_ptr + b * stride_b + col, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _fwd_kernel(x_ptr, cols_ptr, table_ptr, out_ptr, batch, n_nodes, stride_b,
                K: tl.constexpr, BN: tl.constexpr, ROWS: tl.constexpr):
    nodes = tl.program_id(0) * BN + tl.arange(0, BN)
    in_node = nodes < n_nodes
    corners = tl.arange(0, 2**K)
    table = tl.load(table_ptr + nodes[:, None] * 2**K + corners[None, :],
                    mask=in_node[:, None], other=0.0).to(tl.float32)
    first = tl.program_id(1) * ROWS
    for r in range(0, tl.minimum(ROWS, batch - first)):
        b = (first + r).to(tl.int64)
        t = table
        for j in tl.static_range(K):
            t = _fold_low(t, _input(x_ptr, cols_ptr, b, stride_b, nodes, in_node, K, j))
        tl.store(out_ptr + b * n_nodes + nodes, tl.reshape(t, (BN,)), mask=in_node)


@triton.jit
def _bwd_kernel(x_ptr, cols_ptr, table_ptr, grad_out_ptr, grad_cols_ptr, grad_part_ptr,
                batch, n_nodes, stride_b,
                K: tl.constexpr, BN: tl.constexpr, ROWS: tl.constexpr):
    nodes = tl.program_id(0) * BN + tl.arange(0, BN)
    in_node = nodes < n_nodes
    corners = tl.arange(0, 2**K)
    table = tl.load(table_ptr + nodes[:, None] * 2**K + corners[None, :],
                    mask=in_node[:, None], other=0.0).to(tl.float32)
    acc = tl.zeros((BN, 2**K), dtype=tl.float32)
    first = tl.program_id(1) * ROWS
    for r in range(0, tl.minimum(ROWS, batch - first)):
        b = (first + r).to(tl.int64)
        g = tl.load(grad_out_ptr + b * n_nodes + nodes, mask=in_node, other=0.0).to(tl.float32)
        t = table
        for j in tl.static_range(K):
            xj = _input(x_ptr, cols_ptr, b, stride_b, nodes, in_node, K, j)
            lo, hi = tl.split(tl.reshape(t, (BN, t.shape[1] // 2, 2)))
            d = hi - lo  # d out / d x_j = this difference folded over the inputs above j
            for i in tl.static_range(j + 1, K):
                d = _fold_low(d, _input(x_ptr, cols_ptr, b, stride_b, nodes, in_node, K, i))
            tl.store(grad_cols_ptr + b * n_nodes * K + nodes * K + j,
                     g * tl.reshape(d, (BN,)), mask=in_node)
            t = _lerp(lo, hi, xj[:, None])
        w = tl.reshape(g, (BN, 1))  # corner weights times g, the top input first
        for jj in tl.static_range(K):
            xj = _input(x_ptr, cols_ptr, b, stride_b, nodes, in_node, K, K - 1 - jj)[:, None]
            w = tl.reshape(tl.join(w - w * xj, w * xj), (BN, w.shape[1] * 2))
        acc += w
    part = grad_part_ptr + tl.program_id(1) * n_nodes * 2**K
    tl.store(part + nodes[:, None] * 2**K + corners[None, :], acc, mask=in_node[:, None])


@triton.jit
def _lookup_kernel(x_ptr, cols_ptr, bits_ptr, out_ptr, total, n_nodes, stride_b,
                   K: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    b, nodes = e // n_nodes, e % n_nodes
    address = tl.zeros((BLOCK,), dtype=tl.int32)
    for j in tl.static_range(K):
        xj = _input(x_ptr, cols_ptr, b, stride_b, nodes, mask, K, j)
        address += (xj >= 0.5).to(tl.int32) << j
    value = tl.load(bits_ptr + nodes * 2**K + address, mask=mask, other=0.0)
    tl.store(out_ptr + e, value, mask=mask)


def _operands(x: Tensor, cols: Tensor, table: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Contiguous inputs (unit column stride), int32 columns, contiguous table, k."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    nodes = table.shape[0]
    k = cols.numel() // nodes
    return x, cols.to(torch.int32).contiguous(), table.contiguous(), k


class LUTInterpolate(torch.autograd.Function):
    """The soft forward as one kernel and its backward as another.

    ``apply(x, cols, table)``: x (B, F) read through ``cols`` (nodes * k,), table
    (nodes, 2^k) -> (B, nodes) in ``x``'s dtype, computed in float32. Gradients: to ``x``
    (scattered back through ``cols`` with ``index_add_``) and to ``table``.

    Example (CUDA tensors, or any tensors under ``TRITON_INTERPRET=1``):
        >>> x = torch.rand(4, 6, device="cuda", requires_grad=True)    # doctest: +SKIP
        >>> table = torch.rand(3, 4, device="cuda", requires_grad=True)    # doctest: +SKIP
        >>> LUTInterpolate.apply(x, torch.arange(6, device="cuda"), table).shape  # doctest: +SKIP
        torch.Size([4, 3])
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, cols: Tensor, table: Tensor) -> Tensor:
        x, cols, table, k = _operands(x, cols, table)
        batch, nodes = x.shape[0], table.shape[0]
        out = x.new_empty(batch, nodes)
        bn, rows = tile(k)
        grid = (triton.cdiv(nodes, bn), triton.cdiv(batch, rows))
        _fwd_kernel[grid](x, cols, table, out, batch, nodes, x.stride(0),
                          K=k, BN=bn, ROWS=rows)
        ctx.save_for_backward(x, cols, table)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        x, cols, table = ctx.saved_tensors
        batch, nodes = x.shape[0], table.shape[0]
        k = cols.numel() // nodes
        bn, rows = tile(k)
        grid = (triton.cdiv(nodes, bn), triton.cdiv(batch, rows))
        grad_cols = grad_out.new_empty(batch, nodes * k, dtype=torch.float32)
        parts = table.new_empty(grid[1], nodes, 2**k, dtype=torch.float32)
        _bwd_kernel[grid](x, cols, table, grad_out.contiguous(), grad_cols, parts,
                          batch, nodes, x.stride(0), K=k, BN=bn, ROWS=rows)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = x.new_zeros(x.shape, dtype=torch.float32).index_add_(
                1, cols.to(torch.int64), grad_cols).to(x.dtype)
        grad_table = parts.sum(0).to(table.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_table


def interpolate(x: Tensor, cols: Tensor, table: Tensor) -> Tensor:
    """Soft forward with the fused kernels (differentiable): see :class:`LUTInterpolate`.

    Example (CUDA tensors, or any tensors under ``TRITON_INTERPRET=1``):
        >>> x = torch.rand(4, 6, device="cuda")    # doctest: +SKIP
        >>> table = torch.rand(3, 4, device="cuda")    # doctest: +SKIP
        >>> interpolate(x, torch.arange(6, device="cuda"), table).shape    # doctest: +SKIP
        torch.Size([4, 3])
    """
    out: Tensor = LUTInterpolate.apply(x, cols, table)
    return out


def lookup(x: Tensor, cols: Tensor, bits: Tensor) -> Tensor:
    """Binary forward ``bits[n, address]`` with one kernel: (B, nodes) in ``bits``' dtype.

    Example (CUDA tensors, or any tensors under ``TRITON_INTERPRET=1``):
        >>> bits = torch.tensor([[0.0, 1.0, 1.0, 0.0]], device="cuda")    # doctest: +SKIP
        >>> x = torch.tensor([[0.9, 0.2]], device="cuda")    # doctest: +SKIP
        >>> lookup(x, torch.tensor([0, 1], device="cuda"), bits)    # doctest: +SKIP
        tensor([[1.]], device='cuda:0')
    """
    x, cols, bits, k = _operands(x, cols, bits)
    batch, nodes = x.shape[0], bits.shape[0]
    out = bits.new_empty(batch, nodes)
    block = 1024
    _lookup_kernel[(triton.cdiv(batch * nodes, block),)](
        x, cols, bits, out, batch * nodes, nodes, x.stride(0), K=k, BLOCK=block)
    return out
