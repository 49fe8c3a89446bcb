"""Module-level reference counts from forward hooks (does not import hwnas).

Every ``nn.Conv*d`` / ``nn.Linear`` module that runs in one forward at batch 1 is counted
from the tensors it actually saw: parameters = its weight and bias (once per module, however
often it runs), MACs = output elements / the examples' batch size x (input channels per
group x kernel elements + 1 for a bias), summed over its calls. This is the plain count a
user writes with hooks; it sees no functional layer (``F.linear``, attention, matmul),
so it is compared with the rows of a profile that are such modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["HookCounts", "hook_counts"]

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class HookCounts:
    """Per module name: parameters and MACs (summed over its calls)."""

    params: dict[str, int]
    ops: dict[str, int]

    @property
    def total(self) -> tuple[int, int]:
        return sum(self.params.values()), sum(self.ops.values())


def _macs(m: nn.Module, out: torch.Tensor, batch: int) -> int:
    """MACs per example: every output element of the call, over the examples' batch."""
    bias = int(getattr(m, "bias", None) is not None)
    if isinstance(m, nn.Linear):
        return out.numel() // batch * (m.in_features + bias)
    w = m.weight  # type: ignore[union-attr]
    per_output = w.shape[1] * math.prod(w.shape[2:]) if not m.transposed else (
        w.shape[0] // m.groups * math.prod(w.shape[2:]))  # type: ignore[operator]
    return out.numel() // batch * (per_output + bias)


def hook_counts(model: nn.Module, *inputs: torch.Tensor) -> HookCounts:
    """Count the conv and linear modules of ``model(*inputs)`` (eval mode, no gradients)."""
    params: dict[str, int] = {}
    ops: dict[str, int] = {}
    handles = []
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
    for name, m in model.named_modules():
        if not isinstance(m, _LAYERS):
            continue

        def hook(mod: nn.Module, args: object, out: torch.Tensor, name: str = name) -> None:
            params[name] = sum(p.numel() for p in mod.parameters(recurse=False))
            ops[name] = ops.get(name, 0) + _macs(mod, out, batch)

        handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return HookCounts(params, ops)
