"""Default cost functions for conv, linear and normalisation layers.

Conventions (PLiNIO's, batch 1, see cost_models/README.md):

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
from hwnas.cost.targets import Target

if TYPE_CHECKING:
    from hwnas.ir import LayerInfo

Alive = dict[str, torch.Tensor]


def _in_per_group(info: LayerInfo, alive: Alive) -> torch.Tensor:
    # A depthwise conv keeps one input channel per output channel however many survive;
    # a grouped conv is frozen by the tracer, so its counts are whole.
    if info.depthwise:
        return torch.ones_like(alive["in"])
    return alive["in"] / info.groups


def _weights_per_output(info: LayerInfo, alive: Alive) -> torch.Tensor:
    return _in_per_group(info, alive) * info.kernel_size


@register("params", nn.modules.conv._ConvNd)
@register("params", nn.Linear)
def weighted_params(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """Weights plus biases of a conv or linear layer."""
    return alive["out"] * (_weights_per_output(info, alive) + float(info.bias))


@register("ops", nn.modules.conv._ConvNd)
@register("ops", nn.Linear)
def weighted_ops(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """MACs of a conv or linear layer, one per output for the bias, at batch 1."""
    return weighted_params(info, alive, target) * info.positions


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
