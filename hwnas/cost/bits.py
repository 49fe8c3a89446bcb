"""Bit-dependent costs: bitops, weight memory, and the MAC-layer LUT model on a grid of bits.

Two metrics join the registry, registered for every layer that has MACs:

- ``bitops = MACs x activation bits x weight bits`` (the MACs of the ``ops`` cost, so one
  MAC per output for a bias, PLiNIO's convention);
- ``weight_memory = weight elements x weight bits`` (biases are not counted: they are
  int32 in the quantised exports, whatever the weights' bits).

Without a precision search both use the target's fixed ``weight_bits`` and
``activation_bits`` (32 and 32 on ``generic``), so they are plain bilinear costs. A
precision search (:mod:`hwnas.search.precision`) evaluates them, and ``luts``, at its
searched bits instead, with :func:`mac_luts_grid`: the calibrated MAC-layer model of
:mod:`hwnas.cost.luts` for every (weight bits, activation bits) pair at once.

A layer that carries its own bits (an exported quantised layer) implements
:class:`QuantizedLayer`; :func:`hwnas.profile` then shows its bits.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hwnas.cost.profile import profile
    >>> df = profile(nn.Sequential(nn.Linear(4, 2)), torch.randn(1, 4), target="xc7-lut6")
    >>> int(df["ops"].iloc[0]), int(df["bitops"].iloc[0]), int(df["weight_memory"].iloc[0])
    (10, 640, 64)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from hwnas.cost import lookup, register
from hwnas.cost.luts import _weight_moments, fan_in, mac_features_exact
from hwnas.cost.tables import _calibration, lut_model
from hwnas.cost.target import Target
from hwnas.errors import InvalidValueError

if TYPE_CHECKING:
    from hwnas.graph.ir import LayerInfo

__all__ = ["BITS_METRICS", "QuantParams", "QuantizedLayer", "bits_label", "layer_lut_estimates",
           "mac_luts_grid", "weighted_bitops", "weighted_memory"]

Alive = dict[str, torch.Tensor]

#: The metrics whose value depends on bit widths (a precision search computes these).
BITS_METRICS = ("bitops", "weight_memory", "luts")


@dataclass(frozen=True)
class QuantParams:
    """The integers and scales of a quantised conv/linear layer, as its forward uses them.

    ``y = layer(a_scale * a_int, w_scale * w_int, b_scale * b_int)`` with
    ``a_int = clamp(round(x / a_scale), a_min, a_max)``: every value is the float32 the
    PyTorch forward computes, so an export that multiplies the same integers by the same
    scales holds the same numbers.

    Attributes:
        w_int: Integer weights (int64, the weight's shape), in
            ``[-(2^(W-1) - 1), 2^(W-1) - 1]`` per output channel (narrow range).
        w_scale: Per-output-channel weight scale (float32, ``(out,)``).
        w_bits: Weight bits per output channel (int64, ``(out,)``).
        a_scale: The input activation's scale (float32, 0-d).
        a_bits: Input activation bits.
        a_signed: Signed activation codes ``[-2^(A-1), 2^(A-1) - 1]``, else ``[0, 2^A - 1]``.
        b_int: Integer bias (int64, ``(out,)``) at scale ``b_scale = a_scale * w_scale``,
            or None for a layer without bias.
        b_scale: ``a_scale * w_scale`` (float32, ``(out,)``).
    """

    w_int: Tensor
    w_scale: Tensor
    w_bits: Tensor
    a_scale: Tensor
    a_bits: int
    a_signed: bool
    b_int: Tensor | None
    b_scale: Tensor

    @property
    def a_range(self) -> tuple[int, int]:
        """The activation codes' ``(min, max)``."""
        if self.a_signed:
            return -(2 ** (self.a_bits - 1)), 2 ** (self.a_bits - 1) - 1
        return 0, 2**self.a_bits - 1


@runtime_checkable
class QuantizedLayer(Protocol):
    """A conv/linear layer that carries its own bit widths (an exported quantised layer)."""

    def bits(self) -> tuple[Tensor, int]:
        """``(weight bits per output channel (int64), activation bits)``."""
        ...

    def quant_params(self) -> QuantParams:
        """Its integers and scales, on the CPU."""
        ...


def bits_label(bits: Tensor) -> str:
    """Per-channel bits as a table shows them: ``"4"``, or ``"2-8"`` when they differ.

    Example:
        >>> bits_label(torch.tensor([4, 4])), bits_label(torch.tensor([8, 2, 4]))
        ('4', '2-8')
    """
    lo, hi = int(bits.min()), int(bits.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def weighted_bitops(info: LayerInfo, alive: Alive, target: Target) -> Tensor:
    """``ops x weight_bits x activation_bits`` of the target (any layer with MACs)."""
    ops = lookup("ops", info.cost_key)
    if ops is None:
        return torch.zeros_like(alive["out"])
    return ops(info, alive, target) * float(target.weight_bits * target.activation_bits)


def weighted_memory(info: LayerInfo, alive: Alive, target: Target) -> Tensor:
    """Weight bits of a conv / linear layer: ``alive_out x fan_in x weight_bits``."""
    return alive["out"] * fan_in(info, alive) * float(target.weight_bits)


def _matmul_memory(info: LayerInfo, alive: Alive, target: Target) -> Tensor:
    """Weight bits a matmul reads from parameters (0 between activations)."""
    return alive["in"] * alive["out"] * float(info.param_positions * target.weight_bits)


_LAYERS: tuple[type | str, ...] = (nn.modules.conv._ConvNd, nn.Linear, "linear", "conv1d",
                                   "conv2d", "conv3d")
_MATMULS = ("matmul", "mm", "bmm", "einsum")
_ATTENTION: tuple[type | str, ...] = (nn.MultiheadAttention, "shifted_window_attention",
                                      "shifted_window_attention_3d",
                                      "scaled_dot_product_attention")
for _key in _LAYERS:
    register("bitops", _key)(weighted_bitops)
    register("weight_memory", _key)(weighted_memory)
for _key in _MATMULS:
    register("bitops", _key)(weighted_bitops)
    register("weight_memory", _key)(_matmul_memory)
for _key in _ATTENTION:
    register("bitops", _key)(weighted_bitops)


def _grid(values: Sequence[int], name: str) -> list[int]:
    out = list(values)
    if not out or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 32
                          for b in out):
        raise InvalidValueError(f"`{name}` must be integers in [1, 32], but got {values!r}")
    return out


@functools.lru_cache(maxsize=256)
def _grid_constants(w_bits: tuple[int, ...], a_bits: tuple[int, ...], device: torch.device,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Bits and weight moments ``(Kw, 3)`` as tensors on ``device``, made once (a copy to a
    GPU in every search step would wait for it)."""
    moments = [_weight_moments(b) for b in w_bits]
    return tuple(torch.tensor(v, dtype=dtype).to(device)  # type: ignore[return-value]
                 for v in (w_bits, a_bits, moments))


def mac_luts_grid(n: Tensor, w_bits: Sequence[int], a_bits: Sequence[int], target: Target,
                  bias: Tensor | float = 0.0) -> Tensor:
    """LUTs of one output channel with ``n`` weights, for every (W, A) pair: ``(..., Kw, Ka)``.

    The same model as the ``luts`` cost of conv/linear layers (:func:`hwnas.cost.luts.mac_luts`
    for ``mac = "fitted"``, the multiplier array otherwise) at ``weight_bits = W`` and
    ``activation_bits = A``, evaluated for all pairs at once and smooth in ``n`` (a tensor
    of any shape; the result is made like it). Zero where ``n = 0``.

    Args:
        n: Weights feeding one output channel (expected or exact counts).
        w_bits / a_bits: Candidate weight and activation bits.
        target: A target with a LUT model.
        bias: Whether the channel adds a bias (the multiplier array counts its adder).

    Example:
        >>> from hwnas.cost import load_target
        >>> from hwnas.cost.luts import mac_luts
        >>> t = load_target("xc7-lut6")
        >>> grid = mac_luts_grid(torch.tensor(16.0, dtype=torch.float64), [4, 8], [8], t)
        >>> bool(torch.isclose(grid[1, 0], mac_luts(16.0, t)))
        True
    """
    model = lut_model(target)
    wb, ab, moments = _grid_constants(tuple(_grid(w_bits, "w_bits")),
                                      tuple(_grid(a_bits, "a_bits")), n.device, n.dtype)
    nn_ = n[..., None, None]
    if model.mac == "multiplier_array":
        mult = nn_ * wb[:, None] * ab * model.luts_per_pp_bit
        width = wb[:, None] + ab + torch.log2(torch.clamp(nn_, min=1.0))
        adders = torch.clamp(nn_ - 1.0 + bias, min=0.0) * width * model.luts_per_adder_bit
        return mult + adders
    coef = _calibration(target, "mac").mac
    rows = nn_ * moments[:, 0, None]
    pp = ab * rows
    reach = nn_ * moments[:, 2, None] * (2.0**ab - 1.0)
    operand = nn_ * moments[:, 1, None] * (torch.log2(reach + 1.0) + 1.0)
    total = coef[0] * pp + coef[1] * operand + coef[2] * pp * torch.log2(1.0 + rows)
    return torch.where(nn_ > 0, total, torch.zeros_like(total))


def layer_lut_estimates(params: QuantParams, target: Target) -> tuple[float, float]:
    """LUT estimates of a quantised layer's unrolled datapath (one output position):
    ``(with its integer weights, smooth at its bits)``.

    The first costs each output channel by the exact features of its integers (zero and
    power-of-two weights are cheaper), the second by :func:`mac_luts_grid` at the channel's
    bits for random weights (what a precision search optimises). Both use the target's
    calibrated coefficients.

    Example:
        >>> from hwnas.cost import load_target
        >>> p = QuantParams(torch.tensor([[3, -1, 0, 2]]), torch.ones(1), torch.tensor([3]),
        ...                 torch.tensor(1.0), 4, False, None, torch.ones(1))
        >>> exact, smooth = layer_lut_estimates(p, load_target("xc7-lut6"))
        >>> 0 < exact < smooth
        True
    """
    coef = _calibration(target, "mac").mac
    rows = params.w_int.flatten(1)
    exact = 0.0
    for row in rows.tolist():
        if any(row):
            feats = mac_features_exact(row, params.a_bits)
            exact += sum(c * f for c, f in zip(coef, feats, strict=True))
    n = torch.tensor(float(rows.shape[1]), dtype=torch.float64)
    smooth = 0.0
    for bits in params.w_bits.tolist():
        smooth += float(mac_luts_grid(n, [int(bits)], [params.a_bits], target)[0, 0])
    return exact, smooth
