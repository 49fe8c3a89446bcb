"""Channel rules of ops that move, select or join dims: reshapes, permutes, indexing,
reductions, concatenation and splits.

Reshapes and permutes are followed exactly: the ids of the input are laid out over every
dim of the tensor, the op is applied to that array, and the dims along which the ids still
vary are the output's channel dims. A reshape that splits the channel dim (heads, a channel
shuffle) ties the index within a group across groups (:func:`~hwnas.graph.rules.base.tie`),
so fixed channel permutations stay prunable.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch.fx as fx

from hwnas.graph.channel_prop import Chan, ChannelProp, _permutation_of, compress
from hwnas.graph.rules.base import (
    arg,
    args_of,
    first,
    name_of,
    register_channel_rule,
    shape_of,
    tie,
)

__all__: list[str] = []


def _full(chan: Chan, shape: tuple[int, ...]) -> np.ndarray:
    """The ids laid out over every dim of a tensor of ``shape`` (batch dim included)."""
    rest = len(shape) - chan.dim - chan.ids.ndim
    ids = chan.ids.reshape((1,) * chan.dim + chan.ids.shape + (1,) * rest)
    return np.broadcast_to(ids, shape)


def _located(prop: ChannelProp, n: fx.Node, chan: Chan, ids: np.ndarray,
             tied: bool = True) -> Chan | None:
    """The channel dims of an output whose ids over all its dims are ``ids`` (tied to the
    last of them when there are several; ``tied=False``: as found)."""
    if ids.size == 0:
        return None
    found = compress(0, ids)
    if found.dim == 0:  # the ids vary along dim 0: channels merged with the batch dim
        prop.freeze(chan.ids, f"{name_of(n.target)} at {n.name} moves channels into the "
                              "batch dim")
        return None
    return tie(prop, found) if tied else found


def reshape_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """view, reshape, flatten, unflatten, squeeze, unsqueeze, transpose, permute, movedim."""
    prop.set_kind(n, "reshape")
    x, shape = first(n), shape_of(out)
    chan = prop.info(x)
    in_shape = prop.shape(x)
    if chan is None or in_shape is None or not shape:
        return None
    name = name_of(n.target) if n.op != "call_module" else "flatten"
    if name in ("transpose", "permute", "t", "swapaxes", "swapdims", "movedim"):
        perm = _movedim(n, len(in_shape)) if name == "movedim" else _permutation_of(
            n, name, len(in_shape))
        if perm is None:
            prop.freeze(chan.ids, f"{name} with computed dims at {n.name}")
            return None

        def apply(a: np.ndarray) -> np.ndarray:
            return np.transpose(a, perm)
    else:
        if math.prod(shape) != math.prod(in_shape):
            prop.freeze(chan.ids, f"reshape changes sizes at {n.name}")
            return None

        def apply(a: np.ndarray) -> np.ndarray:
            return np.reshape(a, shape)
    if chan.ids.size == 1 and chan.ids.ndim == 1:  # one channel
        return _single(prop, n, chan, shape, in_shape, name)
    if not (chan.ids == chan.ids.flat[0]).all():
        return _located(prop, n, chan, apply(_full(chan, in_shape)))
    # one id everywhere (channels tied into one): locate the channel dims by position
    pos = Chan(chan.dim, np.arange(chan.ids.size).reshape(chan.ids.shape))
    found = _located(prop, n, chan, apply(_full(pos, in_shape)), tied=False)
    if found is None:
        return None
    last = found.dim + found.ids.ndim - 1
    return Chan(last, np.full(found.ids.shape[-1], chan.ids.flat[0]))


def _single(prop: ChannelProp, n: fx.Node, chan: Chan, shape: tuple[int, ...],
            in_shape: tuple[int, ...], name: str) -> Chan | None:
    """A tensor with one channel: where it goes cannot be read from the ids."""
    if name in ("transpose", "permute", "t", "swapaxes", "swapdims", "movedim"):
        perm = _movedim(n, len(in_shape)) if name == "movedim" else _permutation_of(
            n, name, len(in_shape))
        return Chan(perm.index(chan.dim), chan.ids) if perm is not None else None
    if len(shape) == len(in_shape) and shape[chan.dim] == 1:
        return chan
    if len(shape) == 2 and shape[0] == in_shape[0] and chan.dim >= 1:  # flatten
        return Chan(1, np.repeat(chan.ids, shape[1]))
    prop.freeze(chan.ids, f"reshape of a single-channel tensor at {n.name}")
    return None


def _movedim(n: fx.Node, rank: int) -> list[int] | None:
    src, dst = arg(n, "source", 1), arg(n, "destination", 2)
    if not (isinstance(src, int) and isinstance(dst, int)):
        return None
    order = [d for d in range(rank) if d != src % rank]
    order.insert(dst % rank, src % rank)
    return order


def reduce_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "reduce")
    x = first(n)
    chan, in_shape = prop.info(x), prop.shape(x)
    if chan is None or in_shape is None:
        return None
    dims = arg(n, "dim", 1)
    keepdim = arg(n, "keepdim", 2, False)
    if dims is None:
        prop.freeze(chan.ids, f"reduction over all dims at {n.name}")
        return None
    dims = [int(v) % len(in_shape) for v in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if any(chan.dim <= v < chan.dim + chan.ids.ndim for v in dims):
        prop.freeze(chan.ids, f"reduction over the channel dim at {n.name}")
        return None
    shift = 0 if keepdim else sum(1 for v in dims if v < chan.dim)
    return Chan(chan.dim - shift, chan.ids)


def cat_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """Along the channel dim the ids are concatenated; along another dim (tokens) the
    operands' channels are joined, and a constant operand (a class token) takes them."""
    prop.set_kind(n, "cat")
    shape = shape_of(out)
    tensors = list(first(n))
    dim = int(arg(n, "dim", 1, 0)) % len(shape)
    chans = [prop.info(t) for t in tensors]
    tracked = [c for c in chans if c is not None]
    if tracked and all(not (c.dim <= dim < c.dim + c.ids.ndim) for c in tracked):
        return _join_along_other_dim(prop, n, tensors, chans, tracked[0])
    parts = [prop.along(n, t, dim, prop.shape(t)[dim], f"cat input at {n.name}")  # type: ignore[index]
             for t in tensors]
    if dim == 1 or all(c is not None and c.dim == dim for c in chans):
        return Chan(dim, np.concatenate(parts))
    prop.freeze(np.concatenate(parts), f"cat along a non-channel dim at {n.name}")
    return None


def _join_along_other_dim(prop: ChannelProp, n: fx.Node, tensors: list[Any],
                          chans: list[Chan | None], ref: Chan) -> Chan | None:
    ok = ref.ids.ndim == 1
    for t, c in zip(tensors, chans, strict=True):
        if not ok:
            break
        if c is None:
            t_shape = prop.shape(t)
            ok = t_shape is not None and (t_shape[ref.dim] == 1 or prop.adopt(t, ref.dim, ref.ids))
        elif c.dim == ref.dim and c.ids.shape == ref.ids.shape:
            prop.union(ref.ids, c.ids)
        else:
            ok = False
    if ok:
        return ref
    for c in chans:
        if c is not None:
            prop.freeze(c.ids, f"cat of tensors with different channels at {n.name}")
    return None


def stack_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``torch.stack`` of tensors with the same channels (SKNet's branches): they are one set
    of channels, on the dim after the new one when it comes before them."""
    prop.set_kind(n, "cat")
    tensors = list(first(n))
    dim = int(arg(n, "dim", 1, 0)) % len(shape_of(out))
    chans = [prop.info(t) for t in tensors]
    ref = chans[0]
    if ref is None or any(c is None or c.dim != ref.dim or c.ids.shape != ref.ids.shape
                          for c in chans):
        for c in chans:
            if c is not None:
                prop.freeze(c.ids, f"stack of tensors with different channels at {n.name}")
        return None
    for c in chans[1:]:
        prop.union(ref.ids, c.ids)  # type: ignore[union-attr]
    return Chan(ref.dim + (dim <= ref.dim), ref.ids)


def split_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    prop.set_kind(n, "split")
    x = first(n)
    chan, in_shape = prop.info(x), prop.shape(x)
    if chan is None or in_shape is None:
        return None
    name = name_of(n.target)
    dim: Any = arg(n, "dim", 1, 0) if name == "unbind" else dict(n.kwargs).get(
        "dim", args_of(n)[2] if len(args_of(n)) > 2 else 0)
    dim = int(dim) % len(in_shape)
    if not (chan.dim <= dim < chan.dim + chan.ids.ndim):
        shift = 1 if name == "unbind" and dim < chan.dim else 0
        return [Chan(chan.dim - shift, chan.ids) for _ in out]
    if chan.ids.ndim != 1 or name in ("unbind", "tensor_split"):
        prop.freeze(chan.ids, f"{name} over the channel dim at {n.name}")
        return [chan for _ in out]
    result, start = [], 0
    for piece in out:
        size = piece.shape[dim]
        result.append(Chan(dim, chan.ids[start:start + size]))
        start += size
    return result


def getitem_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    x, index = args_of(n)[:2]
    value = prop.value(x)
    if isinstance(value, list):
        prop.set_kind(n, "split")
        return value[index] if isinstance(index, int) and -len(value) <= index < len(value) \
            else None
    prop.set_kind(n, "reshape")
    chan, in_shape = prop.info(x), prop.shape(x)
    if chan is None or in_shape is None:
        return None
    dims = _index_dims(index, len(in_shape))
    if dims is None:
        prop.freeze(chan.ids, f"indexing with a tensor at {n.name}")
        return None
    covered = range(chan.dim, chan.dim + chan.ids.ndim)
    part = channel_slice(index, len(in_shape), chan.dim)
    if chan.ids.ndim == 1 and dims[chan.dim][0] is not None and part is not None:
        # a contiguous range of the channels (GhostNet's cat-then-slice, DPN's dual paths):
        # the exported model slices the kept ones
        return Chan(dims[chan.dim][0], chan.ids[part])  # type: ignore[arg-type]
    if any(dims[d][0] is None or not dims[d][1] for d in covered):
        prop.freeze(chan.ids, f"indexing over the channel dim at {n.name}")
        return None
    return Chan(dims[chan.dim][0], chan.ids)  # type: ignore[arg-type]


def channel_slice(index: Any, rank: int, dim: int) -> slice | None:
    """The step-1 slice ``index`` takes along ``dim`` (None for another index there)."""
    idx = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in idx:
        k = idx.index(Ellipsis)
        used = sum(1 for i in idx if i is not None and i is not Ellipsis)
        idx[k:k + 1] = [slice(None)] * (rank - used)
    real = [i for i in idx if i is not None]
    part = real[dim] if dim < len(real) else slice(None)
    if not isinstance(part, slice) or part.step not in (None, 1) or not all(
            isinstance(v, (int, type(None))) for v in (part.start, part.stop)):
        return None
    return part


def _index_dims(index: Any, rank: int) -> list[tuple[int | None, bool]] | None:
    """For each input dim: (its output dim or None when an int removes it, kept whole)."""
    idx = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, fx.Node) or not isinstance(i, (int, slice, type(None), type(...)))
           for i in idx):
        return None
    used = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if Ellipsis in idx:
        k = idx.index(Ellipsis)
        idx[k:k + 1] = [slice(None)] * (rank - used)
    idx += [slice(None)] * (rank - sum(1 for i in idx if i is not None))
    result: list[tuple[int | None, bool]] = []
    out = 0
    for i in idx:
        if i is None:
            out += 1
        elif isinstance(i, int):
            result.append((None, False))
        else:
            result.append((out, i == slice(None)))
            out += 1
    return result


_FUNCTIONS = {
    reshape_rule: ("view", "reshape", "flatten", "unflatten", "transpose", "permute",
                   "squeeze", "unsqueeze", "t", "swapaxes", "swapdims", "movedim",
                   "reshape_as", "view_as"),
    reduce_rule: ("mean", "sum", "amax", "amin"),
    split_rule: ("chunk", "split", "tensor_split", "unbind"),
    cat_rule: ("cat", "concat", "concatenate"),
    stack_rule: ("stack",),
    getitem_rule: ("getitem",),
}
for _rule, _names in _FUNCTIONS.items():
    for _name in _names:
        register_channel_rule(_name, _rule)
