"""LUT costs of DiffLUT networks: what a node depends on, which nodes are used, LUT counts.

- :func:`input_dependence`, :func:`effective_inputs`: the inputs a node's binarised table
  depends on (pruned inputs cost nothing).
- :func:`used_nodes`: the nodes the Verilog builds.
- :func:`group_sum_luts`: a GroupSum's popcounts; the node, comparator and popcount formulas
  are in :mod:`hwnas.cost.luts` (``hwnas/cost/targets/DIFFLUT.md``).
- Registered costs: ``luts`` of :class:`LUTLayer` (``pure=False``: it reads the truth
  tables, which change during training), :class:`GroupSum` and encoders, ``params`` of a
  :class:`LUTLayer`.
- :func:`lut_report`: the model-level estimate of what the Verilog export builds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hwnas import cost as _cost
from hwnas.cost.luts import (
    comparator_luts,
    lut_model,
    node_luts,
    popcount_luts,
    table_luts,
    whole,
)
from hwnas.cost.target import Target, load_target
from hwnas.difflut.layers import ENCODERS, GroupSum, LUTLayer, ThermometerEncoder
from hwnas.difflut.network import LUTTable, Node, lut_network, reduce_layer, simplify
from hwnas.errors import InvalidTypeError, InvalidValueError

if TYPE_CHECKING:
    import pandas as pd

    from hwnas.graph.ir import LayerInfo

__all__ = [
    "effective_inputs",
    "group_sum_luts",
    "input_dependence",
    "lut_report",
    "table_luts",
    "used_nodes",
]


def _table(layer: LUTLayer) -> LUTTable:
    return LUTTable("", layer.connection_indices().cpu(), layer.truth_table().cpu())


def input_dependence(layer: LUTLayer) -> Tensor:
    """Which inputs each node's binarised table depends on: bool (nodes, k).

    Read off the one table reduction every export and count uses
    (:func:`hwnas.difflut.reduce_layer`): input ``i`` counts when the reduced node keeps its
    source. When a node reads the same source on several inputs (possible with learnable
    connections), the source is marked once, on the first input that reads it.

    Example:
        >>> import torch
        >>> layer = LUTLayer(3, 1, k=2, seed=0)
        >>> with torch.no_grad():   # table of input 0 alone: addresses 1 and 3 are on
        ...     _ = layer.logits.copy_(torch.tensor([[-1.0, 1.0, -1.0, 1.0]]))
        >>> input_dependence(layer).tolist()
        [[True, False]]
    """
    conn = layer.connection_indices().cpu().tolist()
    out = torch.zeros(layer.out_features, layer.k, dtype=torch.bool)
    for n, node in enumerate(reduce_layer(_table(layer))):
        for s in node.sources:
            out[n, conn[n].index(s)] = True
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
    """Per LUT layer of ``model``, which nodes are built: bool (nodes,) each.

    What the Verilog builds, from the same analysis (:func:`hwnas.difflut.simplify`):
    constants are propagated (a node whose table no longer depends on anything is folded
    into its readers), inputs a table ignores are dropped, and a node of an earlier layer
    is used when a used node of the next layer reads it. Every non-constant node of the
    last layer is used (the GroupSum head reads them all).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> first, last = LUTLayer(4, 3, k=2, seed=0), LUTLayer(3, 1, k=2, seed=1)
        >>> with torch.no_grad():   # the last node is a constant: it reads nothing
        ...     _ = last.logits.fill_(1.0)
        >>> [u.tolist() for u in used_nodes(nn.Sequential(first, last))]
        [[False, False, False], [False]]
    """
    layers, _ = simplify(lut_network(model))
    return [torch.tensor([i in set(layer.live()) for i in range(len(layer.nodes))],
                         dtype=torch.bool) for layer in layers]


# --------------------------------------------------------------------------- LUT cost


def group_sum_luts(features: int, k_classes: int, target: Target | str) -> Tensor:
    """LUTs of a GroupSum head: ``k_classes`` popcounts of ``features / k_classes`` bits.

    Each popcount is :func:`hwnas.cost.luts.popcount_luts` (fitted to yosys on calibrated
    targets, a balanced adder tree otherwise).

    Example:
        >>> round(group_sum_luts(40, 10, "xc7-lut6").item(), 3)   # 10 popcounts of 4 bits
        28.265
    """
    target = load_target(target)
    if k_classes < 1 or features % k_classes:
        raise InvalidValueError(
            f"`features` ({features}) must be divisible by `k_classes` ({k_classes})"
        )
    return torch.tensor(float(k_classes * popcount_luts(features // k_classes, target)))


def _layer_luts(nodes: Iterable[Node], target: Target) -> float:
    return sum(node_luts(len(n.sources), n.table, target) for n in nodes)


@_cost.register("luts", LUTLayer, pure=False)
def lut_layer_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """LUTs of a LUT layer: :func:`hwnas.cost.luts.node_luts` of each node's reduced table.

    Each node's table is reduced to the inputs it depends on (:func:`reduce_layer`); the
    count reads the truth tables (registered ``pure=False``), so ``alive`` is ignored and
    the count is exact, not differentiable. The function sees one layer, so nodes no later
    layer reads still count: :func:`lut_report` gives the model-level count.
    """
    layer = info.module
    if not isinstance(layer, LUTLayer):
        raise InvalidTypeError(f"`info.module` must be a LUTLayer, but got {type(layer).__name__}")
    return whole(torch.tensor(_layer_luts(reduce_layer(_table(layer)), target)))


@_cost.register("params", LUTLayer)
def lut_layer_params(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """Table entries of a LUT layer, ``nodes * 2^k`` (connection logits are training-only)."""
    layer = info.module
    if not isinstance(layer, LUTLayer):
        raise InvalidTypeError(f"`info.module` must be a LUTLayer, but got {type(layer).__name__}")
    return torch.tensor(float(layer.out_features * 2**layer.k))


@_cost.register("luts", GroupSum)
def group_sum_layer_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """LUTs of a GroupSum's popcounts: :func:`group_sum_luts` of ``info.in_channels``."""
    head = info.module
    if not isinstance(head, GroupSum):
        raise InvalidTypeError(f"`info.module` must be a GroupSum, but got {type(head).__name__}")
    if info.in_channels is None:
        raise InvalidValueError(f"GroupSum {info.name!r} needs `in_channels` to be costed")
    return whole(group_sum_luts(int(info.in_channels), head.k_classes, target))


@_cost.register("luts", ThermometerEncoder)
def encoder_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """One comparator of an ``activation_bits``-bit input per threshold per feature."""
    enc = info.module
    if not isinstance(enc, ThermometerEncoder):
        raise InvalidTypeError(
            f"`info.module` must be a ThermometerEncoder, but got {type(enc).__name__}"
        )
    return whole(torch.tensor(enc.out_features * comparator_luts(target.activation_bits, target)))


def lut_report(
    model: nn.Module, target: Target | str, constant_inputs: dict[int, bool] | None = None
) -> pd.DataFrame:
    """Model-level LUT estimate of what the Verilog export builds, one row per stage.

    The network is simplified first (:func:`hwnas.difflut.simplify`: constants propagated,
    inputs a table ignores dropped, unused nodes removed). Rows: the encoder (comparators
    of ``activation_bits``-bit inputs whose bit a built node reads), each LUT layer
    (:func:`hwnas.cost.luts.node_luts` of every built node, with its table) and the GroupSum
    (one popcount per class of its non-constant bits). Columns ``layer``, ``type``,
    ``nodes``, ``used_nodes`` (built nodes, comparators or classes), ``k``, ``mean_k_eff``
    (over built nodes) and ``luts``, rounded to whole LUTs; their sum is the estimate.

    Args:
        model: A LUT network (:func:`hwnas.difflut.lut_network`).
        target: A target with a LUT model.
        constant_inputs: First-layer bits known to be constant (see ``simplify``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(LUTLayer(8, 20, k=6, seed=0), GroupSum(2))
        >>> report = lut_report(model, "xc7-lut6")
        >>> report[["layer", "nodes", "used_nodes"]].values.tolist()
        [['0', 20, 20], ['1', 2, 2]]
    """
    import pandas as pd

    target = load_target(target)
    lut_model(target)
    net = lut_network(model)
    layers, read = simplify(net, constant_inputs)
    by_name = {layer.name: layer for layer in layers}
    rows: list[dict[str, Any]] = []
    for name, m in model.named_modules():
        if isinstance(m, LUTLayer) and name in by_name:
            layer = by_name[name]
            live = [layer.nodes[j] for j in layer.live()]
            k_eff = [len(n.sources) for n in live]
            rows.append(dict(layer=name, type="LUTLayer", nodes=m.out_features,
                             used_nodes=len(live), k=m.k,
                             mean_k_eff=sum(k_eff) / len(k_eff) if k_eff else 0.0,
                             luts=float(round(_layer_luts(live, target)))))
        elif isinstance(m, ENCODERS):
            n_bits = sum(read)
            luts = n_bits * comparator_luts(target.activation_bits, target)
            rows.append(dict(layer=name, type=type(m).__name__, nodes=m.out_features,
                             used_nodes=n_bits, k=1, mean_k_eff=1.0,
                             luts=float(round(luts))))
        elif isinstance(m, GroupSum):
            last = layers[-1]
            per = len(last.nodes) // m.k_classes
            terms = [sum(not last.nodes[j].is_constant for j in range(c * per, (c + 1) * per))
                     for c in range(m.k_classes)]
            luts = sum(popcount_luts(t, target) for t in terms)
            rows.append(dict(layer=name, type="GroupSum", nodes=m.k_classes,
                             used_nodes=m.k_classes, k=per, mean_k_eff=float(per),
                             luts=float(round(luts))))
    return pd.DataFrame(rows)
