"""Default cost functions for conv, linear and normalisation layers.

Conventions (PLiNIO's, batch 1, see cost_models/README.md):

- params(conv) = cout * (cin/groups * prod(kernel) + bias); params(linear) = cout * (cin + bias)
- ops(conv) = params(conv) * prod(out_spatial) (MACs, one per output for the bias)
- ops(linear) = params(linear) * tokens
- norm_params: the affine parameters of normalisation layers, kept out of params and ops
- luts: fully unrolled multiplier-array estimate on LUT targets (README, "MAC layers")

``alive["in"]`` / ``alive["out"]`` are tensors, so the same function gives exact integer
counts and differentiable expected counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from hwnas.cost import register
from hwnas.cost.targets import Target
from hwnas.errors import InvalidValueError

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


def lut_model(target: Target):
    """The target's LUT model, or a ValueError naming the targets that have one."""
    if target.luts is None:
        from hwnas.cost.targets import known_targets, load_target

        lut_targets = [t for t in known_targets() if load_target(t).luts is not None]
        raise InvalidValueError(
            f"target {target.name!r} has no LUT model; use one of {', '.join(lut_targets)} "
            "or a target file with a [luts] table"
        )
    return target.luts


@register("luts", nn.modules.conv._ConvNd)
@register("luts", nn.Linear)
def weighted_luts(info: LayerInfo, alive: Alive, target: Target) -> torch.Tensor:
    """LUTs of a fully unrolled conv/linear layer (multiplier-array estimate).

    Per output channel with n = cin/groups * prod(kernel) weights: n multipliers of
    ``weight_bits x activation_bits`` partial-product bits, and an adder tree of
    ``n - 1 + bias`` adders, each ``weight_bits + activation_bits + log2(n)`` bits wide.
    Spatial positions reuse the same hardware (one output per cycle).
    """
    model = lut_model(target)
    n = _weights_per_output(info, alive)
    wb, ab = target.weight_bits, target.activation_bits
    multipliers = n * (wb * ab * model.luts_per_pp_bit)
    width = wb + ab + torch.log2(torch.clamp(n, min=1.0))
    adders = torch.clamp(n - 1.0 + float(info.bias), min=0.0) * width * model.luts_per_adder_bit
    return alive["out"] * (multipliers + adders)
