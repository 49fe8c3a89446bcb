"""LUT costs on LUT-based FPGAs: the target's LUT model and the conv/linear ``luts`` cost.

Formulas and the measurements behind them: ``cost_models/README.md``. ``alive["in"]`` /
``alive["out"]`` are tensors, so the same function gives exact integer counts and
differentiable expected counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from hwnas.cost import register
from hwnas.cost.targets import LutModel, Target, known_targets, load_target
from hwnas.errors import InvalidValueError

if TYPE_CHECKING:
    from hwnas.ir import LayerInfo

__all__ = ["fan_in", "lut_model", "weighted_luts"]

Alive = dict[str, torch.Tensor]


def lut_model(target: Target) -> LutModel:
    """The target's LUT model, or an InvalidValueError naming the targets that have one.

    Example:
        >>> lut_model(load_target("xc7-lut6")).table
        'logicnets'
    """
    if target.luts is None:
        lut_targets = [t for t in known_targets() if load_target(t).luts is not None]
        raise InvalidValueError(
            f"target {target.name!r} has no LUT model; use one of {', '.join(lut_targets)} "
            "or a target file with a [luts] table"
        )
    return target.luts


def fan_in(info: LayerInfo, alive: Alive) -> torch.Tensor:
    """Weights feeding one output channel: ``cin / groups * prod(kernel)``.

    A depthwise conv keeps one input channel per output channel however many survive.
    """
    per_group = torch.ones_like(alive["in"]) if info.depthwise else alive["in"] / info.groups
    return per_group * info.kernel_size


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
    n = fan_in(info, alive)
    wb, ab = target.weight_bits, target.activation_bits
    multipliers = n * (wb * ab * model.luts_per_pp_bit)
    width = wb + ab + torch.log2(torch.clamp(n, min=1.0))
    adders = torch.clamp(n - 1.0 + float(info.bias), min=0.0) * width * model.luts_per_adder_bit
    return alive["out"] * (multipliers + adders)
