"""Independent reference counts for a model's MACs and parameters (does not import hwnas).

- MACs: ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-accumulate of
  mm, addmm, bmm, baddbmm, convolution and scaled dot-product attention) halved, plus one
  MAC per output element of every op that adds a bias parameter (hwnas's convention; the
  counter does not count bias adds). On CPU ``F.scaled_dot_product_attention`` runs
  ``aten._scaled_dot_product_flash_attention_for_cpu``, which the counter has no formula
  for; it is given the counter's own formula of the other attention kernels.
- Parameters: every parameter that enters one of those ops in the forward (also as a view,
  a copy or a clone of it), counted once.

Both are read from the ops that run (``TorchDispatchMode``), not from the model's modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["Reference", "reference_counts"]

aten = torch.ops.aten

_MACS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
         aten.convolution.default, aten._convolution.default,
         aten._scaled_dot_product_flash_attention_for_cpu.default,
         aten._scaled_dot_product_flash_attention.default,
         aten._scaled_dot_product_efficient_attention.default}
_BIAS_ARG = {aten.addmm.default: 0, aten.baddbmm.default: 0, aten.convolution.default: 2,
             aten._convolution.default: 2}
_COPIES = {aten.clone.default, aten._to_copy.default, aten.copy_.default,
           aten.contiguous.default, aten.detach.default, aten.lift_fresh.default}
_ADDS = {aten.add.Tensor, aten.add_.Tensor}


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _ParamUse(TorchDispatchMode):
    """Which parameters enter a MAC op, and how many outputs get a bias parameter added."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.origin: dict[int, set[str]] = {}
        self.sizes: dict[str, int] = {}
        for name, p in model.named_parameters():
            self.origin.setdefault(_key(p), set()).add(name)
            self.sizes[name] = p.numel()
        self.used: set[str] = set()
        self.biased = 0
        self.mac_outputs: set[int] = set()

    def _params(self, t: object) -> set[str]:
        return self.origin.get(_key(t), set()) if isinstance(t, torch.Tensor) else set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _MACS:
            for t in tree_leaves((args, kwargs)):
                self.used |= self._params(t)
            k = _BIAS_ARG.get(func)
            if k is not None and len(args) > k and self._params(args[k]):
                self.biased += out.numel()
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.mac_outputs.add(_key(t))
        elif func in _COPIES:
            src = set().union(*(self._params(t) for t in tree_leaves((args, kwargs))))
            if src:
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        self.origin.setdefault(_key(t), set()).update(src)
        elif func in _ADDS and len(args) == 2:
            a, b = args
            for x, y in ((a, b), (b, a)):
                if (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                        and _key(x) in self.mac_outputs and self._params(y)):
                    self.used |= self._params(y)
                    self.biased += out.numel()
                    break
        return out


@dataclass(frozen=True)
class Reference:
    """Reference counts of one forward at batch 1."""

    macs: int  # FlopCounterMode / 2
    biased_outputs: int
    params: int

    @property
    def ops(self) -> int:
        """MACs plus one per biased output: hwnas's ``ops``."""
        return self.macs + self.biased_outputs


def reference_counts(model: nn.Module, *inputs: torch.Tensor) -> Reference:
    """Count ``model(*inputs)`` (eval mode, gradients on so no fused fast path runs)."""
    sdpa = flop_counter.sdpa_flop.__wrapped__  # the formula, not its shape wrapper
    counter = flop_counter.FlopCounterMode(
        display=False, custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: sdpa})
    use = _ParamUse(model)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), counter, use:
            model(*inputs)
    finally:
        model.train(was_training)
    flops = counter.get_total_flops()
    return Reference(macs=flops // 2, biased_outputs=use.biased,
                     params=sum(use.sizes[p] for p in use.used))
