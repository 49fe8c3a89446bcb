"""LUT costs of DiffLUT networks: what a node depends on, which nodes are used, LUT counts.

- :func:`input_dependence`, :func:`effective_inputs`: the inputs a node's binarised table
  depends on (pruned inputs cost nothing).
- :func:`used_nodes`: nodes some later node reads.
- :func:`table_luts`, :func:`group_sum_luts`: formulas per target (``cost_models/DIFFLUT.md``).
- Registered costs: ``luts`` of :class:`LUTLayer` (``pure=False``: it reads the truth
  tables, which change during training), :class:`GroupSum` and encoders, ``params`` of a
  :class:`LUTLayer`.
- :func:`lut_report`: the model-level count with unused nodes removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hwnas import cost as _cost
from hwnas.cost.luts import lut_model
from hwnas.cost.targets import Target, load_target
from hwnas.difflut.layers import ENCODERS, GroupSum, LUTLayer, ThermometerEncoder, lut_layers
from hwnas.errors import InvalidTypeError, InvalidValueError

if TYPE_CHECKING:
    import pandas as pd

    from hwnas.ir import LayerInfo

__all__ = [
    "effective_inputs",
    "group_sum_luts",
    "input_dependence",
    "lut_report",
    "table_luts",
    "used_nodes",
]


def _dependence_with_duplicates(row: Tensor, sources: list[int]) -> Tensor:
    """Dependence (k,) of one node whose inputs repeat a source.

    The node's function of its distinct sources is tabulated; each source it depends on is
    marked on the first position that reads it.
    """
    k = len(sources)
    distinct: list[int] = []
    slot = []
    for s in sources:
        if s not in distinct:
            distinct.append(s)
        slot.append(distinct.index(s))
    m = len(distinct)
    r = torch.arange(2**m)
    source_bits = (r[:, None] >> torch.arange(m)) & 1  # (2^m, m)
    address = (source_bits[:, slot] << torch.arange(k)).sum(1)
    t = row[address]
    dep = torch.zeros(k, dtype=torch.bool)
    for j in range(m):
        if bool((t != t[r ^ (1 << j)]).any()):
            dep[slot.index(j)] = True
    return dep


def input_dependence(layer: LUTLayer) -> Tensor:
    """Which inputs each node's binarised table depends on: bool (nodes, k).

    Input ``i`` counts when flipping bit ``i`` changes the table bit at some address. When a
    node reads the same source on several inputs (possible with learnable connections), the
    node's function of its distinct sources is analysed and each needed source is marked
    once.

    Example:
        >>> import torch
        >>> layer = LUTLayer(3, 1, k=2, seed=0)
        >>> with torch.no_grad():   # table of input 0 alone: addresses 1 and 3 are on
        ...     _ = layer.logits.copy_(torch.tensor([[-1.0, 1.0, -1.0, 1.0]]))
        >>> input_dependence(layer).tolist()
        [[True, False]]
    """
    bits, k = layer.truth_table().cpu(), layer.k
    nodes = bits.shape[0]
    dep = []
    for i in range(k):
        v = bits.reshape(nodes, 2 ** (k - 1 - i), 2, 2**i)
        dep.append((v[:, :, 0] != v[:, :, 1]).flatten(1).any(1))
    out = torch.stack(dep, 1)
    conn = layer.connection_indices().cpu()
    if k > 1:
        srt = conn.sort(1).values
        for n in (srt[:, 1:] == srt[:, :-1]).any(1).nonzero().flatten().tolist():
            out[n] = _dependence_with_duplicates(bits[n], conn[n].tolist())
    return out


def effective_inputs(layer: LUTLayer) -> Tensor:
    """Effective number of inputs of each node (pruned k), int64 (nodes,).

    Example:
        >>> import torch
        >>> layer = LUTLayer(3, 1, k=2, seed=0)
        >>> with torch.no_grad():
        ...     _ = layer.logits.copy_(torch.tensor([[-1.0, 1.0, -1.0, 1.0]]))
        >>> effective_inputs(layer).tolist()
        [1]
    """
    return input_dependence(layer).sum(1)


def used_nodes(model: nn.Module) -> list[Tensor]:
    """Per LUT layer of ``model``, which nodes some consumer reads: bool (nodes,) each.

    LUT layers are taken in ``model.modules()`` order as a chain (each reads the previous
    one's output). Every node of the last layer is used (the GroupSum head reads them all);
    a node of an earlier layer is used when a used node of the next layer depends on it
    (:func:`input_dependence`). If consecutive layers do not chain (``in_features`` differs
    from the previous ``out_features``) the earlier layer's nodes all count as used.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> first, last = LUTLayer(4, 3, k=2, seed=0), LUTLayer(3, 1, k=2, seed=1)
        >>> with torch.no_grad():   # the last node is a constant: it reads nothing
        ...     _ = last.logits.fill_(1.0)
        >>> [u.tolist() for u in used_nodes(nn.Sequential(first, last))]
        [[False, False, False], [True]]
    """
    layers = lut_layers(model)
    used = [torch.ones(m.out_features, dtype=torch.bool) for m in layers]
    for j in range(len(layers) - 1, 0, -1):
        if layers[j].in_features == layers[j - 1].out_features:
            used[j - 1] = _read_inputs(layers[j], used[j])
    return used


def _read_inputs(layer: LUTLayer, used: Tensor) -> Tensor:
    """Which of ``layer``'s inputs some used node depends on: bool (in_features,)."""
    dep = input_dependence(layer) & used[:, None]
    mask = torch.zeros(layer.in_features, dtype=torch.bool)
    mask[layer.connection_indices().cpu()[dep]] = True
    return mask


# --------------------------------------------------------------------------- LUT cost


def table_luts(k_eff: Tensor | int, target: Target | str) -> Tensor:
    """Physical LUTs of a 1-bit truth table with ``k_eff`` inputs on ``target`` (elementwise).

    ``0`` for a constant (``k_eff == 0``: a tie-off, no LUT); ``1`` when
    ``k_eff <= target.lut_inputs``; otherwise, with ``X = k_eff`` and ``L = lut_inputs``:

    - ``table == "logicnets"``: ``(2^(X-4) - (-1)^X) / 3`` (LogicNets LUTCost with Y = 1,
      Umuroglu et al., FPL 2020);
    - ``table == "shannon"``: ``2^(X-L+1) - 1``: Shannon expansion into ``2^(X-L)`` L-input
      leaves plus ``2^(X-L) - 1`` 2:1 muxes of one LUT each (``2^(X-3) - 1`` for LUT4).

    Example:
        >>> table_luts(torch.tensor([0, 4, 6, 7, 8]), "xc7-lut6").tolist()
        [0.0, 1.0, 1.0, 3.0, 5.0]
        >>> table_luts(torch.tensor([4, 5, 6, 7, 8]), "ice40-lut4").tolist()
        [1.0, 3.0, 7.0, 15.0, 31.0]
    """
    target = load_target(target)
    model = lut_model(target)
    x = torch.as_tensor(k_eff).to(torch.float64)
    if bool((x < 0).any()):
        raise InvalidValueError(f"`k_eff` must be >= 0, but got {k_eff!r}")
    if model.table == "logicnets":
        sign = torch.where(torch.remainder(x, 2) == 0, 1.0, -1.0).to(torch.float64)
        big = (torch.pow(2.0, x - 4) - sign) / 3
    else:
        big = torch.pow(2.0, x - target.lut_inputs + 1) - 1
    one = torch.ones_like(x)
    out = torch.where(x == 0, torch.zeros_like(x), torch.where(x <= target.lut_inputs, one, big))
    return out.round().to(torch.float32)


def group_sum_luts(features: int, k_classes: int, target: Target | str) -> Tensor:
    """LUTs of a popcount adder tree per class (GroupSum on ``features`` bits).

    Each class sums ``m = features / k_classes`` one-bit operands with a balanced binary
    adder tree: at every level, pairs of ``w``-bit operands go through one ``w``-bit adder
    (``w * luts_per_adder_bit`` LUTs) giving ``w + 1`` bits; an odd operand passes to the
    next level. For ``m = 2^d`` this is ``sum_{l=1..d} l * 2^(d-l) = 2m - d - 2`` adder bits.

    Example:
        >>> group_sum_luts(40, 10, "xc7-lut6").item()   # m = 4: two 1-bit + one 2-bit adder
        40.0
    """
    target = load_target(target)
    model = lut_model(target)
    if features % k_classes:
        raise InvalidValueError(
            f"`features` ({features}) must be divisible by `k_classes` ({k_classes})"
        )
    widths = [1] * (features // k_classes)
    adder_bits = 0
    while len(widths) > 1:
        nxt = []
        for a, b in zip(widths[0::2], widths[1::2], strict=False):
            adder_bits += max(a, b)
            nxt.append(max(a, b) + 1)
        if len(widths) % 2:
            nxt.append(widths[-1])
        widths = nxt
    return torch.tensor(float(k_classes * adder_bits * model.luts_per_adder_bit))


def _encoder_luts(encoder: ThermometerEncoder, target: Target, bits: int | None = None) -> Tensor:
    model = lut_model(target)
    comparators = encoder.out_features if bits is None else bits
    return torch.tensor(float(comparators * target.activation_bits * model.luts_per_comparator_bit))


@_cost.register("luts", LUTLayer, pure=False)
def lut_layer_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """LUTs of a LUT layer: ``sum over nodes of table_luts(effective k)``.

    The effective k of each node comes from its binarised table (:func:`effective_inputs`),
    so ``alive`` is ignored; the count is exact, not differentiable. The function sees one
    layer, so nodes no later layer reads still count: use :func:`lut_report` for the
    model-level count with unused nodes removed.
    """
    layer = info.module
    if not isinstance(layer, LUTLayer):
        raise InvalidTypeError(f"`info.module` must be a LUTLayer, but got {type(layer).__name__}")
    return table_luts(effective_inputs(layer), target).sum()


@_cost.register("params", LUTLayer)
def lut_layer_params(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """Table entries of a LUT layer, ``nodes * 2^k`` (connection logits are training-only)."""
    layer = info.module
    if not isinstance(layer, LUTLayer):
        raise InvalidTypeError(f"`info.module` must be a LUTLayer, but got {type(layer).__name__}")
    return torch.tensor(float(layer.out_features * 2**layer.k))


@_cost.register("luts", GroupSum)
def group_sum_layer_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """LUTs of a GroupSum's popcount trees: :func:`group_sum_luts` of ``info.in_channels``."""
    head = info.module
    if not isinstance(head, GroupSum):
        raise InvalidTypeError(f"`info.module` must be a GroupSum, but got {type(head).__name__}")
    if info.in_channels is None:
        raise InvalidValueError(f"GroupSum {info.name!r} needs `in_channels` to be costed")
    return group_sum_luts(int(info.in_channels), head.k_classes, target)


@_cost.register("luts", ThermometerEncoder)
def encoder_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """One ``activation_bits``-bit comparator per threshold per feature."""
    enc = info.module
    if not isinstance(enc, ThermometerEncoder):
        raise InvalidTypeError(
            f"`info.module` must be a ThermometerEncoder, but got {type(enc).__name__}"
        )
    return _encoder_luts(enc, target)


def lut_report(model: nn.Module, target: Target | str) -> pd.DataFrame:
    """Model-level LUT count with pruned inputs and unused nodes removed.

    One row per encoder, LUT layer and GroupSum of ``model`` (in ``model.modules()``
    order), columns ``layer``, ``type``, ``nodes``, ``used_nodes``, ``k``, ``mean_k_eff``
    (over used nodes), ``luts``. LUT layers count ``table_luts(k_eff)`` over their used nodes
    (:func:`used_nodes`); an encoder counts the comparators of the bits that a used node of
    the first LUT layer depends on (``used_nodes`` is that number of bits); the sum of
    ``luts`` is the model's estimate. Constant propagation is not done: a node whose input is
    a constant bit (a constant node or a threshold above the data range) keeps that input.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(LUTLayer(8, 20, k=6, seed=0), GroupSum(2))
        >>> report = lut_report(model, "xc7-lut6")
        >>> report[["layer", "nodes", "luts"]].values.tolist()   # 20 LUT6 + 2 trees of 10 bits
        [['0', 20, 20.0], ['1', 2, 32.0]]
    """
    import pandas as pd

    target = load_target(target)
    lut_model(target)
    layers = lut_layers(model)
    used = dict(zip(map(id, layers), used_nodes(model), strict=True))
    rows: list[dict[str, Any]] = []
    last_width: int | None = None
    for name, m in model.named_modules():
        if isinstance(m, LUTLayer):
            k_eff = effective_inputs(m)
            mask = used[id(m)]
            n_used = int(mask.sum())
            mean_k = float(k_eff[mask].float().mean()) if n_used else 0.0
            luts = float(table_luts(k_eff[mask], target).sum())
            rows.append(
                dict(
                    layer=name,
                    type="LUTLayer",
                    nodes=m.out_features,
                    used_nodes=n_used,
                    k=m.k,
                    mean_k_eff=mean_k,
                    luts=luts,
                )
            )
            last_width = m.out_features
        elif isinstance(m, ENCODERS):
            first = layers[0]
            n_bits = m.out_features
            if first.in_features == n_bits:  # comparators whose bit no used node reads go
                n_bits = int(_read_inputs(first, used[id(first)]).sum())
            rows.append(
                dict(
                    layer=name,
                    type=type(m).__name__,
                    nodes=m.out_features,
                    used_nodes=n_bits,
                    k=1,
                    mean_k_eff=1.0,
                    luts=float(_encoder_luts(m, target, n_bits)),
                )
            )
        elif isinstance(m, GroupSum):
            if last_width is None:
                raise InvalidValueError(f"GroupSum {name!r} does not follow a LUTLayer")
            rows.append(
                dict(
                    layer=name,
                    type="GroupSum",
                    nodes=m.k_classes,
                    used_nodes=m.k_classes,
                    k=last_width // m.k_classes,
                    mean_k_eff=float(last_width // m.k_classes),
                    luts=float(group_sum_luts(last_width, m.k_classes, target)),
                )
            )
    return pd.DataFrame(rows)

