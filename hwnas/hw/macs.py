"""Verilog of fully unrolled constant-weight dot products (conv / linear layers).

Every output channel is one dot product of its ``n`` inputs with integer weights that are
constants of the circuit: ``y_o = sum_i w_oi * x_i``, activations unsigned ``A``-bit,
weights signed ``W``-bit in ``[-(2^(W-1)-1), 2^(W-1)-1]``. A weight is written as its
magnitude, added or subtracted; a zero weight is left out. The output ``y_o`` has exactly
the bits its range needs. This is the circuit the ``luts`` cost of conv/linear layers
describes and :mod:`hwnas.hw.calibrate` synthesizes; the layer's bias (a constant added to
the sum) is not built.

Example:
    >>> import torch
    >>> text = dot_product_verilog(torch.tensor([[3, -1, 0]]), act_bits=2, top="dot")
    >>> print(text.splitlines()[3])
      assign y[4:0] = $signed({1'b0, x[1:0]}) * $signed(3'sd3) - $signed({1'b0, x[3:2]});
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from hwnas._internal.files import atomic_write, ensure_writable_dir
from hwnas.cost.bits import QuantizedLayer
from hwnas.cost.luts import quantize_weights
from hwnas.cost.target import Target, load_target
from hwnas.errors import InvalidTypeError, InvalidValueError

__all__ = ["dot_product_verilog", "layer_verilog", "quantize_weights"]


def _row(weights: list[int], sources: list[int], act_bits: int) -> tuple[str, int]:
    terms = []
    for w, s in zip(weights, sources, strict=True):
        if w == 0:
            continue
        x = f"$signed({{1'b0, x[{(s + 1) * act_bits - 1}:{s * act_bits}]}})"
        mag = abs(w)
        term = x if mag == 1 else f"{x} * $signed({mag.bit_length() + 1}'sd{mag})"
        terms.append((w < 0, term))
    reach = sum(abs(w) for w in weights) * (2**act_bits - 1)
    width = max(1, math.ceil(math.log2(reach + 1)) + 1) if reach else 1
    if not terms:
        return "0", width
    first_neg, first = terms[0]
    expr = ("-" if first_neg else "") + first
    for neg, term in terms[1:]:
        expr += (" - " if neg else " + ") + term
    return expr, width


def _mac_verilog(rows: list[tuple[list[int], list[int]]], n_inputs: int, act_bits: int,
                 top: str) -> str:
    exprs = [_row(w, s, act_bits) for w, s in rows]
    stride = max(width for _, width in exprs)
    lines = [f"module {top} (input wire [{n_inputs * act_bits - 1}:0] x,",
             f"  output wire [{len(rows) * stride - 1}:0] y);"]
    if len(rows) == 1:
        expr, width = exprs[0]
        lines.append(f"  // output: signed {width}-bit dot product")
        lines.append(f"  assign y[{width - 1}:0] = {expr};")
    else:
        for o, (expr, width) in enumerate(exprs):
            lines.append(f"  wire signed [{width - 1}:0] y{o} = {expr};")
        for o, (_, width) in enumerate(exprs):
            lo, value = o * stride, f"y{o}"
            if stride > width:  # sign-extend to the common stride
                value = f"{{{{{stride - width}{{y{o}[{width - 1}]}}}}, y{o}}}"
            lines.append(f"  assign y[{lo + stride - 1}:{lo}] = {value};")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def dot_product_verilog(weights: Tensor, act_bits: int, top: str = "hwnas_dot") -> str:
    """Verilog of ``y_o = sum_i weights[o, i] * x_i`` (a Linear layer's unrolled datapath).

    Args:
        weights: int (outputs, n) constant weights; output ``o`` at ``y[(o+1)*S-1 : o*S]``
            (sign-extended to the widest output's ``S`` bits).
        act_bits: Bits of the unsigned activations ``x_i`` (``x[(i+1)*A-1 : i*A]``).
        top: Module name.
    """
    if weights.dim() != 2 or weights.is_floating_point():
        raise InvalidTypeError("`weights` must be an integer tensor (outputs, n)")
    if not isinstance(act_bits, int) or act_bits < 1:
        raise InvalidValueError(f"`act_bits` must be an integer >= 1, but got {act_bits!r}")
    n = weights.shape[1]
    rows = [(row, list(range(n))) for row in weights.tolist()]
    return _mac_verilog(rows, n, act_bits, top)


def layer_verilog(module: nn.Module, target: Target | str,
                  path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Write one output position of a Linear / conv layer, weights quantised to the target's.

    Weights: :func:`quantize_weights` to ``target.weight_bits``; activations unsigned
    ``target.activation_bits``. A quantised layer (:class:`~hwnas.cost.bits.QuantizedLayer`,
    e.g. of a precision search's export) is written at its own bits: its integer weights
    and its activation bits. A conv's inputs are its ``cin * prod(kernel)`` taps (one
    output position; the others reuse the hardware); output channel ``o`` of group ``g``
    reads group ``g``'s taps. Returns the path and the module name.
    """
    target = load_target(target)
    act_bits = target.activation_bits
    own: Tensor | None = None
    if isinstance(module, QuantizedLayer):
        qp = module.quant_params()
        if qp.a_signed:
            raise InvalidValueError("the unrolled datapath takes unsigned activations, but the "
                                    "quantised layer's input is signed")
        own, act_bits = qp.w_int, qp.a_bits
    if isinstance(module, nn.Linear):
        q = own if own is not None else quantize_weights(module.weight, target.weight_bits)
        rows = [(row, list(range(module.in_features))) for row in q.tolist()]
        n_inputs = module.in_features
    elif isinstance(module, nn.modules.conv._ConvNd):
        q = own if own is not None else quantize_weights(module.weight, target.weight_bits)
        per_group = module.in_channels // module.groups
        taps = int(torch.tensor(module.kernel_size).prod())
        out_per_group = module.out_channels // module.groups
        rows = []
        for o, row in enumerate(q.tolist()):
            g = o // out_per_group
            rows.append((row, list(range(g * per_group * taps, (g + 1) * per_group * taps))))
        n_inputs = module.in_channels * taps
    else:
        raise InvalidTypeError(
            f"only LUT networks, nn.Linear and conv layers can be synthesized from a module, "
            f"but got {type(module).__name__}")
    top = f"hwnas_{type(module).__name__.lower()}"
    path = Path(path)
    ensure_writable_dir(path.parent)
    with atomic_write(path) as tmp:
        tmp.write_text(_mac_verilog(rows, n_inputs, act_bits, top))
    return path, top
