"""The cutting table: paired slicing functions per layer type (Torch-Pruning's
``prune_*_out_channels`` / ``prune_*_in_channels``): ``slice_out(module, keep)`` and
``slice_in(module, keep, scale)``; add a layer type with :func:`register_slicer`.

Every new tensor is made like the weight it belongs to (its device and dtype): the
indices and folded factors a slicer gets are on the module's device already
(:func:`hwnas.pruning.prune_graph` moves them there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hwnas._internal.registry import Registry
from hwnas.errors import InvalidTypeError

__all__ = ["SLICERS", "first_tensor", "like", "param", "register_slicer", "slice_in",
           "slice_out"]

SliceOut = Callable[[Any, torch.Tensor], None]
SliceIn = Callable[[Any, torch.Tensor, torch.Tensor], None]

#: Layer type -> (slice_out, slice_in).
SLICERS: Registry[tuple[SliceOut, SliceIn]] = Registry("slicer", hint="hwnas.register_slicer")


def register_slicer(layer_type: type, slice_out: SliceOut, slice_in: SliceIn) -> None:
    """Register the paired slicing functions of ``layer_type`` (and its subclasses).

    ``slice_out(module, keep)`` keeps output channels ``keep`` (a LongTensor, ascending);
    ``slice_in(module, keep, scale)`` first multiplies input channel ``c`` by
    ``scale[c]`` (the folded gate value), then keeps input channels ``keep``. Both change
    ``module`` in place.

    Example:
        >>> from torch import nn
        >>> class Scale(nn.Module):
        ...     def __init__(self, n):
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.ones(n))
        >>> def scale_out(m, keep):
        ...     m.weight = nn.Parameter(m.weight.detach()[keep])
        >>> register_slicer(Scale, scale_out, lambda m, keep, scale: None)
        >>> m = Scale(4); slice_out(m, torch.tensor([0, 2])); m.weight.shape
        torch.Size([2])
    """
    if not isinstance(layer_type, type):
        raise InvalidTypeError(f"`layer_type` must be a class, but got {layer_type!r}")
    if not (callable(slice_out) and callable(slice_in)):
        raise InvalidTypeError("`slice_out` and `slice_in` must be callables")
    SLICERS.register(layer_type, (slice_out, slice_in))


def slice_out(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep output channels ``keep`` of ``module`` (in place)."""
    SLICERS.get(type(module))[0](module, keep)


def slice_in(module: nn.Module, keep: torch.Tensor, scale: torch.Tensor) -> None:
    """Fold ``scale`` into input channels of ``module``, then keep ``keep`` (in place)."""
    SLICERS.get(type(module))[1](module, keep, scale)


def param(t: torch.Tensor) -> nn.Parameter:
    """A new parameter holding a contiguous copy of ``t``."""
    return nn.Parameter(t.detach().clone().contiguous())


def first_tensor(module: nn.Module) -> torch.Tensor:
    """The module's first floating parameter or buffer (a float32 CPU scalar without)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t
    return torch.ones(())


def like(t: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``t`` on the device and in the dtype of ``other`` (the weight it is folded into)."""
    return t.to(device=other.device, dtype=other.dtype)


def _conv_out(m: nn.modules.conv._ConvNd, keep: torch.Tensor) -> None:
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    keep = keep.to(m.weight.device)
    m.weight = param(m.weight[keep])
    if m.bias is not None:
        m.bias = param(m.bias[keep])
    m.out_channels = len(keep)
    if depthwise:
        m.in_channels = m.groups = len(keep)


def _conv_in(m: nn.modules.conv._ConvNd, keep: torch.Tensor, scale: torch.Tensor) -> None:
    if m.groups > 1 and m.groups == m.in_channels:
        return  # depthwise: inputs follow the outputs
    # a grouped conv's weight holds one group's inputs; every group keeps the same ones
    per_group = m.weight.shape[1]
    local = keep[keep < per_group].to(m.weight.device)
    shape = [1, -1] + [1] * (m.weight.dim() - 2)
    factor = like(scale[:per_group], m.weight).reshape(shape)
    m.weight = param((m.weight * factor)[:, local])
    m.in_channels = len(keep)


def _linear_out(m: nn.Linear, keep: torch.Tensor) -> None:
    keep = keep.to(m.weight.device)
    m.weight = param(m.weight[keep])
    if m.bias is not None:
        m.bias = param(m.bias[keep])
    m.out_features = len(keep)


def _linear_in(m: nn.Linear, keep: torch.Tensor, scale: torch.Tensor) -> None:
    keep = keep.to(m.weight.device)
    m.weight = param((m.weight * like(scale, m.weight).reshape(1, -1))[:, keep])
    m.in_features = len(keep)


def _norm_out(m: Any, keep: torch.Tensor) -> None:
    keep = keep.to(first_tensor(m).device)
    if getattr(m, "weight", None) is not None:
        m.weight = param(m.weight[keep])
    if getattr(m, "bias", None) is not None:
        m.bias = param(m.bias[keep])
    for name in ("running_mean", "running_var"):
        buf = getattr(m, name, None)
        if buf is not None:
            setattr(m, name, buf[keep].clone())
    if isinstance(m, nn.GroupNorm):
        if m.num_groups == m.num_channels:
            m.num_groups = len(keep)
        m.num_channels = len(keep)  # a group keeps the same channels in every group
    elif isinstance(m, nn.LayerNorm):
        m.normalized_shape = (len(keep), *m.normalized_shape[1:])
    else:
        m.num_features = len(keep)


def _norm_in(m: Any, keep: torch.Tensor, scale: torch.Tensor) -> None:
    return None  # a normalisation layer's inputs are its outputs


def _mha_in(m: nn.MultiheadAttention, keep: torch.Tensor, scale: torch.Tensor) -> None:
    # the input channels are read by the in-projection's columns, and (they are also the
    # q/k/v channels) by the scores through q and by the output projection through v
    keep = keep.to(m.in_proj_weight.device)
    s = like(scale, m.in_proj_weight)
    rows = torch.cat([s, s.new_ones(2 * len(s))])
    m.in_proj_weight = param((m.in_proj_weight * s[None, :] * rows[:, None])[:, keep])
    if m.in_proj_bias is not None:
        m.in_proj_bias = param(m.in_proj_bias * rows)
    m.out_proj.weight = param((m.out_proj.weight * s[None, :])[:, keep])


def _mha_out(m: nn.MultiheadAttention, keep: torch.Tensor) -> None:
    e, heads = m.embed_dim, m.num_heads
    keep = keep.to(m.in_proj_weight.device)
    rows = torch.cat([keep, keep + e, keep + 2 * e])
    # the scores are scaled by 1/sqrt(head dim): fold the change of head dim into q
    ratio = math.sqrt((len(keep) // heads) / (e // heads))
    factor = m.in_proj_weight.new_ones(len(rows))
    factor[: len(keep)] = ratio
    m.in_proj_weight = param(m.in_proj_weight[rows] * factor[:, None])
    if m.in_proj_bias is not None:
        m.in_proj_bias = param(m.in_proj_bias[rows] * factor)
    m.out_proj.weight = param(m.out_proj.weight[keep])
    if m.out_proj.bias is not None:
        m.out_proj.bias = param(m.out_proj.bias[keep])
    m.embed_dim = m.kdim = m.vdim = m.out_proj.in_features = m.out_proj.out_features = len(keep)
    m.head_dim = len(keep) // heads


register_slicer(nn.modules.conv._ConvNd, _conv_out, _conv_in)
register_slicer(nn.Linear, _linear_out, _linear_in)
register_slicer(nn.modules.batchnorm._NormBase, _norm_out, _norm_in)
register_slicer(nn.GroupNorm, _norm_out, _norm_in)
register_slicer(nn.LayerNorm, _norm_out, _norm_in)
register_slicer(nn.MultiheadAttention, _mha_out, _mha_in)
