"""LUT costs on LUT-based FPGAs: truth tables, comparators, popcounts and MAC layers.

Every formula here is documented, with the measurements behind it, in
``hwnas/cost/targets/README.md`` and ``hwnas/cost/targets/DIFFLUT.md``. The coefficients come from the
target file: ``[luts.calibration]`` is written by ``hwnas calibrate TARGET``, which fits
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
import itertools
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from hwnas.cost import register
from hwnas.cost.target import LutCalibration, LutModel, Target, known_targets, load_target
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


def lut_model(target: Target) -> LutModel:
    """The target's LUT model, or an InvalidValueError naming the targets that have one.

    Example:
        >>> lut_model(load_target("xc7-lut6")).table
        'muxf'
    """
    if target.luts is None:
        lut_targets = [t for t in known_targets() if load_target(t).luts is not None]
        raise InvalidValueError(
            f"target {target.name!r} has no LUT model; use one of {', '.join(lut_targets)} "
            "or a target file with a [luts] table"
        )
    return target.luts


def _calibration(target: Target, what: str) -> LutCalibration:
    cal = lut_model(target).calibration
    if cal is None:
        raise InvalidValueError(f"target {target.name!r} has no [luts.calibration] ({what}); "
                                "run `hwnas calibrate TARGET`")
    return cal


# --------------------------------------------------------------------------- truth tables


def _cube(table: int, x: int) -> np.ndarray:
    """The table as a ``(2,) * x`` array; axis ``i`` is address bit ``x - 1 - i``."""
    return np.array([(table >> a) & 1 for a in range(2**x)], dtype=np.uint8).reshape((2,) * x)


@functools.lru_cache(maxsize=1 << 16)
def bdd_nodes(table: int, x: int) -> int:
    """Nodes of the reduced ordered BDD of an ``x``-input table, top variable = MSB.

    Bit ``a`` of ``table`` is the output at address ``a``. Fixing the top ``j`` address bits
    leaves the contiguous blocks of ``2^(x-j)`` entries; level ``j`` has one node per
    distinct block whose two halves differ. This is the mux tree yosys builds from
    ``T[{...}]`` after merging equal subtrees.

    Example:
        >>> bdd_nodes(0b0110, 2), bdd_nodes(0b1000, 2), bdd_nodes(0b1010, 2)  # xor, and, a0
        (3, 2, 1)
    """
    bits = _cube(table, x).reshape(-1)
    total = 0
    for j in range(x):
        blocks = bits.reshape(2**j, 2 ** (x - j))
        half = 2 ** (x - j - 1)
        differ = (blocks[:, :half] != blocks[:, half:]).any(1)
        if differ.any():
            total += len({b.tobytes() for b in blocks[differ]})
    return total


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows of a small 0/1 matrix, in order of first appearance (a dict of
    bytes is ten times faster than ``np.unique(axis=0)`` at these sizes)."""
    first: dict[bytes, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row.tobytes(), i)
    return rows[list(first.values())]


@functools.lru_cache(maxsize=1 << 16)
def min_bdd_nodes(table: int, x: int) -> int:
    """Nodes of the smallest reduced ordered BDD of an ``x``-input table over all orders.

    Exact, by dynamic programming over the sets of variables placed above a level
    (Friedman and Supowit): with the set ``S`` above, variable ``v`` gets one node per
    distinct cofactor of the table over ``S`` that depends on ``v``. ``2^x`` sets, so it is
    meant for node tables (``x <= 10``); a structured (trained) table often has a far
    smaller BDD in another order than in :func:`bdd_nodes`'s fixed one, and yosys/ABC
    finds that structure.

    Example:
        >>> g = int("".join("1" if ((a >> 3) & (a & 1)) | ((a >> 2) & (a >> 1) & 1) else "0"
        ...                 for a in reversed(range(16))), 2)
        >>> bdd_nodes(g, 4), min_bdd_nodes(g, 4)  # a3 a0 | a2 a1: pairs apart, pairs together
        (6, 4)
    """
    if x > 10:
        raise InvalidValueError(f"`x` must be <= 10 for an exact BDD minimum, but got {x}")
    cube = _cube(table, x)
    full = (1 << x) - 1
    unset = np.iinfo(np.int64).max
    best = np.full(1 << x, unset, dtype=np.int64)
    best[0] = 0
    for above in range(full):
        if best[above] == unset:
            continue
        top = [i for i in range(x) if above >> i & 1]
        rest = [i for i in range(x) if not above >> i & 1]
        rows = cube.transpose(top + rest).reshape(1 << len(top), 1 << len(rest))
        distinct = _distinct_rows(rows).reshape((-1,) + (2,) * len(rest))
        for j, v in enumerate(rest):
            lo, hi = np.take(distinct, 0, axis=1 + j), np.take(distinct, 1, axis=1 + j)
            nodes = int((lo != hi).reshape(len(distinct), -1).any(1).sum())
            below = above | (1 << v)
            best[below] = min(best[below], best[above] + nodes)
    return int(best[full])


def _beyond(values: tuple[float, ...], over: int, grow: float) -> float:
    """``values[over - 1]``, extrapolated by ``grow`` per extra input past the last."""
    if over <= len(values):
        return values[over - 1]
    return values[-1] * grow ** (over - len(values))


def _table(cube: np.ndarray) -> int:
    return sum(int(b) << a for a, b in enumerate(cube.reshape(-1).tolist()))


def _essential(cube: np.ndarray) -> np.ndarray:
    """The table without the inputs it does not depend on."""
    for axis in reversed(range(cube.ndim)):
        lo, hi = np.take(cube, 0, axis=axis), np.take(cube, 1, axis=axis)
        if (lo == hi).all():
            cube = lo
    return cube


@functools.lru_cache(maxsize=1 << 16)
def _decomposed_luts(table: int, x: int, lut: int, per_node: tuple[float, ...]) -> float:
    """LUTs of a table with more inputs than a LUT: ``c_X * min_bdd_nodes``, or fewer when
    the table splits as ``f = h(g(A), B)`` with ``g`` one LUT (Ashenhurst's simple
    decomposition: fixing ``A`` to each of its values leaves at most two distinct functions
    of ``B``); then ``1 + luts(h)``, recursively. Bound sets from ``lut`` inputs down to 2;
    the first size that saves LUTs is taken."""
    cube = _essential(_cube(table, x))
    n = cube.ndim
    if n <= 1:
        return 0.0  # a literal: the LUT that reads it absorbs it
    if n <= lut:
        return 1.0
    best = base = _beyond(per_node, n - lut, 1.0) * min_bdd_nodes(_table(cube), n)
    for size in range(lut, 1, -1):
        for bound in itertools.combinations(range(n), size):
            free = [i for i in range(n) if i not in bound]
            rows = cube.transpose(list(bound) + free).reshape(1 << size, 1 << len(free))
            distinct = _distinct_rows(rows)
            if len(distinct) == 2:  # h(y, B) = distinct[y](B)
                h = distinct.reshape((2,) * (len(free) + 1))
                best = min(best, 1.0 + _decomposed_luts(_table(h), h.ndim, lut, per_node))
        if best < base:
            break
    return best


def node_luts(x: int, table: int | None, target: Target | str) -> float:
    """Physical LUTs of one node with ``x`` effective inputs (and its table, if known).

    ``x = 0``: 0 (a constant). ``x = 1``: 0 for a wire (table ``0b10``), else 1. Up to
    ``L = lut_inputs``: 1. Above, by the target's ``table`` model:

    - ``"muxf"`` (7-series): ``2^(X-L)`` LUTs joined by MUXF7/MUXF8 up to ``X = L + 2``;
      above, the ``2^(X-L-2)`` MUXF8 outputs go through a tree of 4:1 muxes, one LUT each.
    - ``"bdd"`` (iCE40): ``c_X * min_bdd_nodes(table)`` (the BDD in its best variable
      order), ``c_X`` fitted per ``X``, or less where the table decomposes as
      ``h(g(A), B)`` with ``g`` one LUT (``1 + LUTs of h``); without a table, the measured
      mean of random tables.
    - ``"logicnets"``: ``(2^(X-4) - (-1)^X) / 3``; ``"shannon"``: ``2^(X-L+1) - 1``.

    Example:
        >>> [node_luts(x, None, "xc7-lut6") for x in (0, 6, 7, 8)]
        [0.0, 1.0, 2.0, 4.0]
    """
    target = load_target(target)
    model = lut_model(target)
    lut = target.lut_inputs
    if x < 0:
        raise InvalidValueError(f"`x` must be >= 0, but got {x!r}")
    if x == 0:
        return 0.0
    if x <= lut:
        return 0.0 if (x == 1 and table == 0b10) else 1.0
    over = x - lut
    if model.table == "muxf":
        if over <= 2:
            return float(2**over)
        return float(2**over + math.ceil((2 ** (over - 2) - 1) / 3))
    if model.table == "bdd":
        cal = _calibration(target, "table")
        if table is None:
            return _beyond(cal.table_random, over, 2.0)
        return _decomposed_luts(table, x, lut, tuple(cal.table))
    if model.table == "logicnets":
        return float(round((2.0 ** (x - 4) - (1 if x % 2 == 0 else -1)) / 3))
    return float(2 ** (over + 1) - 1)


def table_luts(k_eff: Tensor | int, target: Target | str) -> Tensor:
    """:func:`node_luts` of nodes with ``k_eff`` inputs and unknown tables (elementwise).

    Example:
        >>> table_luts(torch.tensor([0, 4, 6, 7, 8]), "xc7-lut6").tolist()
        [0.0, 1.0, 1.0, 2.0, 4.0]
    """
    target = load_target(target)
    x = torch.as_tensor(k_eff)
    if bool((x < 0).any()):
        raise InvalidValueError(f"`k_eff` must be >= 0, but got {k_eff!r}")
    values = [node_luts(int(v), None, target) for v in x.reshape(-1).tolist()]
    return torch.tensor(values, dtype=torch.float32).reshape(x.shape)


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
