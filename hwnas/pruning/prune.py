"""Physical channel removal on a traced graph: :func:`prune_graph`.

This module knows nothing of the search that chose the channels. It receives a traced
``torch.fx.GraphModule`` (nodes annotated by :func:`hwnas.graph.trace`), which channels of
each group to keep, and the per-channel scale to fold into the layers that read them.

Slicing each layer is the job of the table in :mod:`hwnas.pruning.slicers`; this module
walks the graph, calls the table, folds gate values into functional layers' parameters and
activation products, and rewrites the Python constants that depend on channel counts.

DESIGN.md names the entry point ``materialize(graph, keep, scale)``; here it is
:func:`prune_graph`, so that the name ``hwnas.materialize`` stays the user's verb on a
SearchModel (:func:`hwnas.search.materialize` reads the keep masks and gate values off the
search, removes its masks and calls :func:`prune_graph`).

Example:
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from hwnas.graph import channel_groups, trace
    >>> gm = trace(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
    ...            torch.randn(1, 3))
    >>> hidden = channel_groups(gm)[1].index
    >>> pruned = prune_graph(gm, {hidden: np.array([True, False, True, False])})
    >>> pruned.get_submodule("0").out_features, pruned.get_submodule("2").in_features
    (2, 2)
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from hwnas.graph.ir import (
    CHANNELS_KEY,
    GROUPS_KEY,
    LAYER_KEY,
    PARAMS_KEY,
    ChannelSlots,
    LayerInfo,
    ParamSlots,
    kept_slots,
)
from hwnas.graph.rules.shape import channel_slice
from hwnas.pruning.slicers import SLICERS, first_tensor, like, param

__all__ = ["prune_graph"]



def _count_kept(chan: ChannelSlots | None, keep: Mapping[int, np.ndarray]) -> int | None:
    if chan is None or not chan.flat:
        return None
    return _kept_count(chan.slots, keep)


_CHUNK_NAMES = {"chunk", "split"}
_SHAPE_NAMES = {"view", "reshape", "expand"}


def _kept_count(slots: np.ndarray, keep: Mapping[int, np.ndarray]) -> int:
    return int(kept_slots(slots, dict(keep)).sum())


def _fn_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def _rewrite_constants(gm: fx.GraphModule, keep: Mapping[int, np.ndarray]) -> None:
    """Rewrite Python constants that depend on channel counts (split sizes, view shapes)."""
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        name = _fn_name(node)
        out_chan = node.meta.get(CHANNELS_KEY)
        if name in _CHUNK_NAMES and isinstance(out_chan, tuple):
            dims = {c.dim for c in out_chan if c is not None}
            x = node.args[0]
            in_chan = x.meta.get(CHANNELS_KEY) if isinstance(x, fx.Node) else None
            if not isinstance(in_chan, ChannelSlots) or dims != {in_chan.dim}:
                continue  # split along a non-channel dim
            sizes = [_count_kept(c, keep) for c in out_chan]
            if any(s is None for s in sizes):
                continue
            node.op, node.target = "call_function", torch.split
            node.args, node.kwargs = (x, sizes), {"dim": in_chan.dim}
        elif name in _SHAPE_NAMES and isinstance(out_chan, ChannelSlots) and out_chan.flat:
            shape_args = list(node.args[1:])
            packed = len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple))
            if packed:
                shape_args = list(shape_args[0])
            dim = out_chan.dim
            size = shape_args[dim] if dim < len(shape_args) else None
            # an int, or a size read at run time from another tensor (``x.shape[-1]``)
            if isinstance(size, fx.Node) or (isinstance(size, int) and size != -1):
                shape_args[dim] = _kept_count(out_chan.slots, keep)
                node.args = (node.args[0], tuple(shape_args)) if packed else (
                    node.args[0], *shape_args)
        elif name == "layer_norm":
            _rewrite_layer_norm(node, keep)
        elif name in ("conv1d", "conv2d", "conv3d"):
            _rewrite_conv_groups(node, keep)
        elif name == "getitem":
            _rewrite_channel_slice(node, keep)
        elif name in _SHAPE_NAMES:
            _rewrite_param_view(node, keep)
        elif name == "scaled_dot_product_attention":
            _rewrite_attention_scale(node, keep)


def _rewrite_layer_norm(node: fx.Node, keep: Mapping[int, np.ndarray]) -> None:
    """``F.layer_norm(x, normalized_shape, ...)``: the channel entry of the shape."""
    info: LayerInfo | None = node.meta.get(LAYER_KEY)
    if info is None or info.in_slots is None or info.reads is None:
        return
    args = list(node.args)
    given: Any = args[1] if len(args) > 1 else node.kwargs["normalized_shape"]
    shape = list(given)
    rank = len(info.out_shape or ())
    shape[info.reads[1] - (rank - len(shape))] = _kept_count(info.in_slots, keep)
    if len(args) > 1:
        args[1] = tuple(shape)
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, "normalized_shape": tuple(shape)}


def _rewrite_conv_groups(node: fx.Node, keep: Mapping[int, np.ndarray]) -> None:
    """A functional depthwise conv (a blur filter per channel): ``groups`` is its channels."""
    info: LayerInfo | None = node.meta.get(LAYER_KEY)
    if info is None or not info.depthwise or info.out_slots is None:
        return
    multiplier = (info.out_channels or 1) // (info.in_channels or 1)
    groups = _kept_count(info.out_slots, keep) // max(multiplier, 1)
    if len(node.args) > 6:
        node.args = (*node.args[:6], groups, *node.args[7:])
    else:
        node.kwargs = {**node.kwargs, "groups": groups}


def _rewrite_channel_slice(node: fx.Node, keep: Mapping[int, np.ndarray]) -> None:
    """``x[:, a:b]`` over tracked channels: the kept channels of ``a:b`` in the pruned x."""
    x, index = node.args[0], node.args[1]
    if not isinstance(x, fx.Node):
        return
    chan = x.meta.get(CHANNELS_KEY)
    if not isinstance(chan, ChannelSlots) or not chan.flat:
        return
    rank = len((x.meta[LAYER_KEY].out_shape or ())) if LAYER_KEY in x.meta else 0
    part = channel_slice(index, rank, chan.dim)
    if part is None or part == slice(None):
        return
    kept = kept_slots(chan.slots, dict(keep))
    start, stop, _ = part.indices(len(kept))
    new = slice(int(kept[:start].sum()), int(kept[:stop].sum()))
    idx = list(index) if isinstance(index, tuple) else [index]
    real = [k for k, i in enumerate(idx) if i is not None and i is not Ellipsis]
    if Ellipsis in idx or chan.dim >= len(real):
        return
    idx[real[chan.dim]] = new
    node.args = (x, tuple(idx) if isinstance(index, tuple) else idx[0])


def _rewrite_param_view(node: fx.Node, keep: Mapping[int, np.ndarray]) -> None:
    """``scale.view(C, 1, 1)`` of a sliced parameter (a layer scale with a stored shape)."""
    x = node.args[0]
    ps: ParamSlots | None = x.meta.get(PARAMS_KEY) if isinstance(x, fx.Node) else None
    if ps is None or len(ps.dims) != 1 or node.meta.get(CHANNELS_KEY) is not None:
        return
    packed = len(node.args) == 2 and isinstance(node.args[1], (list, tuple))
    given: Any = node.args[1] if packed else node.args[1:]
    shape = list(given)
    size = ps.slots[0].shape[1]
    if not all(isinstance(v, int) for v in shape) or shape.count(size) != 1:
        return
    shape[shape.index(size)] = _kept_count(ps.slots[0], keep)
    node.args = (x, tuple(shape)) if packed else (x, *shape)


def _rewrite_attention_scale(node: fx.Node, keep: Mapping[int, np.ndarray]) -> None:
    """``F.scaled_dot_product_attention`` scales by 1/sqrt(q's last dim) by default: keep
    the unpruned model's scale when the q/k channels are pruned."""
    info: LayerInfo | None = node.meta.get(LAYER_KEY)
    if info is None or info.in_slots is None or not info.in_channels:
        return
    if len(node.args) > 6 or node.kwargs.get("scale") is not None:
        return
    if _kept_count(info.in_slots, keep) != info.in_channels:
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(info.in_channels)}


def _slot_scale(slots: np.ndarray, scale: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """The folded gate value of each slot (1 where the group has no scale), float64 on the
    CPU: callers move it to the tensor it is folded into (:func:`_like`)."""
    out = torch.ones(slots.shape[1], dtype=torch.float64)
    for g, z in scale.items():
        sel = slots[0] == g
        if sel.any():
            out[torch.as_tensor(sel)] = z.detach().cpu()[torch.as_tensor(slots[1][sel])].double()
    return out


def _changes(slots: np.ndarray, keep: Mapping[int, np.ndarray],
             scale: Mapping[int, torch.Tensor]) -> bool:
    groups = set(np.unique(slots[0]).tolist())
    return any(g in groups and not bool(keep[g].all()) for g in keep) or any(
        g in groups and bool((scale[g] != 1).any()) for g in scale)


def prune_graph(
    gm: fx.GraphModule,
    keep: Mapping[int, np.ndarray],
    scale: Mapping[int, torch.Tensor] | None = None,
    copy_graph: bool = True,
) -> fx.GraphModule:
    """Remove the channels ``keep`` drops from a traced model; fold ``scale`` into readers.

    Args:
        gm: A model traced by :func:`hwnas.graph.trace` (its nodes carry LayerInfo).
        keep: Group index -> boolean mask over the group's channels (True: kept). Groups
            not listed keep every channel.
        scale: Group index -> per-channel factor multiplied into every layer that reads
            the channel (folded gate values); default none.
        copy_graph: Work on a deep copy (default) instead of ``gm`` itself.

    Returns:
        A GraphModule of plain modules; its hwnas annotations are removed, and it pickles
        and unpickles without importing hwnas.

    Raises:
        UnknownNameError: a layer whose channels change has no registered slicer (the
            message names its type and :func:`register_slicer`).
    """
    scale = dict(scale or {})
    keep = {int(g): np.asarray(m, dtype=bool) for g, m in keep.items()}
    if copy_graph:
        gm = copy.deepcopy(gm)
    with torch.no_grad():
        for node in gm.graph.nodes:
            info: LayerInfo | None = node.meta.get(LAYER_KEY)
            if node.op != "call_module" or info is None:
                continue
            touched = [s for s in (info.in_slots, info.out_slots) if s is not None]
            if not any(_changes(s, keep, scale) for s in touched):
                continue
            module = gm.get_submodule(str(node.target))
            out_fn, in_fn = SLICERS.get(type(module))
            # slicers get their indices and factors on the module's device, the factors in
            # its dtype (what every new tensor of the pruned layer is made like)
            ref = first_tensor(module)
            if info.in_slots is not None and not info.depthwise:
                slots = info.in_slots
                kept = torch.as_tensor(np.flatnonzero(kept_slots(slots, keep)),
                                       dtype=torch.long, device=ref.device)
                factor = _slot_scale(slots, scale)
                if len(kept) < slots.shape[1] or bool((factor != 1).any()):
                    in_fn(module, kept, like(factor, ref))
            if info.out_slots is not None:
                kept_out = np.flatnonzero(kept_slots(info.out_slots, keep))
                if len(kept_out) < info.out_slots.shape[1]:
                    out_fn(module, torch.as_tensor(kept_out, dtype=torch.long,
                                                   device=ref.device))
                    _depthwise_multiplier(module, info)
        _slice_params(gm, keep, scale)
        _scale_activations(gm, keep, scale)
        _fix_window_attention(gm, keep)
        _rewrite_constants(gm, keep)
    _strip_annotations(gm)
    return gm


def _depthwise_multiplier(module: nn.Module, info: LayerInfo) -> None:
    """A depthwise conv with a channel multiplier k keeps the k outputs of each kept input:
    its inputs and groups are its outputs / k."""
    if info.depthwise and isinstance(module, nn.modules.conv._ConvNd) and info.out_channels \
            and info.in_channels and info.out_channels != info.in_channels:
        k = info.out_channels // info.in_channels
        module.in_channels = module.groups = module.out_channels // k


def _slice_params(gm: fx.GraphModule, keep: Mapping[int, np.ndarray],
                  scale: Mapping[int, torch.Tensor]) -> None:
    """Parameters and buffers read by ``get_attr`` nodes (a functional layer's weight, a
    layer scale, a position embedding): gate values folded where a layer reads a channel
    through them, then the pruned channels sliced away along each channel dim."""
    done: set[str] = set()
    for node in gm.graph.nodes:
        ps: ParamSlots | None = node.meta.get(PARAMS_KEY)
        if node.op != "get_attr" or ps is None or ps.target in done:
            continue
        done.add(ps.target)
        if not any(_changes(s, keep, scale) for s in ps.slots):
            continue
        owner_name, _, attr = ps.target.rpartition(".")
        owner = gm.get_submodule(owner_name)
        value = getattr(owner, attr)
        t = value.detach()
        for dim, slots, scaled in zip(ps.dims, ps.slots, ps.scaled, strict=True):
            factor = _slot_scale(slots, scale)
            factor[torch.as_tensor(~scaled)] = 1.0
            factor = like(factor, t)
            shape = [1] * t.dim()
            shape[dim] = -1
            kept = torch.as_tensor(np.flatnonzero(kept_slots(slots, dict(keep))),
                                   dtype=torch.long, device=t.device)
            t = (t * factor.reshape(shape)).index_select(dim, kept)
        if isinstance(value, nn.Parameter):
            setattr(owner, attr, param(t))
        elif attr in owner._buffers:
            owner._buffers[attr] = t.contiguous()
        else:
            setattr(owner, attr, t.contiguous())


def _scale_activations(gm: fx.GraphModule, keep: Mapping[int, np.ndarray],
                       scale: Mapping[int, torch.Tensor]) -> None:
    """A product of activations (``q @ k^T``) has no weight to fold its gate values into:
    where they are not all 1, multiply the operand it reads them through by a constant."""
    graph = gm.graph
    k = 0
    # the constant is made like the model's weights (a float32 constant would promote a
    # bf16 activation to float32), on their device
    ref = first_tensor(gm)
    for node in list(graph.nodes):
        info: LayerInfo | None = node.meta.get(LAYER_KEY)
        if (node.op not in ("call_function", "call_method") or info is None
                or info.kind not in ("matmul", "attention") or info.reads is None
                or info.in_slots is None or info.scaled_params):
            continue
        kept = kept_slots(info.in_slots, dict(keep))
        factor = _slot_scale(info.in_slots, scale)[torch.as_tensor(kept)]
        if bool((factor == 1).all()):
            continue
        pos, dim = info.reads
        x = node.args[pos]
        rank = len(x.meta[LAYER_KEY].out_shape or ()) if isinstance(x, fx.Node) else dim + 1
        shape = [1] * rank
        shape[dim] = -1
        while hasattr(gm, f"gate_scale_{k}"):
            k += 1
        name = f"gate_scale_{k}"
        gm.register_buffer(name, like(factor, ref).reshape(shape).contiguous())
        with graph.inserting_before(node):
            const = graph.get_attr(name)
            scaled = graph.call_function(operator.mul, (x, const))
        args = list(node.args)
        args[pos] = scaled
        node.args = tuple(args)


def _fix_window_attention(gm: fx.GraphModule, keep: Mapping[int, np.ndarray]) -> None:
    """torchvision's ``shifted_window_attention(_3d)`` scale q by 1/sqrt(C / heads) with their
    input width C: when C is pruned, fold the change into q's rows of the qkv weights."""
    for node in gm.graph.nodes:
        info: LayerInfo | None = node.meta.get(LAYER_KEY)
        name = _fn_name(node)
        if info is None or info.in_slots is None or name not in (
                "shifted_window_attention", "shifted_window_attention_3d"):
            continue
        kw = dict(node.kwargs)
        if name == "shifted_window_attention" and kw.get(
                "logit_scale", node.args[11] if len(node.args) > 11 else None) is not None:
            continue  # cosine attention: no scale
        c, c_new = info.in_channels or 0, _kept_count(info.in_slots, keep)
        if c_new == c:
            continue
        ratio = math.sqrt(c_new / c)
        for pos, name in ((1, "qkv_weight"), (9, "qkv_bias")):
            arg = node.args[pos] if len(node.args) > pos else kw.get(name)
            if not isinstance(arg, fx.Node) or arg.op != "get_attr":
                continue
            owner_name, _, attr = str(arg.target).rpartition(".")
            owner = gm.get_submodule(owner_name)
            t = getattr(owner, attr).detach().clone()
            t[:c_new] *= ratio
            setattr(owner, attr, param(t))


def _strip_annotations(gm: fx.GraphModule) -> None:
    """Remove hwnas's node metadata and make the module picklable without hwnas."""
    graph = gm.graph
    for node in graph.nodes:
        for key in (LAYER_KEY, CHANNELS_KEY, PARAMS_KEY):
            node.meta.pop(key, None)
        if isinstance(node.type, str):
            # A string annotation (``from __future__ import annotations``) becomes a str
            # global of the generated code, which GraphModule.__reduce__ cannot pickle.
            node.type = None
    gm.meta.pop(GROUPS_KEY, None)
    # Unpickling a GraphModule re-traces its code with its tracer class: use torch's, so
    # that loading the exported model does not import hwnas.
    gm._tracer_cls = graph._tracer_cls = None
    graph.lint()
    gm.recompile()
