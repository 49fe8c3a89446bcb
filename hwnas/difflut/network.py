"""A binary LUT network as plain data, and its simplification (constants, unused nodes).

- :func:`lut_network` reads a model's binary network once into a :class:`LUTNetwork`
  (tables, connections, encoder thresholds, head); the PyTorch binary module, the ONNX
  export and the Verilog export of :mod:`hwnas.hw` are all built from it.
- :func:`simplify` propagates constants and removes what nothing reads: a node whose table
  ignores an input loses that input; an input that is a constant (a constant node, or an
  encoder bit that is always 0 or 1) is folded into the table; a node left with no input
  is a constant; a node no used node reads is unused. :func:`hwnas.difflut.lut_report`
  counts LUTs on the result and :func:`hwnas.hw.export_verilog` writes it.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hwnas.difflut import LUTLayer
    >>> first, last = LUTLayer(4, 2, k=2, seed=0), LUTLayer(2, 1, k=2, seed=1)
    >>> with torch.no_grad():
    ...     _ = first.logits[0].fill_(5.0)       # node 0 of the first layer is constant 1
    >>> layers, read = simplify(lut_network(nn.Sequential(first, last)))
    >>> layers[0].nodes[0].sources, layers[0].nodes[0].table
    ((), 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from hwnas.difflut.layers import ENCODERS, GroupSum, LUTLayer
from hwnas.errors import InvalidValueError, ShapeError

__all__ = [
    "LUTNetwork",
    "LUTTable",
    "Node",
    "SimpleLayer",
    "lut_network",
    "reduce_layer",
    "simplify",
]


@dataclass(frozen=True)
class LUTTable:
    """One LUT layer as plain data.

    Attributes:
        name: The module path in the model.
        connections: int64 (nodes, k): the input index read by each node input.
        table: bool (nodes, 2^k): the binarised truth table, address ``sum_j bit_j 2^j``.
    """

    name: str
    connections: Tensor
    table: Tensor

    @property
    def nodes(self) -> int:
        return int(self.connections.shape[0])

    @property
    def k(self) -> int:
        return int(self.connections.shape[1])


@dataclass(frozen=True)
class LUTNetwork:
    """A binary LUT network as plain data: ``[encoder] -> LUT layers -> [GroupSum]``.

    Attributes:
        in_features: Features the network reads (encoder inputs, or first-layer bits).
        thresholds: float32 (features, bits) thermometer thresholds (bit ``x > t``), or None
            when the first LUT layer reads its inputs thresholded at 0.5.
        layers: The LUT layers in order; layer ``i + 1`` reads layer ``i``'s outputs.
        k_classes: GroupSum classes, or None without a head.
        tau: GroupSum temperature (1.0 without a head).
    """

    in_features: int
    thresholds: Tensor | None
    layers: tuple[LUTTable, ...]
    k_classes: int | None = None
    tau: float = 1.0

    @property
    def out_bits(self) -> int:
        """Bits of the last LUT layer."""
        return self.layers[-1].nodes


_PASS_THROUGH = (nn.Sequential, nn.Flatten, nn.Identity)


def lut_network(model: nn.Module) -> LUTNetwork:
    """Read ``model``'s binary network into plain data (copies, on the CPU).

    ``model``'s modules, in ``model.modules()`` order, must form the chain
    ``[encoder] -> LUTLayer... -> [GroupSum]`` (``nn.Sequential``, ``nn.Flatten`` and
    ``nn.Identity`` are allowed); each layer must read as many features as the one before
    produces.

    Example:
        >>> from torch import nn
        >>> net = lut_network(nn.Sequential(LUTLayer(6, 8, k=3, seed=0), GroupSum(2)))
        >>> net.in_features, [t.nodes for t in net.layers], net.k_classes
        (6, [8], 2)
    """
    thresholds: Tensor | None = None
    layers: list[LUTTable] = []
    head: GroupSum | None = None
    width: int | None = None
    for name, m in model.named_modules():
        if isinstance(m, ENCODERS):
            if thresholds is not None or layers:
                raise InvalidValueError(f"encoder {name!r} must come first in the LUT network")
            if m.in_features == 0:
                raise InvalidValueError(f"encoder {name!r} is not fitted; call .fit(data) first")
            thresholds = m.thresholds.detach().float().cpu().clone()
            width = m.out_features
        elif isinstance(m, LUTLayer):
            if head is not None:
                raise InvalidValueError(f"LUTLayer {name!r} follows the GroupSum head")
            if width is not None and m.in_features != width:
                raise ShapeError(
                    f"LUTLayer {name!r} reads {m.in_features} features, but the layer before "
                    f"gives {width}"
                )
            layers.append(LUTTable(name, m.connection_indices().cpu().clone(),
                                   m.truth_table().cpu().clone()))
            width = m.out_features
        elif isinstance(m, GroupSum):
            if not layers or head is not None:
                raise InvalidValueError(f"GroupSum {name!r} must follow the last LUTLayer")
            if layers[-1].nodes % m.k_classes:
                raise ShapeError(
                    f"GroupSum {name!r}: {layers[-1].nodes} features are not divisible by "
                    f"k_classes={m.k_classes}"
                )
            head = m
        elif not isinstance(m, _PASS_THROUGH):
            raise InvalidValueError(
                f"module {name!r} ({type(m).__name__}) is not part of a LUT network; allowed: "
                "ThermometerEncoder, LUTLayer, GroupSum, nn.Sequential, nn.Flatten, nn.Identity"
            )
    if not layers:
        raise InvalidValueError(f"no LUTLayer in {type(model).__name__}")
    if thresholds is not None:
        in_features = int(thresholds.shape[0])
    else:
        in_features = next(m for m in model.modules() if isinstance(m, LUTLayer)).in_features
    return LUTNetwork(
        in_features=in_features,
        thresholds=thresholds,
        layers=tuple(layers),
        k_classes=None if head is None else head.k_classes,
        tau=1.0 if head is None else head.tau,
    )


@dataclass(frozen=True)
class Node:
    """One node after simplification.

    Attributes:
        sources: Distinct indices of the inputs it reads (into the previous stage's
            outputs), address bit ``m`` is ``sources[m]``; empty for a constant.
        table: The truth table as an integer: bit ``a`` is the output at address ``a``
            (``2^len(sources)`` bits). For a constant, 0 or 1.
    """

    sources: tuple[int, ...]
    table: int

    @property
    def is_constant(self) -> bool:
        return not self.sources


@dataclass(frozen=True)
class SimpleLayer:
    """A LUT layer after :func:`simplify`: every node, and which are used.

    Attributes:
        name: The module path.
        nodes: One :class:`Node` per node of the layer.
        used: Whether a used node of the next layer (or the output) reads each node;
            constant nodes of inner layers are folded into their readers and never used.
    """

    name: str
    nodes: tuple[Node, ...]
    used: tuple[bool, ...]

    def live(self) -> list[int]:
        """Indices of the nodes that are built: used and not constant."""
        return [i for i, (n, u) in enumerate(zip(self.nodes, self.used, strict=True))
                if u and not n.is_constant]


def _reduce(table: np.ndarray, conn: list[int], const: dict[int, bool]) -> Node:
    """Fold constant inputs and merge repeated ones, then drop inputs the table ignores."""
    free: list[int] = []
    for s in conn:
        if s not in const and s not in free:
            free.append(s)
    r = np.arange(2 ** len(free))
    address = np.zeros_like(r)
    for j, s in enumerate(conn):
        bit = int(const[s]) if s in const else (r >> free.index(s)) & 1
        address |= bit << j
    t = table[address]
    i = 0
    while i < len(free):
        v = t.reshape(2 ** (len(free) - 1 - i), 2, 2**i)
        if bool((v[:, 0, :] == v[:, 1, :]).all()):
            t = v[:, 0, :].reshape(-1)
            free.pop(i)
        else:
            i += 1
    bits = int(sum(1 << a for a in np.flatnonzero(t).tolist()))
    return Node(tuple(free), bits)


def reduce_layer(layer: LUTTable, constant_inputs: dict[int, bool] | None = None
                 ) -> tuple[Node, ...]:
    """Each node of ``layer`` reduced to the inputs its table depends on (constants folded).

    Example:
        >>> import torch
        >>> table = LUTTable("l", torch.tensor([[0, 1]]), torch.tensor([[False, True] * 2]))
        >>> reduce_layer(table)     # the table is input 0 alone: a wire
        (Node(sources=(0,), table=2),)
    """
    const = dict(constant_inputs or {})
    table = layer.table.detach().cpu().numpy()
    conn = layer.connections.tolist()
    return tuple(_reduce(table[n], conn[n], const) for n in range(layer.nodes))


def simplify(
    net: LUTNetwork, constant_inputs: dict[int, bool] | None = None
) -> tuple[tuple[SimpleLayer, ...], tuple[bool, ...]]:
    """Propagate constants through ``net`` and find the nodes and inputs that are read.

    Args:
        net: The network (:func:`lut_network`).
        constant_inputs: First-layer input bits known to be constant (index -> value),
            e.g. encoder bits whose threshold no input value crosses.

    Returns:
        ``(layers, read)``: one :class:`SimpleLayer` per LUT layer, and for each bit the
        first layer reads, whether a used node depends on it.
    """
    const = dict(constant_inputs or {})
    reduced: list[list[Node]] = []
    for layer in net.layers:
        nodes = list(reduce_layer(layer, const))
        reduced.append(nodes)
        const = {i: bool(n.table) for i, n in enumerate(nodes) if n.is_constant}
    used = [True] * len(reduced[-1])
    out: list[SimpleLayer] = []
    for i in range(len(reduced) - 1, -1, -1):
        nodes = reduced[i]
        out.append(SimpleLayer(net.layers[i].name, tuple(nodes), tuple(used)))
        width = net.layers[i - 1].nodes if i > 0 else _first_width(net)
        read = [False] * width
        for n, u in zip(nodes, used, strict=True):
            if u:
                for s in n.sources:
                    read[s] = True
        used = read
    return tuple(reversed(out)), tuple(used)


def _first_width(net: LUTNetwork) -> int:
    if net.thresholds is not None:
        return int(net.thresholds.numel())
    return net.in_features
