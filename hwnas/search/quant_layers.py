"""The fixed-bit conv / linear layers of an exported precision search.

:func:`quantize_layer` turns a chosen layer of a searched model into :class:`QuantLinear` /
:class:`QuantConv1d` / ``2d`` / ``3d`` at its chosen bits with its learned scales (the
quantisers and formulas are :mod:`hwnas.search.quant`'s). These layers are costed at their
own bits (``bitops``, ``weight_memory``, ``luts``) and exported by :mod:`hwnas.export.qonnx`
and :mod:`hwnas.export.qdq`. Scales stay float32 in any dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas.cost import register
from hwnas.cost.bits import QuantParams, mac_luts_grid
from hwnas.cost.formulas import weighted_ops
from hwnas.cost.luts import fan_in, whole
from hwnas.errors import InvalidTypeError
from hwnas.search.quant import _keep_float32, fake_quant, round_ste, scale_of, theta_of

__all__ = ["QUANT_LAYERS", "QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantLinear",
           "quantizable", "quantize_layer"]

_INT32 = 2.0**31


class _QuantMixin:
    """Fixed bits and learned scales of an exported quantised conv / linear layer."""

    weight: Any
    bias: Any
    w_bits: Tensor
    a_bits: Tensor
    a_signed: Tensor
    w_scale_param: nn.Parameter
    a_scale_param: nn.Parameter
    pow2: bool

    def setup_quant(self, w_bits: Tensor, w_log2: Tensor, a_bits: int, a_log2: Tensor,
                    a_signed: bool, pow2: bool) -> None:
        module: Any = self
        like = self.weight
        module.pow2 = bool(pow2)
        module.register_buffer("w_bits", w_bits.detach().to(like.device, torch.int64).clone())
        module.register_buffer("a_bits", torch.tensor(int(a_bits), device=like.device))
        module.register_buffer("a_signed", torch.tensor(float(a_signed), device=like.device))
        module.w_scale_param = nn.Parameter(theta_of(w_log2).to(like.device, torch.float32))
        module.a_scale_param = nn.Parameter(theta_of(a_log2).to(like.device, torch.float32)
                                            .reshape(()))

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        super()._apply(fn, recurse)  # type: ignore[misc]
        _keep_float32(self)  # type: ignore[arg-type]
        return self

    def _scales(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(s_w (out,), s_a, a_min, a_max)`` as the forward uses them."""
        s_w = scale_of(self.w_scale_param, self.pow2)
        s_a = scale_of(self.a_scale_param, self.pow2)
        a = self.a_bits.float()
        half = torch.exp2(a - 1.0) * self.a_signed
        return s_w, s_a, -half, torch.exp2(a) - 1.0 - half

    def quantized(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The quantised input, weight and bias the layer computes with."""
        s_w, s_a, a_min, a_max = self._scales()
        xq = fake_quant(x.float(), s_a, a_min, a_max).to(x.dtype)
        top = (torch.exp2(self.w_bits.float() - 1.0) - 1.0)
        shape = [-1] + [1] * (self.weight.dim() - 1)
        w = self.weight
        wq = fake_quant(w.float(), s_w.reshape(shape), -top.reshape(shape), top.reshape(shape))
        bq = None
        if self.bias is not None:
            s_b = s_a * s_w
            bq = (torch.clamp(round_ste(self.bias.float() / s_b), -_INT32, _INT32 - 1) * s_b)
            bq = bq.to(w.dtype)
        return xq, wq.to(w.dtype), bq

    def bits(self) -> tuple[Tensor, int]:
        """``(weight bits per output channel, activation bits)``."""
        return self.w_bits.cpu(), int(self.a_bits)

    @torch.no_grad()
    def quant_params(self) -> QuantParams:
        """The integers and scales of this layer (float32, CPU), as its forward uses them."""
        s_w, s_a, a_min, a_max = (t.detach().float().cpu() for t in self._scales())
        top = (torch.exp2(self.w_bits.float().cpu() - 1.0) - 1.0)
        shape = [-1] + [1] * (self.weight.dim() - 1)
        w = self.weight.detach().float().cpu()
        w_int = torch.clamp(torch.round(w / s_w.reshape(shape)), -top.reshape(shape),
                            top.reshape(shape)).to(torch.int64)
        s_b = s_a * s_w
        b_int = None
        if self.bias is not None:
            b = self.bias.detach().float().cpu()
            b_int = torch.clamp(torch.round(b / s_b), -_INT32, _INT32 - 1).to(torch.int64)
        return QuantParams(w_int, s_w, self.w_bits.cpu(), s_a, int(self.a_bits),
                           bool(self.a_signed > 0), b_int, s_b)

    def extra_repr(self) -> str:
        w_bits = self.w_bits
        lo, hi = int(w_bits.min()), int(w_bits.max())
        shown = str(lo) if lo == hi else f"{lo}-{hi}"
        return (f"{super().extra_repr()}, weight_bits={shown}, "  # type: ignore[misc]
                f"activation_bits={int(self.a_bits)}, pow2={self.pow2}")


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` on a quantised input with quantised weights and bias."""

    def forward(self, x: Tensor) -> Tensor:
        xq, wq, bq = self.quantized(x)
        return F.linear(xq, wq, bq)


class QuantConv1d(_QuantMixin, nn.Conv1d):
    """``nn.Conv1d`` on a quantised input with quantised weights and bias."""

    def forward(self, x: Tensor) -> Tensor:
        xq, wq, bq = self.quantized(x)
        return self._conv_forward(xq, wq, bq)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` on a quantised input with quantised weights and bias."""

    def forward(self, x: Tensor) -> Tensor:
        xq, wq, bq = self.quantized(x)
        return self._conv_forward(xq, wq, bq)


class QuantConv3d(_QuantMixin, nn.Conv3d):
    """``nn.Conv3d`` on a quantised input with quantised weights and bias."""

    def forward(self, x: Tensor) -> Tensor:
        xq, wq, bq = self.quantized(x)
        return self._conv_forward(xq, wq, bq)


_QUANT_CLASSES: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d,
                                    nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d}
#: The quantised layer types of an exported precision search.
QUANT_LAYERS = tuple(_QUANT_CLASSES.values())


def quantizable(module: nn.Module) -> bool:
    """Whether :func:`quantize_layer` takes the module (Linear, Conv1d/2d/3d with zero
    padding).

    Example:
        >>> quantizable(nn.Conv2d(1, 2, 3)), quantizable(nn.ConvTranspose2d(1, 2, 3))
        (True, False)
    """
    base = next((c for c in _QUANT_CLASSES if isinstance(module, c)), None)
    return base is not None and getattr(module, "padding_mode", "zeros") == "zeros"


def quantize_layer(layer: nn.Module, w_bits: Tensor, w_log2: Tensor, a_bits: int,
                   a_log2: Tensor, a_signed: bool, pow2: bool) -> nn.Module:
    """A quantised copy of ``layer`` that shares its weight and bias parameters.

    Example:
        >>> q = quantize_layer(nn.Linear(4, 2), torch.tensor([4, 8]), torch.zeros(2), 6,
        ...                    torch.tensor(-3.0), False, pow2=True)
        >>> type(q).__name__, q.bits()[0].tolist(), q.bits()[1]
        ('QuantLinear', [4, 8], 6)
    """
    if not quantizable(layer):
        raise InvalidTypeError(f"`layer` must be an nn.Linear or nn.Conv1d/2d/3d with zero "
                               f"padding, but got {type(layer).__name__}")
    m: Any = layer
    if isinstance(layer, nn.Linear):
        new: Any = QuantLinear(m.in_features, m.out_features, bias=m.bias is not None,
                               device="meta")
    else:
        cls = next(q for c, q in _QUANT_CLASSES.items() if isinstance(layer, c))
        new = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                  m.dilation, m.groups, bias=m.bias is not None, device="meta")
    new.weight, new.bias = m.weight, m.bias
    new.train(layer.training)
    new.setup_quant(w_bits, w_log2, a_bits, a_log2, a_signed, pow2)
    return new


# ----------------------------------------------------------------- costs at own bits
def _own_bits(info: Any, alive: dict[str, Tensor]) -> tuple[Tensor, float, Tensor]:
    """Weight bits per channel, activation bits, and alive out / out channels (1 exactly
    for the layer as it is)."""
    w_bits, a_bits = info.module.bits()
    like = alive["out"]
    return (w_bits.to(like.device, like.dtype), float(a_bits),
            alive["out"] / float(max(len(w_bits), 1)))


def quantized_bitops(info: Any, alive: dict[str, Tensor], target: Any) -> Tensor:
    """MACs x activation bits x each output channel's weight bits."""
    w_bits, a_bits, share = _own_bits(info, alive)
    one = {"in": alive["in"], "out": torch.ones_like(alive["out"])}
    return weighted_ops(info, one, target) * w_bits.sum() * share * a_bits


def quantized_memory(info: Any, alive: dict[str, Tensor], target: Any) -> Tensor:
    """Weight elements x each output channel's weight bits."""
    w_bits, _, share = _own_bits(info, alive)
    return fan_in(info, alive) * w_bits.sum() * share


def quantized_luts(info: Any, alive: dict[str, Tensor], target: Any) -> Tensor:
    """The MAC-layer LUT model at each output channel's own bits."""
    w_bits, a_bits, share = _own_bits(info, alive)
    values = sorted({int(b) for b in w_bits.tolist()})
    counts = torch.stack([(w_bits == b).sum() for b in values]).to(alive["out"])
    grid = mac_luts_grid(fan_in(info, alive), values, [int(a_bits)], target)[..., 0]
    return whole((grid * counts).sum() * share)


for _cls in _QUANT_CLASSES.values():
    register("bitops", _cls, pure=False)(quantized_bitops)
    register("weight_memory", _cls, pure=False)(quantized_memory)
    register("luts", _cls, pure=False)(quantized_luts)

