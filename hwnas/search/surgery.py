"""The graph surgery that inserts the masks of :mod:`hwnas.search.masks`, and undoes it.

:func:`insert_masks` adds the gate input (and the keep input where a masked norm needs it)
and a mask before every layer that reads gated channels; :func:`strip_masks` puts the
user's layers back. Where a conv or linear reads a BatchNorm through positively
homogeneous steps only, the gates fold into the BatchNorm's affine
(:class:`~hwnas.search.masks.GatedBatchNorm`; why that is exact is in the docstring of
:mod:`hwnas.search.masks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from hwnas.errors import InvalidValueError
from hwnas.graph.ir import LAYER_KEY, PARAMS_KEY, LayerInfo, ParamSlots
from hwnas.search.masks import (
    BATCH_NORMS,
    GATES_INPUT,
    KEEP_INPUT,
    ChannelMask,
    GatedBatchNorm,
    MaskedAttention,
    MaskedNorm,
    ParamMask,
    WeightMasked,
)

__all__ = ["insert_masks", "strip_masks", "unpruned"]

#: ``slot_index(slots)``: the gate entry of each ``(group, position)`` slot.
SlotIndex = Callable[[np.ndarray | None], torch.Tensor]


def _gated(index: torch.Tensor, n_gates: int) -> bool:
    return bool((index < n_gates).any())


def insert_masks(gm: fx.GraphModule, slot_index: SlotIndex, n_gates: int,
                 per_example: bool) -> bool:
    """Add the gate input and a mask before every layer that reads gated channels.

    ``slot_index(slots)`` gives the gate-vector entry of each channel slot (``n_gates`` for
    a frozen one). Modifies ``gm`` in place and recompiles it. Returns True when a masked
    norm reads the keep flags, which then are a further input after the gates.

    Raises:
        InvalidValueError: per-example gates on a layer whose gates can only be folded into
            its weights (attention layers).
    """
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for p in placeholders:
        p.args = ()  # every input is passed: no defaults before the required gate input
    with graph.inserting_after(placeholders[-1]):
        gates = graph.placeholder(GATES_INPUT)
    with graph.inserting_after(gates):
        keep = graph.placeholder(KEEP_INPUT)
    surgery = _Surgery(gm, slot_index, n_gates, per_example, gates, keep)
    for node in list(graph.nodes):
        surgery.visit(node)
    if not keep.users:
        graph.erase_node(keep)
    graph.lint()
    gm.recompile()
    return bool(surgery.uses_keep)


class _Surgery:
    """Inserts the mask of one node at a time (see :func:`insert_masks`)."""

    def __init__(self, gm: fx.GraphModule, slot_index: SlotIndex, n_gates: int,
                 per_example: bool, gates: fx.Node, keep: fx.Node) -> None:
        self.gm, self.slot_index, self.n_gates = gm, slot_index, n_gates
        self.per_example, self.gates, self.keep = per_example, gates, keep
        self.uses: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.uses[str(node.target)] = self.uses.get(str(node.target), 0) + 1
        self.k = 0
        self.uses_keep = False

    def _name(self, what: str) -> str:
        self.k += 1
        return f"hwnas_{what}_{self.k}"

    def visit(self, node: fx.Node) -> None:
        if node.op == "get_attr" and PARAMS_KEY in node.meta:
            self._param(node, node.meta[PARAMS_KEY])
            return
        info: LayerInfo | None = node.meta.get(LAYER_KEY)
        if info is None or info.in_slots is None:
            return
        index = self.slot_index(info.in_slots)
        if not _gated(index, self.n_gates):
            return
        if info.kind == "norm":
            if info.reads is not None:
                self._norm(node, info, index)
        elif info.kind == "attention" and isinstance(info.module, nn.MultiheadAttention):
            self._attention(node, info, index)
        elif node.op == "call_module" and info.kind in ("conv", "linear"):
            self._module(node, info, index)
        elif node.op != "call_module" and info.reads is not None:
            if info.scaled_params and not self.per_example:
                return  # the parameters' masks (ParamMask) fold the gates in
            self._activation(node, info.reads, index)
        elif info.scaled_params and self.per_example:
            raise InvalidValueError(
                f"per_example gates cannot mask {info.target} at {node.name} (its gates "
                "fold into its weights); wrap with per_example=False")

    def _param(self, node: fx.Node, ps: ParamSlots) -> None:
        dims = []
        for dim, slots, scaled in zip(ps.dims, ps.slots, ps.scaled, strict=True):
            index = self.slot_index(slots)
            index[torch.as_tensor(~scaled)] = self.n_gates
            if _gated(index, self.n_gates):
                dims.append((dim, index))
        if not dims or self.per_example:
            return
        name = self._name("param")
        self.gm.add_submodule(name, ParamMask(dims))
        with self.gm.graph.inserting_after(node):
            masked = self.gm.graph.call_module(name, (node, self.gates))
        node.replace_all_uses_with(masked, delete_user_cb=lambda u: u is not masked)

    def _norm(self, node: fx.Node, info: LayerInfo, index: torch.Tensor) -> None:
        graph = self.gm.graph
        dim = info.reads[1] if info.reads is not None else 1
        self.uses_keep = True
        if node.op == "call_module":
            layer: Any = self.gm.get_submodule(str(node.target))
            group = isinstance(layer, nn.GroupNorm)
            start = None if group else len(info.out_shape or ()) - len(layer.normalized_shape)
            wrapped = MaskedNorm(index, dim, start, getattr(layer, "num_groups", 1),
                                 float(layer.eps), layer)
            self.gm.set_submodule(str(node.target), wrapped)
            node.args = (node.args[0], self.keep)
            return
        x, name = node.args[0], str(info.target)
        kw = dict(node.kwargs)
        args = list(node.args)
        if name == "layer_norm":
            shape = args[1] if len(args) > 1 else kw["normalized_shape"]
            k = len(shape) if isinstance(shape, (list, tuple)) else 1
            start, groups = len(info.out_shape or ()) - k, 1
            weight, bias = _arg(args, kw, "weight", 2), _arg(args, kw, "bias", 3)
            eps = _arg(args, kw, "eps", 4, 1e-5)
        else:  # group_norm
            start, groups = None, _arg(args, kw, "num_groups", 1)
            weight, bias = _arg(args, kw, "weight", 2), _arg(args, kw, "bias", 3)
            eps = _arg(args, kw, "eps", 4, 1e-5)
        mod = self._name("norm")
        self.gm.add_submodule(mod, MaskedNorm(index, dim, start, groups, eps))
        with graph.inserting_before(node):
            new = graph.call_module(mod, (x, weight, bias, self.keep))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        new.meta.update({k: v for k, v in node.meta.items()})

    def _attention(self, node: fx.Node, info: LayerInfo, index: torch.Tensor) -> None:
        if self.per_example:
            raise InvalidValueError(
                f"per_example gates cannot mask the MultiheadAttention {info.target} (its "
                "gates fold into its weights); wrap with per_example=False")
        layer = self.gm.get_submodule(str(node.target))
        self.gm.set_submodule(str(node.target), MaskedAttention(layer, index))  # type: ignore[arg-type]
        node.kwargs = {**node.kwargs, GATES_INPUT: self.gates}

    def _module(self, node: fx.Node, info: LayerInfo, index: torch.Tensor) -> None:
        if info.depthwise:
            return
        if not self.per_example and self._fold_into_norm(node, info):
            return
        module = self.gm.get_submodule(str(node.target))
        if not self.per_example and self.uses[str(node.target)] == 1:
            self.gm.set_submodule(str(node.target), WeightMasked(module, index))  # type: ignore[arg-type]
            node.args = (*node.args, self.gates)
            return
        self._activation(node, (0, 1 if info.kind == "conv" else -1), index)

    def _fold_into_norm(self, node: fx.Node, info: LayerInfo) -> bool:
        """Gate the BatchNorm that ``node`` reads through homogeneous steps only (see the
        module docstring); False (nothing changed) where the pattern does not hold."""
        x = node.args[0] if node.args else None
        flattened = False
        while isinstance(x, fx.Node) and len(x.users) == 1 and _homogeneous(self.gm, x):
            flattened = flattened or _flatten_start(self.gm, x) is not None
            x = x.args[0] if x.args else None
        if not isinstance(x, fx.Node) or len(x.users) != 1 or x.op != "call_module" \
                or x.kwargs or len(x.args) != 1 or self.uses[str(x.target)] != 1:
            return False
        bn = self.gm.get_submodule(str(x.target))
        bn_info: LayerInfo | None = x.meta.get(LAYER_KEY)
        if type(bn) not in BATCH_NORMS or bn_info is None or bn_info.out_slots is None \
                or info.in_slots is None:
            return False
        slots = bn_info.out_slots
        if flattened and info.in_slots.shape[1] % slots.shape[1] == 0:
            # flatten from the channel dim: each channel's positions are consecutive
            slots = np.repeat(slots, info.in_slots.shape[1] // slots.shape[1], axis=1)
        if slots.shape != info.in_slots.shape or not np.array_equal(slots, info.in_slots):
            return False
        self.gm.set_submodule(str(x.target),
                              GatedBatchNorm(bn, self.slot_index(bn_info.out_slots)))  # type: ignore[arg-type]
        x.args = (x.args[0], self.gates)
        return True

    def _activation(self, node: fx.Node, reads: tuple[int, int], index: torch.Tensor) -> None:
        name = self._name("mask")
        self.gm.add_submodule(name, ChannelMask(index, reads[1]))
        x = node.args[reads[0]]
        with self.gm.graph.inserting_before(node):
            masked = self.gm.graph.call_module(name, (x, self.gates))
        args = list(node.args)
        args[reads[0]] = masked
        node.args = tuple(args)


#: Modules that commute with a per-channel gate >= 0 and keep the channels on dim 1.
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d,
                        nn.Dropout2d, nn.Dropout3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                        nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten)
_HOMOGENEOUS_FUNCTIONS = (F.relu, torch.relu, F.leaky_relu, F.dropout, F.avg_pool1d,
                          F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                          F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.max_pool1d,
                          F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                          F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.flatten)
_HOMOGENEOUS_METHODS = ("relu", "flatten")


def _flatten_start(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """The first flattened dim of a flatten node (None for another node)."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return module.start_dim if isinstance(module, nn.Flatten) else None
    if node.target is torch.flatten or (node.op == "call_method" and node.target == "flatten"):
        return int(_arg(list(node.args), dict(node.kwargs), "start_dim", 1, 0))
    return None


def _homogeneous(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is a ReLU, pooling, dropout, zero padding or flatten (from dim >= 1),
    so scaling a channel of its input by ``g >= 0`` scales the same channel of its output.
    (A pooling that also returns indices is read through a getitem, which ends the chain.)"""
    if node.op == "call_module":
        if not isinstance(gm.get_submodule(str(node.target)), _HOMOGENEOUS_MODULES):
            return False
    elif node.op == "call_function" and node.target is F.pad:
        # zero padding (of dims after the channels: the slots of the reader say so)
        args, kwargs = list(node.args), dict(node.kwargs)
        return _arg(args, kwargs, "mode", 2, "constant") == "constant" \
            and _arg(args, kwargs, "value", 3, None) in (None, 0, 0.0)
    elif not ((node.op == "call_function" and node.target in _HOMOGENEOUS_FUNCTIONS)
              or (node.op == "call_method" and node.target in _HOMOGENEOUS_METHODS)):
        return False
    start = _flatten_start(gm, node)
    return start is None or start >= 1


def _arg(args: list[Any], kwargs: dict[str, Any], name: str, pos: int, default: Any = None) -> Any:
    return args[pos] if len(args) > pos else kwargs.get(name, default)


def strip_masks(gm: fx.GraphModule) -> None:
    """Undo :func:`insert_masks` in place: the user's layers back, masks and gate input gone.

    A functional normalisation that was replaced by a :class:`MaskedNorm` comes back as the
    plain ``F.layer_norm`` / ``F.group_norm`` call.
    """
    graph = gm.graph
    for name, module in list(gm.named_modules()):
        if isinstance(module, (WeightMasked, MaskedAttention, GatedBatchNorm)) or (
                isinstance(module, MaskedNorm) and module.layer is not None):
            gm.set_submodule(name, module.layer)  # type: ignore[arg-type]
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        if isinstance(module, (ChannelMask, ParamMask)):
            node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
            graph.erase_node(node)
            gm.delete_submodule(str(node.target))
        elif isinstance(module, MaskedNorm):
            _restore_norm(gm, node, module)
    for node in list(graph.nodes):
        if node.op == "placeholder" and node.target in (GATES_INPUT, KEEP_INPUT):
            for user in list(node.users):
                user.args = tuple(a for a in user.args if a is not node)
                user.kwargs = {k: v for k, v in user.kwargs.items() if v is not node}
            graph.erase_node(node)
    graph.lint()
    gm.recompile()


def _restore_norm(gm: fx.GraphModule, node: fx.Node, module: MaskedNorm) -> None:
    x, weight, bias, _ = node.args
    graph = gm.graph
    with graph.inserting_before(node):
        if module.start is None:
            new = graph.call_function(F.group_norm, (x, module.groups, weight, bias, module.eps))
        else:
            shape = tuple((node.meta[LAYER_KEY].out_shape or ())[module.start:])
            new = graph.call_function(F.layer_norm, (x, shape, weight, bias, module.eps))
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    gm.delete_submodule(str(node.target))


def unpruned(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of a searched graph without its masks: the user's model, every channel kept
    (the "before" of a report).

    Example:
        >>> import torch, hwnas
        >>> from torch import nn
        >>> s = hwnas.wrap(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        ...                torch.randn(1, 3))
        >>> unpruned(s.gm)(torch.ones(1, 3)).shape
        torch.Size([1, 2])
    """
    import copy

    out = copy.deepcopy(gm)
    strip_masks(out)
    return out
