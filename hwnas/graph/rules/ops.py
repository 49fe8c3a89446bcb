"""Channel rules of functional layers: ``F.linear`` / ``F.conv*d`` on parameters, matmul,
bmm, einsum, scaled dot-product attention, ``nn.MultiheadAttention``, torchvision's
shifted-window attention, and functional normalisations.

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
import torch
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
        return _opaque(prop, n, out, "linear with an unusual weight")
    cout, cin = w_shape
    last = len(shape) - 1
    ids_in = prop.along(n, x, last, cin, "linear input")
    if _constants(prop, (w, 0), (w, 1), (b, 0)):
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
               positions=math.prod(shape[1:-1]) if len(shape) > 2 else 1)
    return Chan(last, ids_out)


def conv_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``F.conv1d/2d/3d(x, weight, bias, stride, padding, dilation, groups)``."""
    x, w, b = arg(n, "input", 0), arg(n, "weight", 1), arg(n, "bias", 2)
    shape, w_shape = shape_of(out), prop.shape(w)
    g = int(arg(n, "groups", 6, 1))
    if not shape or w_shape is None:
        return _opaque(prop, n, out, "conv with an unusual weight")
    cout, cin = w_shape[0], w_shape[1] * g
    ids_in = prop.along(n, x, 1, cin, "conv input")
    depthwise = g > 1 and g == cin == cout
    constant = _constants(prop, (w, 0), (w, 1), (b, 0))
    if not constant:
        reason = f"the weight of {n.name} is computed, not a parameter"
        prop.freeze(ids_in, reason)
        ids_out = prop.new_ids(n, cout, frozen=reason)
    elif depthwise:
        ids_out = ids_in
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
               reads=(0, 1))
    return Chan(1, ids_out)


def _constants(prop: ChannelProp, *dims: tuple[Any, int]) -> bool:
    """Every ``(arg, dim)`` is a parameter dim (or the arg is absent)."""
    return all(a is None or prop.constant_dim(a, d) for a, d in dims)


def _opaque(prop: ChannelProp, n: fx.Node, out: Any, what: str) -> Any:
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
    contracted = [c for c in sizes if c not in out_letters]
    reader = next((c for c in contracted if c in tracked), None)
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
    # a free output dim that only a parameter has: new output channels (x @ W)
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


def matmul_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    a, b = arg(n, "input", 0), arg(n, "other", 1)
    if name_of(n.target) in ("bmm", "mm"):
        b = arg(n, "mat2", 1)
    sa, sb = prop.shape(a), prop.shape(b)
    if sa is None or sb is None:
        return _opaque(prop, n, out, "matmul with a non-tensor operand")
    la, lb, lo = _matmul_letters(len(sa), len(sb))
    return _contract(prop, n, [(a, la), (b, lb)], lo, out)


def einsum_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    args = list(n.args)
    equation, tensors = args[0], args[1:]
    ranks = [len(prop.shape(t) or ()) for t in tensors]
    parsed = _einsum_letters(equation, ranks) if isinstance(equation, str) else None
    if parsed is None or len(tensors) != 2:
        return _opaque(prop, n, out, "einsum that is not a product of two tensors (as "
                                     "separate arguments)")
    return _contract(prop, n, list(zip(tensors, parsed[0], strict=True)), parsed[1], out,
                     first_arg=1)


def sdpa_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``F.scaled_dot_product_attention(q, k, v)``: q and k joined on their last dim (the
    per-head dim), v's last dim goes to the output."""
    q, k, v = arg(n, "query", 0), arg(n, "key", 1), arg(n, "value", 2)
    sq, sk, sv = prop.shape(q), prop.shape(k), prop.shape(v)
    if sq is None or sk is None or sv is None:
        return _opaque(prop, n, out, "attention with a non-tensor operand")
    prop.set_kind(n, "attention")
    last = len(sq) - 1
    ids_qk = None
    for t in (q, k):
        c = prop.info(t)
        if c is not None and (c.dim != last or c.ids.ndim != 1):
            prop.freeze(c.ids, f"attention at {n.name} reads channels of a token dim")
        elif c is not None:
            if ids_qk is None:
                ids_qk = c.ids
            else:
                prop.union(ids_qk, c.ids)
    if ids_qk is not None:
        for t in (q, k):
            if prop.info(t) is None:
                prop.freeze(ids_qk, f"attention at {n.name} joins channels with untracked ones")
    cv = prop.info(v)
    ids_v = cv.ids if cv is not None and cv.dim == len(sv) - 1 and cv.ids.ndim == 1 else None
    if cv is not None and ids_v is None:
        prop.freeze(cv.ids, f"attention at {n.name} reads channels of a token dim")
    prop.layer(n, "attention", ids_qk, ids_v, in_channels=sq[-1], out_channels=sv[-1],
               reads=(0, last) if ids_qk is not None else None, positions=0,
               attn_positions=math.prod(sq[1:-1]) * sk[-2])
    return Chan(len(shape_of(out)) - 1, ids_v) if ids_v is not None else None


# ------------------------------------------------------------------ multi-head attention


def _heads(prop: ChannelProp, n: fx.Node, ids: np.ndarray, heads: int) -> np.ndarray:
    return tie_groups(prop, ids, heads)


def mha_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``nn.MultiheadAttention``: its inner width is its input width (``embed_dim``), so the
    input channels, tied across heads, are also the q/k/v channels and the output's."""
    q, k, v = arg(n, "query", 0), arg(n, "key", 1), arg(n, "value", 2)
    sq, sk = prop.shape(q), prop.shape(k)
    e, h = m.embed_dim, m.num_heads
    if sq is None or sk is None:
        return _opaque(prop, n, out, "attention with a non-tensor input")
    last = len(sq) - 1
    ids = prop.along(n, q, last, e, "attention input")
    for other in (k, v):
        if other is not q:
            prop.union(ids, prop.along(n, other, last, e, "attention input"))
    unsupported = (not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn
                   or m.in_proj_weight is None)
    if unsupported:
        prop.freeze(ids, f"MultiheadAttention {n.target} with kdim/vdim, bias_k or zero "
                         "attention keeps its channels")
    else:
        ids = _heads(prop, n, ids, h)
    tok_q = sq[1] if m.batch_first and len(sq) == 3 else sq[0]
    tok_k = sk[1] if m.batch_first and len(sk) == 3 else sk[0]
    prop.layer(n, "attention", ids, ids, bias=m.in_proj_bias is not None,
               positions=2 * tok_q + 2 * tok_k, param_positions=4, attn_positions=tok_q * tok_k)
    return [Chan(last, ids), None]


def swin_attention_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """torchvision's ``shifted_window_attention(x, qkv_weight, proj_weight, bias, window,
    heads, ...)`` and its video twin ``shifted_window_attention_3d``: it reshapes q/k/v with
    the input width, so the inner channels are the input channels (tied across heads); its
    weights are sliced with them."""
    x, w_qkv, w_proj = arg(n, "input", 0), arg(n, "qkv_weight", 1), arg(n, "proj_weight", 2)
    window = prop.concrete(arg(n, "window_size", 4))
    heads = prop.concrete(arg(n, "num_heads", 5))
    b_qkv, b_proj = arg(n, "qkv_bias", 9), arg(n, "proj_bias", 10)
    cosine = name_of(n.target) == "shifted_window_attention" and arg(
        n, "logit_scale", 11) is not None
    shape = prop.shape(x)
    if (shape is None or len(shape) not in (4, 5) or not isinstance(heads, int)
            or len(window) != len(shape) - 2):
        return _opaque(prop, n, out, "window attention with an unusual input")
    prop.set_kind(n, "attention")
    last = len(shape) - 1
    c = shape[last]
    ids = prop.along(n, x, last, c, "window attention input")
    if _constants(prop, (w_qkv, 0), (w_qkv, 1), (w_proj, 0), (w_proj, 1), (b_qkv, 0),
                  (b_proj, 0)) and (b_qkv is None) == (b_proj is None):
        ids = _heads(prop, n, ids, heads)
        qkv = np.tile(ids, 3)
        # the scores contract q with k: q reads the gate; v2's cosine attention normalises
        # q and k over their channels first, so a pruned channel must be 0 in both
        q_rows = np.arange(3 * c) < (2 * c if cosine else c)
        prop.adopt(w_qkv, 0, qkv, scaled=q_rows)
        prop.adopt(w_qkv, 1, ids, scaled=True)
        prop.adopt(w_proj, 0, ids)
        prop.adopt(w_proj, 1, ids, scaled=True)
        if b_qkv is not None:
            prop.adopt(b_qkv, 0, qkv, scaled=q_rows)
            prop.adopt(b_proj, 0, ids)
    else:
        prop.freeze(ids, f"window attention at {n.name} with computed weights keeps its "
                         "channels")
    padded = [-(-size // w) * w for size, w in zip(shape[1:-1], window, strict=True)]
    tokens = math.prod(padded)
    prop.layer(n, "attention", ids, ids, bias=b_qkv is not None, positions=4 * tokens,
               param_positions=4, attn_positions=tokens * math.prod(window))
    return Chan(last, ids)


def patch_merging_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """torchvision's ``_patch_merging_pad(x)``: the four 2x2-strided views of a channels-last
    map concatenated on the channel dim, so the output carries the input's channels 4 times."""
    prop.set_kind(n, "cat")
    x, shape = arg(n, "x", 0), shape_of(out)
    chan, in_shape = prop.info(x), prop.shape(x)
    if chan is None or in_shape is None:
        return None
    last = len(in_shape) - 1
    if chan.dim != last or chan.ids.ndim != 1 or shape[-1] != 4 * in_shape[-1]:
        prop.freeze(chan.ids, f"patch merging at {n.name} of a tensor with channels not last")
        return None
    return Chan(last, np.tile(chan.ids, 4))


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
    sdpa_rule: ("scaled_dot_product_attention",),
    swin_attention_rule: ("shifted_window_attention", "shifted_window_attention_3d"),
    patch_merging_rule: ("_patch_merging_pad",),
    layer_norm_rule: ("layer_norm",),
    group_norm_rule: ("group_norm",),
    batch_norm_rule: ("batch_norm", "instance_norm"),
}
for _rule, _names in _FUNCTIONS.items():
    for _name in _names:
        register_channel_rule(_name, _rule)
register_channel_rule(torch.nn.MultiheadAttention, mha_rule)
