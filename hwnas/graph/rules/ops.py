"""Channel rules of functional layers: ``F.linear`` / ``F.conv*d`` on parameters, matmul,
bmm, einsum and functional normalisations (attention is in
:mod:`hwnas.graph.rules.attention`).

A parameter that such an op reads (a ``get_attr`` node, or a view of one) takes the
channels of the dims it is contracted or broadcast with (:meth:`ChannelProp.adopt`), so it
is sliced with them. A contraction of two activations (``q @ k.transpose(-2, -1)``) joins
the channels of the contracted dims; its output carries the channels of the other operand's
free dim (``attn @ v`` carries ``v``'s). Attention heads: the per-head dim is the pruned
unit, tied across heads (every head keeps the same width), and where the attention's inner
width is tied to its input width (``nn.MultiheadAttention``, torchvision's Swin) it is the
input's channels, tied across heads the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch.fx as fx

from hwnas.graph.channel_prop import Chan, ChannelProp
from hwnas.graph.rules.base import arg, name_of, register_channel_rule, shape_of, tie_groups

__all__: list[str] = []


# ------------------------------------------------------------------ linear and conv


def linear_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``F.linear(x, weight, bias)`` with a parameter weight: a Linear layer."""
    x, w, b = arg(n, "input", 0), arg(n, "weight", 1), arg(n, "bias", 2)
    shape, w_shape = shape_of(out), prop.shape(w)
    if not shape or w_shape is None or len(w_shape) != 2:
        return opaque(prop, n, out, "linear with an unusual weight")
    cout, cin = w_shape
    last = len(shape) - 1
    ids_in = prop.along(n, x, last, cin, "linear input")
    if constant_dims(prop, (w, 0), (w, 1), (b, 0)):
        ids_out = prop.new_ids(n, cout)
        prop.adopt(w, 0, ids_out)
        prop.adopt(w, 1, ids_in, scaled=True)
        if b is not None:
            prop.adopt(b, 0, ids_out)
    else:
        reason = f"the weight of {n.name} is computed, not a parameter"
        prop.freeze(ids_in, reason)
        ids_out = prop.new_ids(n, cout, frozen=reason)
    prop.layer(n, "linear", ids_in, ids_out, bias=b is not None, reads=(0, last),
               fixed_weight=not prop.is_parameter(w),
               positions=math.prod(shape[1:-1]) if len(shape) > 2 else 1)
    return Chan(last, ids_out)


def conv_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``F.conv1d/2d/3d(x, weight, bias, stride, padding, dilation, groups)``."""
    x, w, b = arg(n, "input", 0), arg(n, "weight", 1), arg(n, "bias", 2)
    shape, w_shape = shape_of(out), prop.shape(w)
    g = int(arg(n, "groups", 6, 1))
    if not shape or w_shape is None:
        return opaque(prop, n, out, "conv with an unusual weight")
    cout, cin = w_shape[0], w_shape[1] * g
    ids_in = prop.along(n, x, 1, cin, "conv input")
    depthwise = g > 1 and g == cin and cout % cin == 0  # with a channel multiplier too
    constant = constant_dims(prop, (w, 0), (w, 1), (b, 0))
    if not constant:
        reason = f"the weight of {n.name} is computed, not a parameter"
        prop.freeze(ids_in, reason)
        ids_out = prop.new_ids(n, cout, frozen=reason)
    elif depthwise:
        ids_out = np.repeat(ids_in, cout // cin)
        prop.adopt(w, 0, ids_out)
    elif g > 1 and w_shape[1] == 1:
        reason = f"conv {n.name} multiplies channels per group (groups={g})"
        prop.freeze(ids_in, reason)
        ids_out = prop.new_ids(n, cout, frozen=reason)
    else:
        ids_in = tie_groups(prop, ids_in, g)
        ids_out = tie_groups(prop, prop.new_ids(n, cout), g)
        prop.adopt(w, 0, ids_out)
        prop.adopt(w, 1, ids_in[: w_shape[1]], scaled=True)
    if b is not None and constant:
        prop.adopt(b, 0, ids_out)
    stride = arg(n, "stride", 3, 1)
    prop.layer(n, "conv", ids_in, ids_out, kernel=tuple(w_shape[2:]), groups=g,
               stride=tuple(stride) if isinstance(stride, (list, tuple)) else (stride,),
               depthwise=depthwise, bias=b is not None, positions=math.prod(shape[2:]),
               reads=None if depthwise else (0, 1), fixed_weight=not prop.is_parameter(w))
    return Chan(1, ids_out)


def constant_dims(prop: ChannelProp, *dims: tuple[Any, int]) -> bool:
    """Every ``(arg, dim)`` is a parameter dim (or the arg is absent)."""
    return all(a is None or prop.constant_dim(a, d) for a, d in dims)


def opaque(prop: ChannelProp, n: fx.Node, out: Any, what: str) -> Any:
    prop.set_kind(n, "other")
    prop.freeze_inputs(n, f"{what} at {n.name}")
    return None


# ------------------------------------------------------------------ contractions


def _matmul_letters(ra: int, rb: int) -> tuple[str, str, str]:
    """Einsum letters of ``a @ b`` for operands of rank ``ra`` and ``rb``."""
    batch = "abcdefgh"[: max(ra, rb, 2) - 2]
    la = "k" if ra == 1 else batch[len(batch) - (ra - 2):] + "mk"
    lb = "k" if rb == 1 else batch[len(batch) - (rb - 2):] + "kn"
    lo = batch + ("m" if ra > 1 else "") + ("n" if rb > 1 else "")
    return la, lb, lo


def _einsum_letters(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks) or "." in eq.replace("...", ""):
        return None
    dots = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks, strict=True)
                if "..." in t), default=0)
    fill = "".join(chr(0x3B1 + i) for i in range(dots))  # Greek letters for '...'
    ops = [t.replace("...", fill[dots - (r - len(t.replace("...", ""))):]) for t, r in
           zip(terms, ranks, strict=True)]
    if "->" not in eq:
        counts = {c: sum(t.count(c) for t in ops) for c in set("".join(ops))}
        rhs = "".join(sorted(c for c, k in counts.items() if k == 1))
    out = rhs.replace("...", fill)
    return ops, out


def _contract(prop: ChannelProp, n: fx.Node, operands: list[tuple[Any, str]], out_letters: str,
              out: Any, first_arg: int = 0, kind: str = "matmul") -> Any:
    """A product of tensors written as einsum letters (matmul, bmm, einsum); operand ``k``
    is argument ``first_arg + k`` of the call."""
    prop.set_kind(n, kind)
    sizes, tracked = _track_letters(prop, n, operands)
    contracted = [c for c in sizes if c not in out_letters]
    reader = next((c for c in contracted if c in tracked), None)
    reads = _adopt_operands(prop, n, operands, tracked, reader, first_arg)
    out_tracked = _output_letters(prop, n, operands, out_letters, sizes, tracked)
    out_letter = out_tracked[-1] if out_tracked else (out_letters[-1] if out_letters else None)
    in_size = sizes[reader] if reader else math.prod(sizes[c] for c in contracted)
    out_size = sizes[out_letter] if out_letter else 1
    total = math.prod(sizes.values())
    params = sum(math.prod(prop.shape(node) or ()) for node, _ in operands
                 if isinstance(node, fx.Node) and node in prop.origin)
    result = Chan(out_letters.index(out_tracked[-1]), tracked[out_tracked[-1]]) \
        if out_tracked else None
    if params % (in_size * out_size):
        # a parameter without both the contracted and the output channel dims: counted as
        # it is, its channels kept
        for ids in tracked.values():
            prop.freeze(ids, f"{name_of(n.target)} at {n.name} reads a parameter that "
                             "lacks its channel dims")
        prop.layer(n, kind, None, None, in_channels=1, out_channels=1, positions=total,
                   param_positions=params)
        return result
    prop.layer(n, kind, tracked[reader] if reader else None,
               tracked[out_letter] if out_tracked and out_letter else None,
               in_channels=in_size, out_channels=out_size, reads=reads,
               positions=total // (in_size * out_size),
               param_positions=params // (in_size * out_size))
    return result


def _track_letters(prop: ChannelProp, n: fx.Node, operands: list[tuple[Any, str]]
                   ) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """The size of every letter, and the channel ids each tracked letter carries (operands
    whose channels meet on one letter are joined)."""
    sizes: dict[str, int] = {}
    for node, letters in operands:
        for letter, size in zip(letters, prop.shape(node) or (), strict=False):
            sizes[letter] = max(sizes.get(letter, 1), size)
    tracked: dict[str, np.ndarray] = {}
    for node, letters in operands:
        c = prop.info(node)
        if c is None:
            continue
        if c.ids.ndim != 1 or c.dim >= len(letters):
            prop.freeze(c.ids, f"{name_of(n.target)} at {n.name} reads channels over several dims")
            continue
        letter = letters[c.dim]
        if letter in tracked:
            prop.union(tracked[letter], c.ids)
        else:
            tracked[letter] = c.ids
    return sizes, tracked


def _adopt_operands(prop: ChannelProp, n: fx.Node, operands: list[tuple[Any, str]],
                    tracked: dict[str, np.ndarray], reader: str | None,
                    first_arg: int) -> tuple[int, int] | None:
    """Give every operand's other tracked dims their channels (a parameter adopts them; an
    untracked activation freezes them); ``(argument, dim)`` the layer reads its input
    channels through, or None."""
    reads = None
    folded = False  # the reader's gate goes into a parameter (x @ W)
    for k, (node, letters) in enumerate(operands):
        c = prop.info(node)
        own = letters[c.dim] if c is not None and c.ids.ndim == 1 and c.dim < len(letters) else None
        for d, letter in enumerate(letters):
            if letter not in tracked or letter == own or (prop.shape(node) or (1,) * 9)[d] == 1:
                continue
            scaled = letter == reader and not folded
            if prop.adopt(node, d, tracked[letter], scaled=scaled):
                folded = folded or scaled
            else:
                prop.freeze(tracked[letter], f"{name_of(n.target)} at {n.name} combines "
                                             "channels with an untracked tensor")
        if own is not None and own == reader and reads is None:
            reads = (first_arg + k, c.dim)  # type: ignore[union-attr]
    return reads


def _output_letters(prop: ChannelProp, n: fx.Node, operands: list[tuple[Any, str]],
                    out_letters: str, sizes: dict[str, int],
                    tracked: dict[str, np.ndarray]) -> list[str]:
    """The tracked output letters; a free output dim that only a parameter has gets new
    output channels (x @ W). Channels on more than one output dim are frozen."""
    out_tracked = [c for c in out_letters if c in tracked]
    if not out_tracked and out_letters:
        last = out_letters[-1]
        owners = [(node, letters.index(last)) for node, letters in operands if last in letters]
        if len(owners) == 1 and prop.constant_dim(*owners[0]):
            tracked[last] = prop.new_ids(n, sizes[last])
            prop.adopt(owners[0][0], owners[0][1], tracked[last])
            out_tracked = [last]
    for extra in out_tracked[:-1]:
        prop.freeze(tracked[extra], f"{name_of(n.target)} at {n.name} outputs channels on "
                                    "several dims")
    return out_tracked


def matmul_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    a, b = arg(n, "input", 0), arg(n, "other", 1)
    if name_of(n.target) in ("bmm", "mm"):
        b = arg(n, "mat2", 1)
    sa, sb = prop.shape(a), prop.shape(b)
    if sa is None or sb is None:
        return opaque(prop, n, out, "matmul with a non-tensor operand")
    la, lb, lo = _matmul_letters(len(sa), len(sb))
    return _contract(prop, n, [(a, la), (b, lb)], lo, out)


def einsum_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    args = list(n.args)
    equation, tensors = args[0], args[1:]
    ranks = [len(prop.shape(t) or ()) for t in tensors]
    parsed = _einsum_letters(equation, ranks) if isinstance(equation, str) else None
    if parsed is None or len(tensors) != 2:
        return opaque(prop, n, out, "einsum that is not a product of two tensors (as "
                                     "separate arguments)")
    return _contract(prop, n, list(zip(tensors, parsed[0], strict=True)), parsed[1], out,
                     first_arg=1)


# ------------------------------------------------------------------ normalisation


def layer_norm_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``F.layer_norm(x, shape, weight, bias)``: over the channel dim, a masked norm during
    the search (statistics over the kept channels only); its affine follows the channels."""
    x, norm_shape = arg(n, "input", 0), arg(n, "normalized_shape", 1)
    w, b = arg(n, "weight", 2), arg(n, "bias", 3)
    shape = shape_of(out)
    k = len(norm_shape) if isinstance(norm_shape, (list, tuple)) else 1
    affine = sum(math.prod(prop.shape(t) or ()) for t in (w, b) if t is not None)
    return norm_over(prop, n, x, shape, len(shape) - k, [w, b], affine, f"layer_norm {n.name}")


def group_norm_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    x, groups, w, b = (arg(n, "input", 0), arg(n, "num_groups", 1), arg(n, "weight", 2),
                       arg(n, "bias", 3))
    shape = shape_of(out)
    chan = prop.info(x)
    affine = sum(math.prod(prop.shape(t) or ()) for t in (w, b) if t is not None)
    if chan is not None and chan.dim == 1 and chan.ids.ndim == 1 and isinstance(groups, int):
        prop.set_kind(n, "norm")
        ids = tie_groups(prop, chan.ids, groups) if groups < len(chan.ids) else chan.ids
        return _norm_layer(prop, n, ids, 1, [w, b], affine // len(ids),
                           groups < len(chan.ids))
    return norm_over(prop, n, x, shape, 1, [w, b], affine, f"group_norm {n.name}")


def batch_norm_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``F.batch_norm`` / ``F.instance_norm``: per channel; running stats and affine
    follow the channels."""
    x = arg(n, "input", 0)
    names = ("running_mean", "running_var", "weight", "bias")
    consts = [arg(n, name, k + 1) for k, name in enumerate(names)]
    prop.set_kind(n, "norm")
    shape = shape_of(out)
    ids = prop.along(n, x, 1, shape[1], f"{name_of(n.target)} input")
    affine = sum(math.prod(prop.shape(t) or ()) for t in consts[2:] if t is not None)
    return _norm_layer(prop, n, ids, 1, consts, affine // shape[1], False)


def norm_over(prop: ChannelProp, n: fx.Node, x: Any, shape: tuple[int, ...], start: int,
              consts: list[Any], affine: int, what: str) -> Any:
    """A normalisation over dims ``start:``: masked when they hold the channel dim."""
    prop.set_kind(n, "norm")
    chan = prop.info(x)
    if chan is None or chan.dim + chan.ids.ndim <= start:
        # does not mix channels (normalises over spatial dims): a constant affine
        prop.layer(n, "norm", None, None, in_channels=1, out_channels=1, param_positions=affine)
        return chan
    if chan.ids.ndim != 1 or chan.dim < start:
        prop.freeze(chan.ids, f"{what} normalises over the channel dim and others")
        prop.layer(n, "norm", None, None, in_channels=1, out_channels=1, param_positions=affine)
        return chan
    return _norm_layer(prop, n, chan.ids, chan.dim, consts, affine // len(chan.ids), True,
                       param_dim=chan.dim - start)


def _norm_layer(prop: ChannelProp, n: fx.Node, ids: np.ndarray, dim: int, consts: list[Any],
                per_channel: int, masked: bool, param_dim: int = 0) -> Chan:
    """Record a normalisation that reads and writes ``ids`` along ``dim``."""
    ok = all(t is None or prop.constant_dim(t, param_dim) for t in consts)
    if not ok:
        prop.freeze(ids, f"{name_of(n.target)} at {n.name} has computed affine parameters")
    else:
        for t in consts:
            if t is not None:
                prop.adopt(t, param_dim, ids)
    prop.layer(n, "norm", ids, ids, reads=(0, dim) if masked else None,
               param_positions=per_channel)
    return Chan(dim, ids)


_FUNCTIONS = {
    linear_rule: ("linear",),
    conv_rule: ("conv1d", "conv2d", "conv3d"),
    matmul_rule: ("matmul", "bmm", "mm"),
    einsum_rule: ("einsum",),
    layer_norm_rule: ("layer_norm",),
    group_norm_rule: ("group_norm",),
    batch_norm_rule: ("batch_norm", "instance_norm"),
}
for _rule, _names in _FUNCTIONS.items():
    for _name in _names:
        register_channel_rule(_name, _rule)
