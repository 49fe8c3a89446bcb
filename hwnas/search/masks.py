"""Mask modules and the graph surgery that inserts them.

The searched graph takes the gate values as an explicit last input, ``hwnas_gates``: a flat
vector ``z`` (or a ``(batch, n)`` matrix for per-example gates) with one entry per gate and a
trailing constant 1 that frozen channels read. Every mask holds the index of the entry each
of its channels reads and multiplies its channels by ``z[index]``. Nothing is shared between
masks or kept between calls: calling the graph without gate values is an error, and
``None`` runs the unmasked network on purpose (the warm-up does).

Gates mask the *inputs* of the layers that read a group's channels (convs and linears,
depthwise convs excepted: their outputs are the same channels, masked downstream). A pruned
channel therefore contributes exactly nothing wherever it is read, whatever sits between its
producer and its readers (BatchNorm's shift, activations with f(0) != 0, residual adds):
this is what removing the channel does, so the pruned model computes the same function as
the search model in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
from torch import nn

from hwnas.ir import LAYER_KEY, LayerInfo

__all__ = ["GATES_INPUT", "ChannelMask", "WeightMasked", "insert_masks", "strip_masks"]

#: Name of the graph input that carries the gate values.
GATES_INPUT = "hwnas_gates"


def _gather(z: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return z.index_select(-1, index).to(dtype)


class ChannelMask(nn.Module):
    """Multiplies its input's channels along ``dim`` by their gate values.

    Args:
        index: For each channel, the entry of the gate vector it reads.
        dim: The channel dim of the masked tensor.
    """

    index: torch.Tensor

    def __init__(self, index: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index.clone(), persistent=False)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if z is None:
            return x
        values = _gather(z, self.index, x.dtype)
        shape = [1] * x.dim()
        shape[self.dim % x.dim()] = values.shape[-1]
        if values.dim() == 2:  # one gate draw per example
            shape[0] = values.shape[0]
        return x * values.reshape(shape)


class WeightMasked(nn.Module):
    """A conv or linear layer whose weight's input channels are scaled by their gates.

    conv(x * z) == conv_{W * z}(x), and a weight is far smaller than an activation, so with
    one gate draw per batch the mask is folded into the weight. ``layer`` is the user's
    layer, unchanged; :func:`strip_masks` puts it back.
    """

    index: torch.Tensor

    def __init__(self, layer: nn.Linear | nn.modules.conv._ConvNd, index: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("index", index.clone(), persistent=False)
        self._shape = [1, -1] + [1] * (layer.weight.dim() - 2)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        layer = self.layer
        weight = layer.weight
        if z is not None:
            weight = weight * _gather(z, self.index, weight.dtype).reshape(self._shape)
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)  # type: ignore[operator]


def insert_masks(gm: fx.GraphModule, index_of: Callable[[LayerInfo], torch.Tensor | None],
                 per_example: bool) -> None:
    """Add the gate input and a mask before every layer that reads gated channels.

    ``index_of(info)`` gives, for a conv or linear layer, the gate-vector entry of each of
    its input channels, or None when the layer reads no gated channel. A layer called once
    with per-batch gates becomes a :class:`WeightMasked`; otherwise a :class:`ChannelMask`
    node multiplies the activation. Modifies ``gm`` in place and recompiles it.
    """
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for p in placeholders:
        p.args = ()  # every input is passed: no defaults before the required gate input
    with graph.inserting_after(placeholders[-1]):
        gates = graph.placeholder(GATES_INPUT)
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
    k = 0
    for node in list(graph.nodes):
        info: LayerInfo | None = node.meta.get(LAYER_KEY)
        if info is None or node.op != "call_module" or info.kind not in ("conv", "linear"):
            continue
        if info.depthwise or info.in_slots is None:
            continue
        index = index_of(info)
        if index is None:
            continue
        module = gm.get_submodule(str(node.target))
        if not per_example and uses[str(node.target)] == 1:
            gm.set_submodule(str(node.target), WeightMasked(module, index))  # type: ignore[arg-type]
            node.args = (*node.args, gates)
            continue
        name = f"hwnas_mask_{k}"
        k += 1
        gm.add_submodule(name, ChannelMask(index, 1 if info.kind == "conv" else -1))
        x = node.args[0]
        with graph.inserting_before(node):
            masked = graph.call_module(name, (x, gates))
        node.replace_input_with(x, masked)
    graph.lint()
    gm.recompile()


def strip_masks(gm: fx.GraphModule) -> None:
    """Undo :func:`insert_masks` in place: the user's layers back, masks and gate input gone."""
    graph = gm.graph
    for name, module in list(gm.named_modules()):
        if isinstance(module, WeightMasked):
            gm.set_submodule(name, module.layer)
    for node in list(graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)),
                                                   ChannelMask):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            gm.delete_submodule(str(node.target))
    for node in list(graph.nodes):
        if node.op == "placeholder" and node.target == GATES_INPUT:
            for user in list(node.users):
                user.args = tuple(a for a in user.args if a is not node)
            graph.erase_node(node)
    graph.lint()
    gm.recompile()
