"""Fake quantisation with learned scales: the quantisers of a precision search and the
quantised conv / linear layers of its exported model.

Formulas (``s`` a scale, ``[q_min, q_max]`` the integer range):

- ``Q(x) = s * clamp(round(x / s), q_min, q_max)``, rounding half to even (``torch.round``,
  ONNX ``QuantizeLinear`` and QONNX ``ROUND`` agree); ``round`` passes the gradient
  straight through, so ``dQ/ds`` is LSQ's (Esser et al. 2020, arXiv 1902.08153):
  ``round(x/s) - x/s`` inside the range, ``q_min`` / ``q_max`` outside.
- Scales are learned in the log domain, ``s = 2^(SCALE_RATE * theta)``; with ``pow2`` the
  forward uses ``2^round(SCALE_RATE * theta)`` (straight through), a power-of-two scale as
  fixed-point FPGA flows want. ``SCALE_RATE`` sets how fast Adam moves a scale: at a
  learning rate of 1e-3 about 0.6% per step (LSQ scales its step size's gradient for the
  same reason; Adam ignores a gradient's scale, not a parameter's).
- Weights: signed, narrow range ``[-(2^(W-1) - 1), 2^(W-1) - 1]``, one scale per output
  channel. Activations (a layer's input): unsigned ``[0, 2^A - 1]``, or signed
  ``[-2^(A-1), 2^(A-1) - 1]`` when calibration saw negative values; one scale per tensor.
- Bias: int32 at scale ``s_a * s_w`` (integer inference, Jacob et al. 2018).

:class:`WeightCandidates` / :class:`ActCandidates` hold one scale per candidate bit width
and mix the candidates with the search's weights (:mod:`hwnas.search.precision`);
:class:`QuantLinear` / :class:`QuantConv1d` / ``2d`` / ``3d`` are the fixed-bit layers of an
exported model (:func:`quantize_layer`), costed at their own bits and exported by
:mod:`hwnas.export.qonnx` and :mod:`hwnas.export.qdq`. Scales stay float32 in any dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas.cost import register
from hwnas.cost.bits import QuantParams, mac_luts_grid
from hwnas.cost.formulas import weighted_ops
from hwnas.cost.luts import fan_in, whole
from hwnas.errors import InvalidTypeError

__all__ = ["QUANT_LAYERS", "SCALE_RATE", "ActCandidates", "QuantConv1d", "QuantConv2d",
           "QuantConv3d", "QuantLinear", "WeightCandidates", "fake_quant", "log2_of",
           "mixed_fake_quant", "mse_log2_scales", "quantizable", "quantize_layer", "round_ste",
           "scale_of", "theta_of"]

_INT32 = 2.0**31
#: ``log2(scale) = SCALE_RATE * parameter`` (see the module docstring).
SCALE_RATE = 8.0


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` in the forward, the identity's gradient in the backward.

    Example:
        >>> x = torch.tensor([0.4, 1.5, 2.5], requires_grad=True)
        >>> y = round_ste(x); y.sum().backward()
        >>> y.tolist(), x.grad.tolist()
        ([0.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    """
    return x + (torch.round(x) - x).detach()


def scale_of(theta: Tensor, pow2: bool) -> Tensor:
    """The scale of a scale parameter: ``2^(SCALE_RATE * theta)``, or
    ``2^round(SCALE_RATE * theta)`` (straight through) with ``pow2``.

    Example:
        >>> theta = theta_of(torch.tensor([-2.3]))
        >>> scale_of(theta, pow2=True).tolist(), round(float(scale_of(theta, False)), 4)
        ([0.25], 0.2031)
    """
    log2 = theta * SCALE_RATE
    return torch.exp2(round_ste(log2) if pow2 else log2)


def log2_of(theta: Tensor) -> Tensor:
    """``log2`` of the (unrounded) scale of a scale parameter."""
    return theta.detach() * SCALE_RATE


def theta_of(log2_scale: Tensor) -> Tensor:
    """The scale parameter of a scale ``2^log2_scale``."""
    return log2_scale.detach() / SCALE_RATE


class _MixedQuant(torch.autograd.Function):
    """``sum_k p_k * s_k * clamp(round(x / s_k), lo_k, hi_k)`` with LSQ's gradients (the
    autograd of :func:`fake_quant` per candidate), the K candidates as one ``(K, N)``
    matrix: the backward is three weighted sums over the saved codes (elementwise products
    and sums, which autocast leaves in float32, not matrix products, which it would cast)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, lo: Tensor, hi: Tensor,
                p: Tensor) -> Tensor:
        flat = x.reshape(1, -1)
        raw = torch.round(flat / scale[:, None])                              # (K, N)
        inside = (raw >= lo[:, None]) & (raw <= hi[:, None])
        codes = torch.clamp(raw, lo[:, None], hi[:, None])
        ctx.save_for_backward(x, scale, p, codes, inside)
        return (codes * (p * scale)[:, None]).sum(0).reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, scale, p, codes, inside = ctx.saved_tensors
        flat_g = g.reshape(-1)
        mask = inside.to(g.dtype)
        g_codes = (codes * flat_g).sum(1)                                       # (K,)
        g_inside_x = (mask * (flat_g * x.reshape(-1))).sum(1)                   # (K,)
        gx = (flat_g * (mask * p[:, None]).sum(0)).reshape(x.shape)
        return gx, p * (g_codes - g_inside_x / scale), None, None, scale * g_codes


def mixed_fake_quant(x: Tensor, scale: Tensor, lo: Tensor, hi: Tensor, p: Tensor) -> Tensor:
    """``sum_k p[k] * fake_quant(x, scale[k], lo[k], hi[k])`` (per-tensor scales (K,)),
    in one autograd node: the activations of a precision search.

    Example:
        >>> x = torch.tensor([0.3, 0.9])
        >>> one = torch.tensor([0.0, 1.0])
        >>> mixed_fake_quant(x, torch.tensor([0.5, 0.25]), torch.zeros(2),
        ...                  torch.tensor([1.0, 3.0]), one).tolist()
        [0.25, 0.75]
    """
    return _MixedQuant.apply(x, scale, lo, hi, p)


def fake_quant(x: Tensor, scale: Tensor, q_min: Tensor, q_max: Tensor) -> Tensor:
    """``scale * clamp(round(x / scale), q_min, q_max)`` with LSQ's gradients.

    Example:
        >>> lo, hi = torch.tensor(-3.0), torch.tensor(3.0)
        >>> fake_quant(torch.tensor([0.3, -2.0, 0.74]), torch.tensor(0.25), lo, hi).tolist()
        [0.25, -0.75, 0.75]
    """
    return torch.clamp(round_ste(x / scale), q_min, q_max) * scale


def _keep_float32(module: nn.Module) -> None:
    for p in module.parameters(recurse=False):
        if p.dtype != torch.float32:
            p.data = p.data.float()
            if p.grad is not None:
                p.grad = p.grad.float()


def mse_log2_scales(x: Tensor, q_min: Tensor, q_max: Tensor, pow2: bool,
                    ratios: int = 24) -> Tensor:
    """Per row of ``x`` (R, n) and candidate range (K,), the ``log2`` scale whose
    quantisation error is smallest among clip ranges ``r * max|x|``, r in [0.1, 1]:
    ``(R, K)``. Power-of-two scales with ``pow2``.

    Example:
        >>> x = torch.tensor([[1.0, -1.0, 0.9, 0.0]])
        >>> mse_log2_scales(x, torch.tensor([-1.0]), torch.tensor([1.0]), pow2=True).tolist()
        [[0.0]]
    """
    x = x.detach().float()
    top = torch.maximum(q_max.abs(), q_min.abs()).float()
    peak = x.abs().amax(1).clamp(min=1e-8)
    grid = torch.linspace(0.1, 1.0, ratios, device=x.device)
    scale = peak[:, None, None] * grid / top[None, :, None]              # (R, K, G)
    if pow2:
        scale = torch.exp2(torch.round(torch.log2(scale)))
    rows = max(1, int(2**24 // max(1, x.shape[1] * scale.shape[1] * ratios)))
    best = []
    for lo in range(0, x.shape[0], rows):
        s, v = scale[lo:lo + rows, :, :, None], x[lo:lo + rows, None, None, :]
        q = torch.clamp(torch.round(v / s), q_min[:, None, None], q_max[:, None, None]) * s
        error = (q - v).square().mean(-1)                                 # (r, K, G)
        best.append(torch.gather(s[..., 0], 2, error.argmin(2, keepdim=True))[..., 0])
    return torch.log2(torch.cat(best))


# ----------------------------------------------------------------- search-time quantisers
class WeightCandidates(nn.Module):
    """Per-output-channel weight quantisers at every candidate bit width, mixed.

    ``forward(w, p)`` returns ``sum_k p[..., k] * Q_k(w)``; ``p`` is ``(1, K)`` (one mix
    for the layer) or ``(out, K)`` (one per output channel).

    Args:
        out_channels: Output channels (rows of the weight).
        bits: Candidate weight bits (each >= 2).
        pow2: Power-of-two scales.
    """

    q_max: Tensor

    def __init__(self, out_channels: int, bits: Sequence[int], pow2: bool) -> None:
        super().__init__()
        self.pow2 = pow2
        self.register_buffer("q_max", torch.tensor([2.0 ** (b - 1) - 1 for b in bits]))
        self.scale_param = nn.Parameter(theta_of(torch.full((out_channels, len(bits)), -4.0)))

    def _apply(self, fn: Any, recurse: bool = True) -> WeightCandidates:
        super()._apply(fn, recurse)
        _keep_float32(self)
        return self

    def forward(self, w: Tensor, p: Tensor) -> Tensor:
        flat = w.float().flatten(1)[:, None, :]                          # (out, 1, n)
        s = scale_of(self.scale_param, self.pow2)[..., None]             # (out, K, 1)
        top = self.q_max[:, None]
        q = fake_quant(flat, s, -top, top)                                # (out, K, n)
        return (q * p.to(q.dtype)[..., None]).sum(1).reshape(w.shape).to(w.dtype)

    @torch.no_grad()
    def calibrate_(self, w: Tensor) -> None:
        """Scales of least quantisation error for ``w`` (per channel and candidate)."""
        q_max = self.q_max.to(w.device)
        log2 = mse_log2_scales(w.flatten(1), -q_max, q_max, self.pow2)
        self.scale_param.copy_(theta_of(log2))


class ActCandidates(nn.Module):
    """A per-tensor activation quantiser at every candidate bit width, mixed by ``p`` (K,).

    Unsigned until :meth:`calibrate_` sees negative values (``signed`` is a 0/1 buffer, so
    the forward reads no flag back to the host).
    """

    bits: Tensor
    signed: Tensor

    def __init__(self, bits: Sequence[int], pow2: bool) -> None:
        super().__init__()
        self.pow2 = pow2
        self.register_buffer("bits", torch.tensor([float(b) for b in bits]))
        self.register_buffer("signed", torch.zeros(()))
        self.scale_param = nn.Parameter(theta_of(torch.full((len(bits),), -4.0)))

    def _apply(self, fn: Any, recurse: bool = True) -> ActCandidates:
        super()._apply(fn, recurse)
        _keep_float32(self)
        return self

    def ranges(self) -> tuple[Tensor, Tensor]:
        """``(q_min, q_max)`` per candidate, from ``signed``."""
        half = torch.exp2(self.bits - 1.0)
        return -self.signed * half, torch.exp2(self.bits) - 1.0 - self.signed * half

    def forward(self, x: Tensor, p: Tensor) -> Tensor:
        q_min, q_max = self.ranges()
        scale = scale_of(self.scale_param, self.pow2)
        return mixed_fake_quant(x.float(), scale, q_min, q_max, p.float()).to(x.dtype)

    @torch.no_grad()
    def calibrate_(self, sample: Tensor) -> None:
        """Signedness and scales of least quantisation error on ``sample`` (values)."""
        self.signed.fill_(float(bool((sample < 0).any())))
        q_min, q_max = self.ranges()
        scales = mse_log2_scales(sample.flatten()[None], q_min, q_max, self.pow2)
        self.scale_param.copy_(theta_of(scales[0]))


# ----------------------------------------------------------------- exported layers
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

