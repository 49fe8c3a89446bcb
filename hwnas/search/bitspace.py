"""The bit-width search space: :class:`PrecisionSpace` (what ``hwnas.wrap(precision=...)``
takes), :class:`QLayer` (a quantised layer's place in a search) and :func:`mixing` (the two
relaxations' weights over the candidates). The search itself is
:class:`hwnas.search.precision.BitSearch`; the formulas are in :mod:`hwnas.search.precision`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hwnas.errors import InvalidTypeError, InvalidValueError

__all__ = ["RELAXATIONS", "SCALES", "PrecisionSpace", "QLayer", "mixing"]

RELAXATIONS = ("softmax", "hard_softmax", "ste")
SCALES = ("target", "lsq", "pow2")


def _bits(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidTypeError(f"`{name}` must be a list of bit widths, but got {value!r}")
    out = tuple(value)
    if not out or not all(isinstance(b, int) and not isinstance(b, bool) for b in out):
        raise InvalidTypeError(f"`{name}` must be a non-empty list of integers, but got "
                               f"{value!r}")
    if 0 in out:
        raise InvalidValueError(f"`{name}` must not contain 0: a channel at 0 bits is a pruned "
                                f"channel, which the L0 channel gate searches; but got {value!r}")
    if not all(2 <= b <= 16 for b in out) or len(set(out)) != len(out):
        raise InvalidValueError(f"`{name}` must be distinct integers in [2, 16], but got "
                                f"{value!r}")
    return tuple(sorted(out))


@dataclass(frozen=True)
class PrecisionSpace:
    """The bit-width search space of ``hwnas.wrap(..., precision=PrecisionSpace(...))``.

    Attributes:
        weight_bits: Candidate weight bits (signed, narrow range, per-channel scales).
        activation_bits: Candidate bits of each conv/linear layer's input.
        per_channel: One weight bit width per output channel instead of per layer.
        scale: ``"lsq"`` (learned scales), ``"pow2"`` (learned power-of-two scales, what
            fixed-point FPGA flows want; the exports are then bit-exact) or ``"target"``
            (the default: the hardware target's ``quant_scales``, ``"pow2"`` on the shipped
            FPGA targets, ``"lsq"`` on ``generic``).
        relaxation: ``"softmax"``, ``"hard_softmax"`` or ``"ste"`` (see
            :mod:`hwnas.search.precision`).
        temperature: Softmax temperature (the softmax relaxations only).
        calibration_batches: Training batches that calibrate the activation ranges when the
            search phase starts (``hwnas.fit`` does it once).

    A single candidate (``weight_bits=(4,), activation_bits=(4,)``) is uniform 4-bit
    quantisation-aware training, with the channel search alone.

    Example:
        >>> PrecisionSpace(weight_bits=[8, 2, 4]).weight_bits  # doctest: +ELLIPSIS
        (2, 4, 8)
        >>> PrecisionSpace(weight_bits=(0, 4))
        Traceback (most recent call last):
        ...
        hwnas.errors.InvalidValueError: `weight_bits` must not contain 0: ...
    """

    weight_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    activation_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    per_channel: bool = False
    scale: str = "target"
    relaxation: str = "softmax"
    temperature: float = 1.0
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_bits", _bits("weight_bits", self.weight_bits))
        object.__setattr__(self, "activation_bits",
                           _bits("activation_bits", self.activation_bits))
        if not isinstance(self.per_channel, bool):
            raise InvalidTypeError(f"`per_channel` must be True or False, but got "
                                   f"{self.per_channel!r}")
        if self.scale not in SCALES:
            raise InvalidValueError(f"`scale` must be one of {SCALES}, but got {self.scale!r}")
        if self.relaxation not in RELAXATIONS:
            raise InvalidValueError(f"`relaxation` must be one of {RELAXATIONS}, but got "
                                    f"{self.relaxation!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise InvalidValueError(f"`temperature` must be a number > 0, but got {t!r}")
        b = self.calibration_batches
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise InvalidValueError(f"`calibration_batches` must be an integer >= 1, but got "
                                    f"{b!r}")

    @property
    def pow2(self) -> bool:
        """Power-of-two scales (``"target"`` must be resolved first: :meth:`for_target`)."""
        return self.scale == "pow2"

    def for_target(self, quant_scales: str) -> PrecisionSpace:
        """This space with ``scale="target"`` replaced by the target's ``quant_scales``."""
        return self if self.scale != "target" else replace(self, scale=quant_scales)


@dataclass(frozen=True)
class QLayer:
    """A quantised layer of a search: its place in ``search.layer_infos`` and the graph,
    its rows of the weight mixing matrix (one, or one per output channel), and whether the
    exported layer has a bias (its own, or that of a BatchNorm folded into it)."""

    k: int
    target: str
    out_channels: int
    row0: int
    rows: int
    bias: bool


def _one_hot(index: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """One-hot rows (``F.one_hot`` checks its indices on the host: a GPU sync)."""
    return (index[:, None] == torch.arange(k, device=index.device)).to(dtype)


def mixing(param: Tensor, values: Tensor, relaxation: str, temperature: float,
           how: str) -> Tensor:
    """Mixing weights over the candidates ``values`` (K,), one row per row of ``param``.

    ``how``: ``"soft"`` (softmax, or the interpolation between the two candidates around a
    continuous bit width), ``"hard"`` (one-hot argmax / nearest), ``"straight_through"``
    (hard values, soft gradient).

    Example:
        >>> v = torch.tensor([2.0, 4.0, 8.0])
        >>> mixing(torch.tensor([[5.0]]), v, "ste", 1.0, "soft").tolist()
        [[0.0, 0.75, 0.25]]
        >>> mixing(torch.tensor([[0.0, 3.0, 1.0]]), v, "softmax", 1.0, "hard").tolist()
        [[0.0, 1.0, 0.0]]
    """
    k = values.shape[0]
    if relaxation != "ste":  # "softmax", "hard_softmax"
        soft = F.softmax(param / temperature, dim=-1)
        hard = _one_hot(param.argmax(-1), k, param.dtype)
    else:
        b = param[:, 0].clamp(values[0], values[-1])
        if k == 1:
            soft = hard = torch.ones_like(param)
        else:
            lo = (torch.searchsorted(values, b.detach(), right=True) - 1).clamp(0, k - 2)
            t = (b - values[lo]) / (values[lo + 1] - values[lo])
            soft = param.new_zeros(param.shape[0], k).scatter(1, lo[:, None], (1 - t)[:, None])
            soft = soft.scatter_add(1, lo[:, None] + 1, t[:, None])
            nearest = (values[None, :] - b.detach()[:, None]).abs().argmin(1)
            hard = _one_hot(nearest, k, param.dtype)
    if how == "soft":
        return soft
    if how == "hard":
        return hard
    return hard + (soft - soft.detach())
