"""LUT costs on LUT-based FPGAs: comparators, popcounts and MAC layers (truth tables are
costed in :mod:`hwnas.cost.tables`, re-exported here).

Every formula here is documented, with the measurements behind it, in
``hwnas/cost/targets/README.md`` and ``hwnas/cost/targets/DIFFLUT.md``. The coefficients
come from the target file: ``[luts.calibration]`` is written by ``hwnas calibrate TARGET``,
which fits
them to yosys runs of micro-benchmarks (:mod:`hwnas.hw.calibrate`).

- :func:`node_luts` / :func:`table_luts`: one truth-table node of ``X`` inputs.
- :func:`comparator_luts`, :func:`popcount_luts`: encoder comparators, GroupSum counts.
- :func:`mac_luts` (registered as the ``luts`` of conv/linear layers): the expected LUTs of
  a fully unrolled constant-weight layer, a smooth function of the alive channel counts;
  :func:`weight_luts`: the same model on a layer's real (quantised) weights, where zero
  and power-of-two weights are cheaper.

``alive["in"]`` / ``alive["out"]`` are tensors, so the same function gives exact integer
counts and differentiable expected counts.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hwnas.cost import register
from hwnas.cost.tables import (
    _beyond,
    _calibration,
    bdd_nodes,
    lut_model,
    min_bdd_nodes,
    node_luts,
    table_luts,
)
from hwnas.cost.target import Target, load_target
from hwnas.errors import InvalidValueError

if TYPE_CHECKING:
    from hwnas.graph.ir import LayerInfo

__all__ = [
    "MAC_FEATURES",
    "bdd_nodes",
    "min_bdd_nodes",
    "comparator_luts",
    "fan_in",
    "lut_model",
    "mac_features_exact",
    "mac_features_expected",
    "mac_luts",
    "node_luts",
    "popcount_features",
    "popcount_luts",
    "quantize_weights",
    "table_luts",
    "weight_luts",
    "weighted_luts",
    "whole",
]

Alive = dict[str, torch.Tensor]

#: Features of one output channel of a constant-weight dot product (``mac = "fitted"``), with
#: ``R`` the partial-product rows (set bits of the weight magnitudes), ``Z`` the nonzero
#: weights and ``B`` the output bits: ``A * R`` (partial-product bits), ``Z * B`` (operand
#: bits through the adders) and ``A * R * log2(1 + R)`` (bits times compression depth).
MAC_FEATURES = ("pp_bits", "operand_bits", "pp_bits_x_log2_rows")


# --------------------------------------------------------------------------- encoders, heads


def comparator_luts(bits: int, target: Target | str) -> float:
    """LUTs of one comparator ``q > c`` of a ``bits``-bit input with a constant.

    Calibrated targets: the measured LUTs per comparator of a thermometer encoder (four
    constants per input, as they share logic); otherwise ``bits * luts_per_comparator_bit``.

    Example:
        >>> comparator_luts(1, "xc7-lut6")
        0.0
    """
    target = load_target(target)
    model = lut_model(target)
    if bits <= 1:
        return 0.0  # a 1-bit input compared with a constant is the bit itself
    if model.calibration is not None and model.calibration.comparator:
        return _beyond(model.calibration.comparator, bits, 1.0 + 1.0 / bits)
    return float(bits * model.luts_per_comparator_bit)


def popcount_features(m: int | float) -> list[float]:
    """Features of an ``m``-bit popcount: ``[m, m * log2(m), 1]``."""
    m = float(m)
    return [m, m * math.log2(max(m, 1.0)), 1.0]


def popcount_luts(m: int, target: Target | str) -> float:
    """LUTs of the popcount of ``m`` bits (one GroupSum class).

    Calibrated targets: ``a * m + b * m * log2(m) + c`` fitted to yosys; otherwise a balanced
    adder tree at ``luts_per_adder_bit`` per adder bit (``2m - log2(m) - 2`` bits for
    ``m = 2^d``).

    Example:
        >>> popcount_luts(1, "xc7-lut6")
        0.0
    """
    target = load_target(target)
    model = lut_model(target)
    if m <= 1:
        return 0.0
    if model.calibration is not None and model.calibration.popcount:
        coef = model.calibration.popcount
        return float(sum(c * f for c, f in zip(coef, popcount_features(m), strict=True)))
    widths, adder_bits = [1] * m, 0
    while len(widths) > 1:
        nxt = []
        for a, b in zip(widths[0::2], widths[1::2], strict=False):
            adder_bits += max(a, b)
            nxt.append(max(a, b) + 1)
        if len(widths) % 2:
            nxt.append(widths[-1])
        widths = nxt
    return float(adder_bits * model.luts_per_adder_bit)


# --------------------------------------------------------------------------- MAC layers


@functools.lru_cache(maxsize=64)
def _weight_moments(w_bits: int) -> tuple[float, float, float]:
    """E[popcount|w|], P(w != 0), E|w| for w uniform on [-(2^(W-1)-1), 2^(W-1)-1].

    ``W = 1`` means binary weights ``+-1``.
    """
    if w_bits <= 1:
        return 1.0, 1.0, 1.0
    top = 2 ** (w_bits - 1) - 1
    count = 2 * top + 1
    pop = 2 * sum(bin(v).count("1") for v in range(1, top + 1)) / count
    return pop, 2 * top / count, top * (top + 1) / count


def _out_bits(total: Tensor | float, act_bits: int) -> Tensor:
    """Bits of a signed sum reaching ``total * (2^A - 1)``: smooth ``log2(. + 1) + 1``."""
    reach = torch.as_tensor(total, dtype=torch.float64) * (2**act_bits - 1)
    return torch.log2(reach + 1.0) + 1.0


def _features(rows: Tensor, nonzero: Tensor, total: Tensor, act_bits: int) -> list[Tensor]:
    pp = act_bits * rows
    return [pp, nonzero * _out_bits(total, act_bits).to(rows.dtype),
            pp * torch.log2(1.0 + rows)]


def mac_features_exact(weights: list[int] | Tensor, act_bits: int) -> list[float]:
    """:data:`MAC_FEATURES` of one output channel with these integer weights.

    Example:
        >>> [round(f, 2) for f in mac_features_exact([3, -4, 0, 1], act_bits=2)]
        [8.0, 16.93, 18.58]
    """
    w = [abs(int(v)) for v in (weights.tolist() if isinstance(weights, Tensor) else weights)]
    rows = torch.tensor(float(sum(bin(v).count("1") for v in w)), dtype=torch.float64)
    nonzero = torch.tensor(float(sum(v != 0 for v in w)), dtype=torch.float64)
    total = torch.tensor(float(sum(w)), dtype=torch.float64)
    return [float(f) for f in _features(rows, nonzero, total, act_bits)]


def mac_features_expected(n: Tensor | float, w_bits: int, act_bits: int) -> list[Tensor]:
    """Expected :data:`MAC_FEATURES` of ``n`` uniformly random ``w_bits``-bit weights.

    Smooth in ``n`` (a tensor keeps its gradient).

    Example:
        >>> [round(float(f), 3) for f in mac_features_expected(4.0, 2, 2)]
        [5.333, 11.12, 9.997]
    """
    pop, nonzero, mean_abs = _weight_moments(w_bits)
    n = torch.as_tensor(n, dtype=torch.float64) if not isinstance(n, Tensor) else n
    return _features(n * pop, n * nonzero, n * mean_abs, act_bits)


def mac_luts(n: Tensor | float, target: Target | str) -> Tensor:
    """Expected LUTs of one output channel: ``sum_f coef_f * feature_f(n, W, A)``.

    ``W = target.weight_bits``, ``A = target.activation_bits``; ``coef`` from the target's
    calibration. Zero for ``n = 0``.

    Example:
        >>> round(float(mac_luts(16.0, "xc7-lut6")), 1) > 0
        True
    """
    target = load_target(target)
    cal = _calibration(target, "mac")
    n = torch.as_tensor(n, dtype=torch.float64) if not isinstance(n, Tensor) else n
    feats = mac_features_expected(n, target.weight_bits, target.activation_bits)
    total = sum(c * f for c, f in zip(cal.mac, feats, strict=True))
    return torch.where(n > 0, total, torch.zeros_like(n))


def quantize_weights(weight: Tensor, bits: int) -> Tensor:
    """Symmetric per-output-channel quantisation to ``bits``-bit integers (int64).

    ``q = round(w / s)``, ``s = max|w| / (2^(bits-1) - 1)`` per output channel (row of
    ``weight.flatten(1)``); a row of zeros stays zero.

    ``bits = 1`` means binary weights: the sign of each weight (zeros stay zero).

    Example:
        >>> quantize_weights(torch.tensor([[0.5, -1.0, 0.26]]), 3).tolist()
        [[2, -3, 1]]
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
        raise InvalidValueError(f"`bits` must be an integer >= 1, but got {bits!r}")
    w = weight.detach().double().cpu().flatten(1)
    if bits == 1:
        return torch.sign(w).to(torch.int64)
    top = 2 ** (bits - 1) - 1
    scale = w.abs().amax(1, keepdim=True) / top
    q = torch.where(scale > 0, torch.round(w / scale.clamp(min=1e-300)), torch.zeros_like(w))
    return q.clamp(-top, top).to(torch.int64)


def weight_luts(weight: Tensor, target: Target | str) -> float:
    """LUTs of a layer built with its real weights (quantised to ``weight_bits``).

    ``weight`` is the layer's float weight (out, ...): each output channel's row is
    quantised (:func:`quantize_weights`, symmetric per channel) and costed by
    its exact :data:`MAC_FEATURES`: zero weights vanish and a power of two is one
    partial-product row.

    Example:
        >>> w = torch.tensor([[1.0, 0.0, 0.5, -0.25]])
        >>> weight_luts(w, "xc7-lut6") < float(mac_luts(4.0, "xc7-lut6"))
        True
    """
    target = load_target(target)
    cal = _calibration(target, "mac")
    total = 0.0
    for row in quantize_weights(weight, target.weight_bits).tolist():
        if any(row):
            feats = mac_features_exact(row, target.activation_bits)
            total += sum(c * f for c, f in zip(cal.mac, feats, strict=True))
    return total


def fan_in(info: LayerInfo, alive: Alive) -> torch.Tensor:
    """Weights feeding one output channel: ``cin / groups * prod(kernel)``.

    A depthwise conv keeps one input channel per output channel however many survive.
    """
    per_group = torch.ones_like(alive["in"]) if info.depthwise else alive["in"] / info.groups
    return per_group * info.kernel_size


def _multiplier_array(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    model = lut_model(target)
    n = fan_in(info, alive)
    wb, ab = target.weight_bits, target.activation_bits
    multipliers = n * (wb * ab * model.luts_per_pp_bit)
    width = wb + ab + torch.log2(torch.clamp(n, min=1.0))
    adders = torch.clamp(n - 1.0 + float(info.bias), min=0.0) * width * model.luts_per_adder_bit
    return alive["out"] * (multipliers + adders)


@register("luts", nn.modules.conv._ConvNd)
@register("luts", nn.Linear)
def weighted_luts(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """LUTs of a fully unrolled conv/linear layer: ``alive_out * mac_luts(fan_in)``.

    ``mac = "fitted"`` (shipped targets): :func:`mac_luts` with the target's calibrated
    coefficients; ``mac = "multiplier_array"``: ``n`` multipliers of ``W x A``
    partial-product bits and an adder tree of ``n - 1 + bias`` adders of
    ``W + A + log2(n)`` bits. Spatial positions reuse the same hardware. A value without
    a gradient (a profile, the exported architecture) is rounded to whole LUTs
    (:func:`whole`); with one (the search's expected cost) it stays smooth.
    """
    if lut_model(target).mac == "multiplier_array":
        return _multiplier_array(info, alive, target)
    n = fan_in(info, alive)
    return whole(alive["out"] * mac_luts(n, target).to(n.dtype))


def whole(luts: Tensor) -> Tensor:
    """``luts`` rounded to whole LUTs when it carries no gradient; unchanged otherwise.

    Example:
        >>> whole(torch.tensor(12.4)).item(), whole(torch.tensor(12.4, requires_grad=True)).item()
        (12.0, 12.399999618530273)
    """
    return luts if luts.requires_grad else torch.round(luts)
