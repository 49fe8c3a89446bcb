"""Default cost functions for conv, linear, matmul, attention and normalisation layers.

Conventions (PLiNIO's, batch 1, see hwnas/cost/targets/README.md):

- params(conv) = cout * (cin/groups * prod(kernel) + bias); params(linear) = cout * (cin + bias)
- ops(conv) = params(conv) * prod(out_spatial) (MACs, one per output for the bias)
- ops(linear) = params(linear) * tokens
- norm_params: the affine parameters of normalisation layers, kept out of params and ops

``alive["in"]`` / ``alive["out"]`` are tensors, so the same function gives exact integer
counts and differentiable expected counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from hwnas.cost import register
from hwnas.cost.luts import lut_model  # noqa: F401  (hwnas.search.model reads it here)
from hwnas.cost.target import Target

if TYPE_CHECKING:
    from hwnas.graph.ir import LayerInfo

Alive = dict[str, torch.Tensor]


def _in_per_group(info: LayerInfo, alive: Alive) -> torch.Tensor:
    # A depthwise conv keeps one input channel per output channel however many survive; a
    # grouped conv keeps every group the same width (the tracer ties the index within a
    # group across groups), so alive / groups is a whole number.
    if info.depthwise:
        return torch.ones_like(alive["in"])
    return alive["in"] / info.groups


def _weights_per_output(info: LayerInfo, alive: Alive) -> torch.Tensor:
    return _in_per_group(info, alive) * info.kernel_size


@register("params", nn.modules.conv._ConvNd)
@register("params", nn.Linear)
def weighted_params(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """Weights plus biases of a conv or linear layer (a fixed weight, a buffer such as a
    blur filter, is no parameter)."""
    weights = _weights_per_output(info, alive) * float(not info.fixed_weight)
    return alive["out"] * (weights + float(info.bias))


@register("ops", nn.modules.conv._ConvNd)
@register("ops", nn.Linear)
def weighted_ops(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """MACs of a conv or linear layer, one per output for the bias, at batch 1."""
    return alive["out"] * (_weights_per_output(info, alive) + float(info.bias)) * info.positions


@register("norm_params", nn.modules.batchnorm._NormBase)
@register("norm_params", nn.LayerNorm)
@register("norm_params", nn.GroupNorm)
def norm_params(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """Affine parameters (scale and shift) of a normalisation layer."""
    module = info.module
    affine = bool(getattr(module, "affine", False) or getattr(module, "elementwise_affine", False))
    if not affine:
        return torch.zeros_like(alive["out"])
    has_bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.LayerNorm):
        # LayerNorm's affine covers every normalised element, not only the channel dim. When
        # the tracer found no channel slots (normalised over spatial dims, or over C,H,W) the
        # count does not follow the alive channels: it is the constant parameter count.
        total = float(sum(p.numel() for p in module.parameters()))
        if not info.out_channels:
            return torch.zeros_like(alive["out"]) + total
        return alive["out"] * (total / info.out_channels)
    return alive["out"] * (1.0 + float(has_bias))


# ---------------------------------------------------------------- functional layers
# F.linear / F.conv*d on parameters cost what the modules cost.
for _name in ("linear", "conv1d", "conv2d", "conv3d"):
    register("params", _name)(weighted_params)
    register("ops", _name)(weighted_ops)


@register("params", "matmul")
@register("params", "mm")
@register("params", "bmm")
@register("params", "einsum")
def matmul_params(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """Parameter elements a matmul reads (``x @ W``; 0 between activations)."""
    return alive["in"] * alive["out"] * float(info.param_positions)


@register("ops", "matmul")
@register("ops", "mm")
@register("ops", "bmm")
@register("ops", "einsum")
def matmul_ops(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """MACs of a product: contracted channels x output channels x the other dims' sizes."""
    return alive["in"] * alive["out"] * float(info.positions)


def _projections(info: LayerInfo, alive: Alive) -> torch.Tensor:
    return alive["in"] * alive["out"] + alive["out"] * float(info.bias)


@register("params", nn.MultiheadAttention)
@register("params", "shifted_window_attention")
@register("params", "shifted_window_attention_3d")
@register("params", "scaled_dot_product_attention")
def attention_params(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """Projection weights and biases of an attention layer (q, k, v and output: 4 of them;
    none for ``F.scaled_dot_product_attention`` itself)."""
    return _projections(info, alive) * float(info.param_positions)


@register("ops", nn.MultiheadAttention)
@register("ops", "shifted_window_attention")
@register("ops", "shifted_window_attention_3d")
@register("ops", "scaled_dot_product_attention")
def attention_ops(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """MACs of an attention layer: the projections (one MAC per output for a bias), then
    ``q @ k^T`` over the q/k channels and ``attn @ v`` over the v channels for every
    query x key position (``in``: q/k channels, ``out``: v channels, summed over heads)."""
    return (_projections(info, alive) * float(info.positions)
            + (alive["in"] + alive["out"]) * float(info.attn_positions))


@register("norm_params", "layer_norm")
@register("norm_params", "group_norm")
@register("norm_params", "batch_norm")
@register("norm_params", "instance_norm")
def functional_norm_params(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """Affine parameters of a functional normalisation (per channel, or all of them when
    it does not normalise over channels)."""
    return alive["out"] * float(info.param_positions)
