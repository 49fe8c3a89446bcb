"""Channel rules: one small function per op family, found in two registries.

A rule tells :class:`~hwnas.graph.channel_prop.ChannelProp` which channels a node's output
carries, given what its inputs carry: ``rule(prop, node, module, out) -> Chan | list | None``
(``module`` is the called module for ``call_module`` nodes, else None; ``out`` the output).
It may join ids (``prop.union``), freeze them with a reason (``prop.freeze``), create new
ones (``prop.new_ids``) and record a layer (``prop.layer``). Rules for module types are
looked up along the class hierarchy (:data:`MODULE_RULES`); rules for functions and
methods by name (:data:`FUNCTION_RULES`). An op without a rule freezes what it reads.

Add a rule for your own module or function with :func:`register_channel_rule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from hwnas.errors import InvalidTypeError
from hwnas.graph.channel_prop import Chan, ChannelProp, Rule, compress, expand, flat_chans
from hwnas.registry import Registry

__all__ = ["FUNCTION_RULES", "MODULE_RULES", "register_channel_rule", "rule_for"]

#: Module class -> rule (MRO lookup).
MODULE_RULES: Registry[Rule] = Registry("channel rule", hint="hwnas.register_channel_rule")
#: Function or method name -> rule.
FUNCTION_RULES: Registry[Rule] = Registry("channel rule", hint="hwnas.register_channel_rule")


def register_channel_rule(key: type | str | Callable[..., Any],
                          rule: Rule | None = None) -> Any:
    """Register the channel rule of a module class, a function, or a method name.

    Usable as a decorator. ``key`` is a module class (subclasses inherit the rule), a
    function such as ``torch.roll`` (matched by name, like the method ``x.roll``), or a
    name. See :mod:`hwnas.graph.rules` for what a rule receives and may do.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> class Scale(nn.Module):   # a learned per-channel scale, NCHW
        ...     def __init__(self, n):
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.ones(n))
        ...     def forward(self, x):
        ...         return x * self.weight.view(1, -1, 1, 1)
        >>> @register_channel_rule(Scale)
        ... def scale_rule(prop, node, module, out):
        ...     ids = prop.along(node, node.args[0], 1, module.weight.numel(), "Scale")
        ...     prop.layer(node, "norm", ids, ids)   # reads and writes the same channels
        ...     return Chan(1, ids)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), Scale(4), nn.Conv2d(4, 2, 3))
        >>> gm = hwnas.graph.trace(net, torch.randn(1, 1, 8, 8), leaf_modules=(Scale,))
        >>> [g.frozen for g in hwnas.graph.channel_groups(gm)][1] is None
        True
    """

    def deco(fn: Rule) -> Rule:
        if not callable(fn):
            raise InvalidTypeError(f"a channel rule must be callable, but got {fn!r}")
        if isinstance(key, type):
            MODULE_RULES.register(key, fn)
        elif isinstance(key, str):
            FUNCTION_RULES.register(key, fn)
        elif callable(key):
            FUNCTION_RULES.register(_name_of(key), fn)
        else:
            raise InvalidTypeError(
                f"`key` must be a module class, a function or a name, but got {key!r}")
        return fn

    return deco(rule) if rule is not None else deco


def _name_of(target: Any) -> str:
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", str(target))


def _args(node: fx.Node) -> tuple[Any, ...]:
    """``node.args`` typed loosely: fx's Argument union is too wide to be useful here."""
    return tuple(node.args)


def _kw(node: fx.Node, name: str, pos: int, default: Any = None) -> Any:
    """Argument ``name`` of a call, given by keyword or at position ``pos``."""
    args = _args(node)
    return args[pos] if len(args) > pos else dict(node.kwargs).get(name, default)


def _first(node: fx.Node) -> Any:
    args = _args(node)
    return args[0] if args else None


def _shape_of(out: Any) -> tuple[int, ...]:
    return tuple(out.shape) if isinstance(out, torch.Tensor) else ()


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
    if m.transposed:
        return _opaque_rule(prop, n, m, out)
    x, shape = _first(n), _shape_of(out)
    cin, cout, g = m.in_channels, m.out_channels, m.groups
    ids_in = prop.along(n, x, 1, cin, "conv input")
    depthwise = g > 1 and g == cin == cout
    if g == 1:
        ids_out = prop.new_ids(n, cout)
    elif depthwise:
        ids_out = ids_in
    else:
        reason = f"grouped conv {n.target} (groups={g}) keeps its channels"
        prop.freeze(ids_in, reason)
        ids_out = prop.new_ids(n, cout, frozen=reason)
    prop.layer(n, "conv", ids_in, ids_out, kernel=tuple(m.kernel_size), stride=tuple(m.stride),
               groups=g, depthwise=depthwise, bias=m.bias is not None,
               positions=math.prod(shape[2:]))
    return Chan(1, ids_out)


def _linear_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    shape = _shape_of(out)
    ids_in = prop.along(n, _first(n), len(shape) - 1, m.in_features, "linear input")
    ids_out = prop.new_ids(n, m.out_features)
    prop.layer(n, "linear", ids_in, ids_out, bias=m.bias is not None,
               positions=math.prod(shape[1:-1]) if len(shape) > 2 else 1)
    return Chan(len(shape) - 1, ids_out)


def _norm_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    c = int(m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features)
    ids = prop.along(n, _first(n), 1, c, f"{type(m).__name__} input")
    if isinstance(m, nn.GroupNorm) and m.num_groups != m.num_channels:
        prop.freeze(ids, f"GroupNorm {n.target} normalises across channels")
    prop.layer(n, "norm", ids, ids)
    return Chan(1, ids)


def _layernorm_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    shape = _shape_of(out)
    chan = prop.info(_first(n))
    k = len(m.normalized_shape)
    if chan is not None and chan.dim + chan.ids.ndim > len(shape) - k:
        prop.freeze(chan.ids, f"LayerNorm {n.target} normalises over the channel dim")
    if chan is not None and chan.dim == len(shape) - 1 and chan.ids.ndim == 1:
        prop.layer(n, "norm", chan.ids, chan.ids)
    else:
        prop.set_kind(n, "norm")
    return chan


def _opaque_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """A leaf module hwnas cannot see into: it reads and writes frozen channels."""
    x = _first(n)
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
    return prop.info(_first(n))


def _softmax_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "elementwise")
    x, shape = _first(n), _shape_of(out)
    dim = m.dim if m is not None else _kw(n, "dim", 1)
    chan = prop.info(x)
    if chan is not None and dim is not None:
        d = dim % len(shape)
        if chan.dim <= d < chan.dim + chan.ids.ndim:
            prop.freeze(chan.ids, f"softmax over the channel dim at {n.name}")
    return chan


def _binary_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """Broadcasting arithmetic: operands that carry channels on the same dims are joined."""
    prop.set_kind(n, "elementwise")
    shape = _shape_of(out)
    chans: list[tuple[Chan | None, tuple[int, ...], int]] = []
    for a in (a for a in _args(n) if isinstance(a, fx.Node)):
        a_shape = prop.shape(a)
        if a_shape is None:
            continue
        chan = prop.info(a)
        offset = len(shape) - len(a_shape)
        chans.append((None if chan is None else Chan(chan.dim + offset, chan.ids), a_shape,
                      offset))
    tracked = [c for c, _, _ in chans if c is not None]
    if not tracked:
        return None
    ref = tracked[0]
    lo = min(c.dim for c in tracked)
    hi = max(c.dim + c.ids.ndim for c in tracked)
    for chan, a_shape, offset in chans:
        local = [a_shape[d - offset] if d - offset >= 0 else 1 for d in range(lo, hi)]
        if chan is None:
            if any(s > 1 for s in local):
                for c in tracked:
                    prop.freeze(c.ids, f"combined with an untracked tensor at {n.name}")
            continue
        if chan is ref or all(s == 1 for s in local):
            continue
        if chan.dim != ref.dim or chan.ids.shape != ref.ids.shape:
            for c in tracked:
                prop.freeze(c.ids, f"channel layouts differ at {n.name}")
            continue
        prop.union(ref.ids, chan.ids)
    out_ref = ref
    if shape and any(shape[d] != out_ref.ids.shape[d - out_ref.dim]
                     for d in range(out_ref.dim, out_ref.dim + out_ref.ids.ndim)):
        # ``ref`` was broadcast (size-1 channel dim); take an operand that is not.
        full = [c for c in tracked if c.ids.shape == tuple(shape[c.dim:c.dim + c.ids.ndim])]
        if not full:
            for c in tracked:
                prop.freeze(c.ids, f"broadcast over channels at {n.name}")
            return None
        out_ref = full[0]
    return out_ref


def _spatial_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """Pooling and resizing: the channel dim passes through unchanged."""
    prop.set_kind(n, "pool")
    chan = prop.info(_first(n))
    if chan is not None and (chan.dim != 1 or chan.ids.ndim != 1):
        prop.freeze(chan.ids, f"pooling over tracked channels at {n.name}")
    return chan


def _pad_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "pool")
    pad = _kw(n, "pad", 1)
    chan = prop.info(_first(n))
    if chan is not None and chan.dim + chan.ids.ndim > len(_shape_of(out)) - len(pad) // 2:
        prop.freeze(chan.ids, "pad over the channel dim")
    return chan


# ------------------------------------------------------------------ shapes


def _permutation(n: fx.Node, name: str, rank: int) -> list[int]:
    args = _args(n)
    if name == "t":
        return list(range(rank))[::-1]
    if name == "transpose":
        a, b = (int(v) % rank for v in args[1:3])
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
    return [int(v) % rank for v in dims]


def _checked(prop: ChannelProp, n: fx.Node, chan: Chan) -> Chan:
    if chan.ids.ndim > 1:
        prop.freeze(chan.ids, f"reshape at {n.name} splits the channel dim (mixes channels)")
    return chan


def _reshape_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """view, reshape, flatten, squeeze, unsqueeze, transpose, permute: ids move with dims."""
    prop.set_kind(n, "reshape")
    x, shape = _first(n), _shape_of(out)
    chan = prop.info(x)
    in_shape = prop.shape(x)
    if chan is None or in_shape is None:
        return None
    name = _name_of(n.target) if n.op != "call_module" else "flatten"
    d = chan.dim
    full = expand(chan, in_shape)
    if name in ("transpose", "permute", "t"):
        perm = _permutation(n, name, len(in_shape))
        if d > 0 and perm[0] != 0:
            prop.freeze(chan.ids, f"permute moves the batch dim at {n.name}")
            return None
        # Ids over every dim but the batch dim: dims before the channels (spatial, tokens)
        # may move too, e.g. NCHW -> NHWC -> NCHW around a channels-last Linear.
        lead = min(d, 1)
        full = np.broadcast_to(full, tuple(in_shape[lead:]))
        new = np.transpose(full, [p - lead for p in perm[lead:]])
        return _checked(prop, n, compress(lead, new))
    # view / reshape / flatten / squeeze / unsqueeze: keep the dims before the channels
    k = d
    while k > 0 and (len(shape) < k or tuple(shape[:k]) != tuple(in_shape[:k])):
        k -= 1
    if k < d and math.prod(in_shape[k:d]) != 1:
        prop.freeze(chan.ids, f"reshape merges the channel dim with batch dims at {n.name}")
        return None
    if math.prod(shape[k:]) != full.size:
        prop.freeze(chan.ids, f"reshape changes sizes at {n.name}")
        return None
    return _checked(prop, n, compress(k, np.reshape(full, shape[k:])))


def _reduce_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "reduce")
    x = _first(n)
    chan, in_shape = prop.info(x), prop.shape(x)
    if chan is None or in_shape is None:
        return None
    dims = _kw(n, "dim", 1)
    keepdim = _kw(n, "keepdim", 2, False)
    if dims is None:
        prop.freeze(chan.ids, f"reduction over all dims at {n.name}")
        return None
    dims = [int(v) % len(in_shape) for v in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if any(chan.dim <= v < chan.dim + chan.ids.ndim for v in dims):
        prop.freeze(chan.ids, f"reduction over the channel dim at {n.name}")
        return None
    shift = 0 if keepdim else sum(1 for v in dims if v < chan.dim)
    return Chan(chan.dim - shift, chan.ids)


def _cat_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "cat")
    shape = _shape_of(out)
    tensors = _first(n)
    dim = int(_kw(n, "dim", 1, 0)) % len(shape)
    parts = [prop.along(n, t, dim, prop.shape(t)[dim], f"cat input at {n.name}")  # type: ignore[index]
             for t in tensors]
    chans = [prop.info(t) for t in tensors]
    if dim == 1 or all(c is not None and c.dim == dim for c in chans):
        return Chan(dim, np.concatenate(parts))
    prop.freeze(np.concatenate(parts), f"cat along a non-channel dim at {n.name}")
    return None


def _split_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "split")
    x = _first(n)
    chan, in_shape = prop.info(x), prop.shape(x)
    if chan is None or in_shape is None:
        return None
    name = _name_of(n.target)
    dim: Any = _kw(n, "dim", 1, 0) if name == "unbind" else dict(n.kwargs).get(
        "dim", _args(n)[2] if len(_args(n)) > 2 else 0)
    dim = int(dim) % len(in_shape)
    if not (chan.dim <= dim < chan.dim + chan.ids.ndim):
        return [chan for _ in out]
    if chan.ids.ndim != 1 or name in ("unbind", "tensor_split"):
        prop.freeze(chan.ids, f"{name} over the channel dim at {n.name}")
        return [chan for _ in out]
    result, start = [], 0
    for piece in out:
        size = piece.shape[dim]
        result.append(Chan(dim, chan.ids[start:start + size]))
        start += size
    return result


def _getitem_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    x, index = _args(n)[:2]
    value = prop.value(x)
    if isinstance(value, list):
        prop.set_kind(n, "split")
        return value[index]
    prop.set_kind(n, "reshape")
    chan, in_shape = prop.info(x), prop.shape(x)
    if chan is None or in_shape is None:
        return None
    idx = index if isinstance(index, tuple) else (index,)
    lead_full = all(isinstance(i, slice) and i == slice(None) for i in idx[: chan.dim + 1])
    if len(idx) <= chan.dim or lead_full and all(
            isinstance(i, slice) for i in idx[: chan.dim + chan.ids.ndim]):
        if len(idx) > chan.dim and any(
                not (isinstance(i, slice) and i == slice(None))
                for i in idx[chan.dim: chan.dim + chan.ids.ndim]):
            prop.freeze(chan.ids, f"slicing the channel dim at {n.name}")
        return chan
    prop.freeze(chan.ids, f"indexing over the channel dim at {n.name}")
    return None


def _unknown_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "other")
    prop.freeze_inputs(n, f"unknown op {_name_of(n.target)!r} at node {n.name}")
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
        "clamp", "clip", "exp", "sqrt", "square", "type_as", "expand", "expand_as"),
    _binary_rule: ("add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "maximum",
                   "minimum", "where"),
    _softmax_rule: ("softmax", "log_softmax"),
    _spatial_rule: (
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "max_pool1d", "max_pool2d", "max_pool3d",
        "avg_pool1d", "avg_pool2d", "avg_pool3d", "interpolate", "upsample"),
    _pad_rule: ("pad",),
    _reshape_rule: ("view", "reshape", "flatten", "transpose", "permute", "squeeze",
                    "unsqueeze", "t"),
    _reduce_rule: ("mean", "sum", "amax", "amin"),
    _split_rule: ("chunk", "split", "tensor_split", "unbind"),
    _cat_rule: ("cat", "concat", "concatenate"),
    _getitem_rule: ("getitem",),
    _shape_query_rule: ("size", "dim", "numel", "getattr"),
}
for _rule, _names in _FUNCTIONS.items():
    for _name in _names:
        register_channel_rule(_name, _rule)
for _cls, _rule in (
    (nn.modules.conv._ConvNd, _conv_rule), (nn.Linear, _linear_rule),
    (nn.modules.batchnorm._NormBase, _norm_rule), (nn.GroupNorm, _norm_rule),
    (nn.LayerNorm, _layernorm_rule), (nn.Softmax, _softmax_rule),
    (nn.LogSoftmax, _softmax_rule), (nn.Flatten, _reshape_rule),
    *((c, _elementwise_rule) for c in _ACTIVATIONS), *((c, _spatial_rule) for c in _POOLS),
):
    register_channel_rule(_cls, _rule)

_NODE_OPS: dict[str, Rule] = {"placeholder": _input_rule, "get_attr": _attr_rule,
                              "output": _output_rule}


def _function_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    if not isinstance(out, (torch.Tensor, tuple, list)):
        return _shape_query_rule(prop, n, m, out)
    rule = FUNCTION_RULES.lookup(_name_of(n.target)) or _unknown_rule
    return rule(prop, n, m, out)


def rule_for(n: fx.Node, module: nn.Module | None) -> Rule:
    """The rule of node ``n`` (``module``: what a ``call_module`` node calls)."""
    if n.op in _NODE_OPS:
        return _NODE_OPS[n.op]
    if module is not None:
        return MODULE_RULES.lookup(type(module)) or _opaque_rule
    return _function_rule
