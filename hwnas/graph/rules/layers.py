"""Channel rules: one small function per op family, found in two registries.

A rule tells :class:`~hwnas.graph.channel_prop.ChannelProp` which channels a node's output
carries, given what its inputs carry: ``rule(prop, node, module, out) -> Chan | list | None``
(``module`` is the called module for ``call_module`` nodes, else None; ``out`` the output).
It may join ids (``prop.union``), freeze them with a reason (``prop.freeze``), create new
ones (``prop.new_ids``), give them to a parameter (``prop.adopt``) and record a layer
(``prop.layer``). Rules for module types are looked up along the class hierarchy
(:data:`MODULE_RULES`); rules for functions and methods by name (:data:`FUNCTION_RULES`).
An op without a rule freezes what it reads.

This module holds the layer and elementwise rules and the dispatch;
:mod:`hwnas.graph.rules.shape` the reshapes, indexing, concatenation and splits;
:mod:`hwnas.graph.rules.ops` the functional layers (linear, conv, matmul, einsum,
attention) and functional normalisations. Add a rule for your own module or function with
:func:`register_channel_rule`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from hwnas.graph.channel_prop import Chan, ChannelProp, Rule, flat_chans
from hwnas.graph.rules import shape as rules_shape
from hwnas.graph.rules.base import (
    FUNCTION_RULES,
    MODULE_RULES,
    arg,
    args_of,
    first,
    name_of,
    register_channel_rule,
    shape_of,
    tie_groups,
)

__all__ = ["FUNCTION_RULES", "MODULE_RULES", "register_channel_rule", "rule_for"]


# ------------------------------------------------------------------ placeholders, outputs


def _input_rule(prop: ChannelProp, n: fx.Node, m: nn.Module | None, out: Any) -> Any:
    prop.set_kind(n, "input")
    return None


def _attr_rule(prop: ChannelProp, n: fx.Node, m: nn.Module | None, out: Any) -> Any:
    prop.set_kind(n, "attr")
    return None


def _output_rule(prop: ChannelProp, n: fx.Node, m: nn.Module | None, out: Any) -> Any:
    prop.set_kind(n, "output")
    for c in flat_chans([prop.value(a) for a in n.all_input_nodes]):
        prop.freeze(c.ids, "model output")
    return None


# ------------------------------------------------------------------ layers


def _conv_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """Convs. A grouped conv keeps every group the same width: the channel index within a
    group is one channel in every group (input and output), so pruning it removes it from
    each group and the conv keeps its ``groups``."""
    if m.transposed:
        return _opaque_rule(prop, n, m, out)
    x, shape = first(n), shape_of(out)
    cin, cout, g = m.in_channels, m.out_channels, m.groups
    ids_in = prop.along(n, x, 1, cin, "conv input")
    # depthwise, with or without a channel multiplier: output j*k + r reads input j only,
    # so it is pruned with input j (the conv keeps groups == its input channels)
    depthwise = g > 1 and g == cin and cout % cin == 0
    if g == 1:
        ids_out = prop.new_ids(n, cout)
    elif depthwise:
        ids_out = np.repeat(ids_in, cout // cin)
    elif cin == g:
        reason = f"conv {n.target} multiplies channels per group (groups={g})"
        prop.freeze(ids_in, reason)
        ids_out = prop.new_ids(n, cout, frozen=reason)
    else:
        ids_in = tie_groups(prop, ids_in, g)
        ids_out = tie_groups(prop, prop.new_ids(n, cout), g)
    prop.layer(n, "conv", ids_in, ids_out, kernel=tuple(m.kernel_size), stride=tuple(m.stride),
               groups=g, depthwise=depthwise, bias=m.bias is not None,
               positions=math.prod(shape[2:]))
    return Chan(1, ids_out)


def _linear_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    shape = shape_of(out)
    ids_in = prop.along(n, first(n), len(shape) - 1, m.in_features, "linear input")
    ids_out = prop.new_ids(n, m.out_features)
    prop.layer(n, "linear", ids_in, ids_out, bias=m.bias is not None,
               positions=math.prod(shape[1:-1]) if len(shape) > 2 else 1)
    return Chan(len(shape) - 1, ids_out)


def _norm_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """BatchNorm / InstanceNorm (per channel) and GroupNorm. A GroupNorm with fewer groups
    than channels normalises over the channels of a group: during the search over the kept
    ones only (a masked norm), with the index within a group tied across groups so every
    group keeps the same width."""
    c = int(m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features)
    ids = prop.along(n, first(n), 1, c, f"{type(m).__name__} input")
    masked = isinstance(m, nn.GroupNorm) and m.num_groups != m.num_channels
    if masked:
        ids = tie_groups(prop, ids, m.num_groups)
    prop.layer(n, "norm", ids, ids, reads=(0, 1) if masked else None)
    return Chan(1, ids)


def _layernorm_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """LayerNorm: over the channel dim (its first normalised dim) it is a masked norm
    during the search (statistics over the kept channels only); over other dims it does
    not mix channels."""
    shape = shape_of(out)
    chan = prop.info(first(n))
    start = len(shape) - len(m.normalized_shape)
    if chan is None or chan.dim + chan.ids.ndim <= start:
        prop.set_kind(n, "norm")
        return chan
    if chan.ids.ndim != 1 or chan.dim != start:
        prop.freeze(chan.ids, f"LayerNorm {n.target} normalises over the channel dim and "
                              "others before it")
        prop.set_kind(n, "norm")
        return chan
    prop.layer(n, "norm", chan.ids, chan.ids, reads=(0, chan.dim))
    return chan


def _opaque_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """A leaf module hwnas cannot see into: it reads and writes frozen channels."""
    x = first(n)
    prop.set_kind(n, "layer")
    reason = f"{type(m).__name__} {n.target} is opaque to channel pruning"
    prop.freeze_inputs(n, reason)
    if isinstance(out, torch.Tensor) and out.dim() >= 2:
        x_shape = prop.shape(x)
        layer_in = None
        if x_shape is not None and len(x_shape) >= 2:
            layer_in = prop.along(n, x, 1, x_shape[1], reason)
        ids_out = prop.new_ids(n, out.shape[-1] if out.dim() == 2 else out.shape[1],
                               frozen=reason)
        prop.layer(n, "layer", layer_in, ids_out)
        return Chan(1, ids_out)
    return None


# ------------------------------------------------------------------ elementwise


def _elementwise_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "elementwise")
    return prop.info(first(n))


def _softmax_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "elementwise")
    x, shape = first(n), shape_of(out)
    name = "softmax" if m is not None else name_of(n.target)
    dim = m.dim if m is not None else (
        arg(n, "dim", 2, 1) if name == "normalize" else arg(n, "dim", 1))
    chan = prop.info(x)
    if chan is not None and dim is not None:
        d = dim % len(shape)
        if chan.dim <= d < chan.dim + chan.ids.ndim:
            prop.freeze(chan.ids, f"{name} over the channel dim at {n.name}")
    return chan


def _binary_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """Broadcasting arithmetic: operands that carry channels on the same dims are joined; a
    constant operand (a layer scale, a position embedding) takes the channels."""
    prop.set_kind(n, "elementwise")
    shape = shape_of(out)
    ops: list[tuple[fx.Node, Chan | None, tuple[int, ...], int]] = []
    for a in (a for a in args_of(n) if isinstance(a, fx.Node)):
        a_shape = prop.shape(a)
        if a_shape is None:
            continue
        chan = prop.info(a)
        offset = len(shape) - len(a_shape)
        ops.append((a, None if chan is None else Chan(chan.dim + offset, chan.ids), a_shape,
                    offset))
    tracked = [c for _, c, _, _ in ops if c is not None]
    if not tracked:
        return None
    # the operand whose channel dims are not broadcast gives the output's channels
    full = [c for c in tracked if c.ids.shape == tuple(shape[c.dim:c.dim + c.ids.ndim])]
    if not full:
        for c in tracked:
            prop.freeze(c.ids, f"broadcast over channels at {n.name}")
        return None
    ref = full[0]
    lo, hi = ref.dim, ref.dim + ref.ids.ndim
    for a, chan, a_shape, offset in ops:
        local = [a_shape[d - offset] if d - offset >= 0 else 1 for d in range(lo, hi)]
        if all(s == 1 for s in local) or chan is ref:
            continue
        if chan is None:
            if ref.ids.ndim == 1 and prop.adopt(a, ref.dim - offset, ref.ids):
                continue
            reason = f"combined with an untracked tensor at {n.name}"
        elif chan.dim == ref.dim and chan.ids.shape == ref.ids.shape:
            prop.union(ref.ids, chan.ids)
            continue
        else:
            reason = f"channel layouts differ at {n.name}"
        for c in tracked:
            prop.freeze(c.ids, reason)
    return ref


def _spatial_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """Pooling and resizing: the channel dim passes through unchanged."""
    prop.set_kind(n, "pool")
    chan = prop.info(first(n))
    if chan is not None and (chan.dim != 1 or chan.ids.ndim != 1):
        prop.freeze(chan.ids, f"pooling over tracked channels at {n.name}")
    return chan


def _pad_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "pool")
    pad = arg(n, "pad", 1)
    chan = prop.info(first(n))
    if chan is not None and chan.dim + chan.ids.ndim > len(shape_of(out)) - len(pad) // 2:
        prop.freeze(chan.ids, f"pad over the channel dim at {n.name}")
        return None
    return chan


def _unknown_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "other")
    prop.freeze_inputs(n, f"unknown op {name_of(n.target)!r} at node {n.name}")
    return None


def _shape_query_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "other")
    return None


# ------------------------------------------------------------------ tables and dispatch

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
)
_FUNCTIONS: dict[Rule, tuple[str, ...]] = {
    _elementwise_rule: (
        "relu", "relu_", "relu6", "sigmoid", "tanh", "gelu", "silu", "hardswish",
        "hardsigmoid", "hardtanh", "leaky_relu", "elu", "mish", "softplus", "dropout",
        "dropout1d", "dropout2d", "contiguous", "clone", "float", "to", "detach", "abs", "neg",
        "clamp", "clip", "exp", "sqrt", "square", "type_as", "expand", "expand_as",
        "stochastic_depth", "sign", "round", "floor", "ceil", "trunc", "log", "rsqrt",
        "reciprocal", "logical_not", "isfinite", "isnan"),
    _binary_rule: ("add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "maximum",
                   "minimum", "where", "gt", "lt", "ge", "le", "eq", "ne", "pow",
                   "logical_and", "logical_or", "floordiv", "mod"),
    _softmax_rule: ("softmax", "log_softmax", "normalize"),
    _spatial_rule: (
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "max_pool1d", "max_pool2d", "max_pool3d",
        "avg_pool1d", "avg_pool2d", "avg_pool3d", "interpolate", "upsample"),
    _pad_rule: ("pad",),
    _shape_query_rule: ("size", "dim", "numel", "getattr"),
}
for _rule, _names in _FUNCTIONS.items():
    for _name in _names:
        register_channel_rule(_name, _rule)
for _cls, _rule in (
    (nn.modules.conv._ConvNd, _conv_rule), (nn.Linear, _linear_rule),
    (nn.modules.batchnorm._NormBase, _norm_rule), (nn.GroupNorm, _norm_rule),
    (nn.LayerNorm, _layernorm_rule), (nn.Softmax, _softmax_rule),
    (nn.LogSoftmax, _softmax_rule), (nn.Flatten, rules_shape.reshape_rule),
    *((c, _elementwise_rule) for c in _ACTIVATIONS), *((c, _spatial_rule) for c in _POOLS),
):
    register_channel_rule(_cls, _rule)

_NODE_OPS: dict[str, Rule] = {"placeholder": _input_rule, "get_attr": _attr_rule,
                              "output": _output_rule}


def _function_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    if not isinstance(out, (torch.Tensor, tuple, list)):
        return _shape_query_rule(prop, n, m, out)
    rule = FUNCTION_RULES.lookup(name_of(n.target)) or _unknown_rule
    return rule(prop, n, m, out)


def rule_for(n: fx.Node, module: nn.Module | None) -> Rule:
    """The rule of node ``n`` (``module``: what a ``call_module`` node calls)."""
    if n.op in _NODE_OPS:
        return _NODE_OPS[n.op]
    if module is not None:
        return MODULE_RULES.lookup(type(module)) or _opaque_rule
    return _function_rule
