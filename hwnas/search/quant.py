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
and mix the candidates with the search's weights (:mod:`hwnas.search.precision`); the
fixed-bit layers of an exported model are :mod:`hwnas.search.quant_layers`'. Scales stay
float32 in any dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SCALE_RATE", "ActCandidates", "WeightCandidates", "fake_quant", "log2_of",
           "mixed_fake_quant", "mse_log2_scales", "round_ste", "scale_of", "theta_of"]
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
