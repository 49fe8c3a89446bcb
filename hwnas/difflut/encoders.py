"""Input encoders of DiffLUT networks: thermometer codes with fitted thresholds.

Each feature becomes ``num_bits`` bits ``x_f > thresholds[f, j]``; the thresholds are a
registered buffer, so they follow ``.to()`` like any parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hwnas.difflut._checks import check_int
from hwnas.errors import InvalidValueError, ShapeError

__all__ = ["ENCODERS", "GaussianThermometerEncoder", "ThermometerEncoder"]


class ThermometerEncoder(nn.Module):
    """Thermometer code: bit ``j`` of feature ``f`` is ``x_f > thresholds[f, j]``.

    Thresholds are fitted per feature by :meth:`fit`: ``"quantile"`` places them at the
    data quantiles ``j / (num_bits + 1)``, ``"uniform"`` spaces them evenly between the
    feature's minimum and maximum (at ``min + j * (max - min) / (num_bits + 1)``). The output
    is binary in every mode (float 0/1), flattened to (batch, features * num_bits) with the
    bits of one feature adjacent.

    Args:
        num_bits: Thresholds (output bits) per feature.
        method: ``"quantile"`` or ``"uniform"``.

    Example:
        >>> import torch
        >>> enc = ThermometerEncoder(3, method="uniform").fit(torch.tensor([[0.0], [4.0]]))
        >>> enc.thresholds
        tensor([[1., 2., 3.]])
        >>> enc(torch.tensor([[2.5]]))
        tensor([[1., 1., 0.]])
    """

    methods: tuple[str, ...] = ("quantile", "uniform")
    thresholds: Tensor

    def __init__(self, num_bits: int, method: str = "quantile") -> None:
        super().__init__()
        self.num_bits = check_int("num_bits", num_bits, 1)
        if method not in self.methods:
            raise InvalidValueError(f"`method` must be one of {self.methods}, but got {method!r}")
        self.method = method
        self.register_buffer("thresholds", torch.empty(0, num_bits))

    @property
    def in_features(self) -> int:
        """Number of encoded features (0 before :meth:`fit`)."""
        return int(self.thresholds.shape[0])

    @property
    def out_features(self) -> int:
        """Output bits: ``in_features * num_bits``."""
        return self.in_features * self.num_bits

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}, method={self.method!r}, in_features={self.in_features}"

    def _fit_thresholds(self, x: Tensor) -> Tensor:
        levels = torch.arange(1, self.num_bits + 1, dtype=x.dtype, device=x.device)
        levels = levels / (self.num_bits + 1)
        if self.method == "quantile":
            return torch.quantile(x, levels, dim=0).t()
        low, high = x.min(0).values, x.max(0).values
        return low[:, None] + levels[None, :] * (high - low)[:, None]

    def fit(self, x: Tensor) -> ThermometerEncoder:
        """Fit the thresholds on data ``x`` (samples, features...) and return ``self``.

        The thresholds are computed in float32 on ``x``'s device and kept where the
        encoder is (its ``thresholds`` buffer's device and dtype, as ``.to()`` left it),
        so fitting on CUDA data gives the CPU encoder the same values as CPU data.
        """
        x = torch.as_tensor(x).detach().float().flatten(1)
        if x.shape[0] < 1:
            raise InvalidValueError(
                f"`x` must hold at least one sample, but got shape {tuple(x.shape)}"
            )
        old = self.thresholds
        self.thresholds = self._fit_thresholds(x).to(old.device, old.dtype).contiguous()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.in_features == 0:
            raise InvalidValueError(f"{type(self).__name__} is not fitted; call .fit(data) first")
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ShapeError(
                f"{type(self).__name__} was fitted on {self.in_features} features, "
                f"but got inputs of shape {tuple(x.shape)}"
            )
        bits = x.unsqueeze(-1) > self.thresholds.to(x.dtype)
        return bits.to(x.dtype).reshape(x.shape[0], -1)


class GaussianThermometerEncoder(ThermometerEncoder):
    """Thermometer code with thresholds at the quantiles of a per-feature Gaussian fit.

    ``thresholds[f, j] = mean_f + std_f * Phi^-1(j / (num_bits + 1))``: dense near the mean,
    robust to ties in the data (where empirical quantiles coincide). Same output and
    hardware as :class:`ThermometerEncoder`.

    Example:
        >>> import torch
        >>> enc = GaussianThermometerEncoder(3).fit(torch.tensor([[-1.0], [1.0]]))
        >>> [round(v, 3) for v in enc.thresholds[0].tolist()]
        [-0.674, 0.0, 0.674]
    """

    methods = ("gaussian",)

    def __init__(self, num_bits: int) -> None:
        super().__init__(num_bits, method="gaussian")

    def _fit_thresholds(self, x: Tensor) -> Tensor:
        levels = torch.arange(1, self.num_bits + 1, dtype=torch.float64) / (self.num_bits + 1)
        z = torch.special.ndtri(levels).to(x.device, x.dtype)  # float64 on the CPU: one copy
        mean = x.mean(0)
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(mean)
        return mean[:, None] + std[:, None] * z[None, :]


#: The encoder types a LUT network may start with.
ENCODERS = (ThermometerEncoder,)
