"""Channel rules of attention: scaled dot-product attention, ``nn.MultiheadAttention``,
torchvision's shifted-window attention and patch merging.

Attention heads: the per-head dim is the pruned unit, tied across heads (every head keeps
the same width), and where the attention's inner width is tied to its input width
(``nn.MultiheadAttention``, torchvision's Swin) it is the input's channels, tied across
heads the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from hwnas.graph.channel_prop import Chan, ChannelProp
from hwnas.graph.rules.base import arg, name_of, register_channel_rule, shape_of, tie_groups
from hwnas.graph.rules.ops import constant_dims, opaque

__all__: list[str] = []


def sdpa_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    """``F.scaled_dot_product_attention(q, k, v)``: q and k joined on their last dim (the
    per-head dim), v's last dim goes to the output."""
    q, k, v = arg(n, "query", 0), arg(n, "key", 1), arg(n, "value", 2)
    sq, sk, sv = prop.shape(q), prop.shape(k), prop.shape(v)
    if sq is None or sk is None or sv is None:
        return opaque(prop, n, out, "attention with a non-tensor operand")
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
        return opaque(prop, n, out, "attention with a non-tensor input")
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
        return opaque(prop, n, out, "window attention with an unusual input")
    prop.set_kind(n, "attention")
    last = len(shape) - 1
    c = shape[last]
    ids = prop.along(n, x, last, c, "window attention input")
    if constant_dims(prop, (w_qkv, 0), (w_qkv, 1), (w_proj, 0), (w_proj, 1), (b_qkv, 0),
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


_FUNCTIONS = {
    sdpa_rule: ("scaled_dot_product_attention",),
    swin_attention_rule: ("shifted_window_attention", "shifted_window_attention_3d"),
    patch_merging_rule: ("_patch_merging_pad",),
}
for _rule, _names in _FUNCTIONS.items():
    for _name in _names:
        register_channel_rule(_name, _rule)
register_channel_rule(torch.nn.MultiheadAttention, mha_rule)
