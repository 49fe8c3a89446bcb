"""What every channel rule module shares: the two rule tables and small argument helpers.

The rules themselves live in :mod:`hwnas.graph.rules` (layers and elementwise ops),
:mod:`hwnas.graph.rules.shape` (reshapes, permutes, indexing, concatenation, splits) and
:mod:`hwnas.graph.rules.ops` (functional layers: linear, conv, matmul, einsum, attention,
functional normalisations). :func:`register_channel_rule` adds a rule to the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from hwnas._internal.registry import Registry
from hwnas.errors import InvalidTypeError
from hwnas.graph.channel_prop import Chan, ChannelProp, Rule

__all__ = ["FUNCTION_RULES", "MODULE_RULES", "register_channel_rule", "tie"]

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
            FUNCTION_RULES.register(name_of(key), fn)
        else:
            raise InvalidTypeError(
                f"`key` must be a module class, a function or a name, but got {key!r}")
        return fn

    return deco(rule) if rule is not None else deco


def name_of(target: Any) -> str:
    """The name a function rule is registered under (a method name is its own name)."""
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", str(target))


def args_of(node: fx.Node) -> tuple[Any, ...]:
    """``node.args`` typed loosely: fx's Argument union is too wide to be useful here."""
    return tuple(node.args)


def arg(node: fx.Node, name: str, pos: int, default: Any = None) -> Any:
    """Argument ``name`` of a call, given by keyword or at position ``pos``."""
    args = args_of(node)
    return args[pos] if len(args) > pos else dict(node.kwargs).get(name, default)


def first(node: fx.Node) -> Any:
    args = args_of(node)
    return args[0] if args else None


def shape_of(out: Any) -> tuple[int, ...]:
    return tuple(out.shape) if isinstance(out, torch.Tensor) else ()


def tie(prop: ChannelProp, chan: Chan) -> Chan:
    """Ids over several dims, tied to the last one: index ``j`` of the last dim is one
    channel in every position of the other dims.

    A reshape that splits the channel dim into (groups, channels per group), e.g. heads
    (``(B, L, H * d) -> (B, L, H, d)``) or a channel shuffle, keeps the tensor exactly
    prunable only when every group keeps the same indices: pruning index ``j`` removes it
    from every head (every group).
    """
    ids = chan.ids
    if ids.ndim <= 1:
        return chan
    rows = ids.reshape(-1, ids.shape[-1])
    if len(rows) > 1:
        prop.union(np.broadcast_to(rows[0], rows[1:].shape), rows[1:])
    return Chan(chan.dim + ids.ndim - 1, rows[0].copy())


def tie_groups(prop: ChannelProp, ids: np.ndarray, groups: int) -> np.ndarray:
    """1-D ids of ``groups`` equal blocks, the index within a block tied across blocks."""
    if groups <= 1:
        return ids
    return np.tile(tie(prop, Chan(0, ids.reshape(groups, -1))).ids, groups)
