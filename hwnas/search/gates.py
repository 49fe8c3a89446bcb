"""Hard-concrete L0 gates (Louizos et al. 2017, arXiv 1712.01312): formulas and one API.

- :class:`HardConcreteGate` holds one ``log_alpha`` per channel of a channel group
  (structured pruning). It never fuses with the layer it masks; the caller multiplies.
- :class:`GateSlice` is a view of some of its entries (one channel group of a search).
- :class:`~hwnas.search.l0.L0Mask` (in :mod:`hwnas.search.l0`) masks every entry of a
  weight (connection-level pruning).

All three read and write their gates through one API, :class:`GateAPI`
(``deterministic``, ``prob_nonzero``, ``expected_l0``, ``keep_mask``,
``set_deterministic_``), written once here.

Formulas, with stretch limits ``a = LIMIT_A``, ``b = LIMIT_B`` and temperature ``T``:

- sample: ``u ~ U(EPS, 1 - EPS)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / T)``,
  ``z = clamp(s * (b - a) + a, 0, 1)``
- deterministic (eval / export): ``z = clamp(sigmoid(log_alpha) * (b - a) + a, 0, 1)``
- probability of a non-zero gate: ``P(z != 0) = sigmoid(log_alpha - T * log(-a / b))``
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas._internal.checks import check_int, check_number
from hwnas.errors import InvalidValueError

__all__ = [
    "DROPRATE_INIT",
    "EPS",
    "KEEP_THRESHOLD",
    "LIMIT_A",
    "LIMIT_B",
    "TEMPERATURE",
    "GateAPI",
    "GateSlice",
    "HardConcreteGate",
    "check_init",
    "hard_concrete_deterministic",
    "hard_concrete_sample",
    "log_alpha_for",
    "prob_nonzero",
]

LIMIT_A = -0.1
LIMIT_B = 1.1
TEMPERATURE = 2.0 / 3.0
EPS = 1e-6
#: Initial probability that a gate is closed, for every gate type and :func:`hwnas.wrap`:
#: at 0.3 the gates start at P(open) = 0.7 (deterministic value 0.79), where they still
#: move quickly; values near 0 start at the full model but saturate the gates.
DROPRATE_INIT = 0.3

# ``log_alpha`` used for a gate that must be exactly closed (0) or open (1) in eval mode:
# clamp(sigmoid(-+10) * 1.2 - 0.1, 0, 1) is exactly 0 / 1.
_CLOSED_LOG_ALPHA = -10.0
_OPEN_LOG_ALPHA = 10.0


# --------------------------------------------------------------------------- formulas


def hard_concrete_sample(log_alpha: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Draws hard-concrete gates ``z`` in [0, 1], differentiable in ``log_alpha``.

    Args:
        log_alpha: Gate logits; broadcast against ``shape``.
        shape: Shape of the sample, e.g. ``log_alpha.shape`` or ``(batch, n)``.

    Returns:
        ``clamp(sigmoid((log u - log(1 - u) + log_alpha) / T) * (b - a) + a, 0, 1)`` with
        ``u ~ U(0, 1)`` clamped to ``[EPS, 1 - EPS]``.
    """
    u = torch.rand(shape, dtype=log_alpha.dtype, device=log_alpha.device)
    noise = torch.logit(u, EPS)  # log u - log(1 - u), u clamped to [EPS, 1 - EPS]; no grad
    # in-place ops only on fresh intermediates whose values backward does not read; few
    # operations (a launch-bound GPU pays per kernel): hardtanh's backward is one kernel
    s = torch.sigmoid((log_alpha + noise).div_(TEMPERATURE))
    return F.hardtanh(s.mul(LIMIT_B - LIMIT_A).add_(LIMIT_A), 0.0, 1.0)


def hard_concrete_deterministic(log_alpha: Tensor) -> Tensor:
    """The eval/export gate ``clamp(sigmoid(log_alpha) * (b - a) + a, 0, 1)``; 0 means pruned."""
    return torch.clamp(torch.sigmoid(log_alpha) * (LIMIT_B - LIMIT_A) + LIMIT_A, 0.0, 1.0)


#: ``log_alpha`` above which the deterministic gate is > 0 (the channel is kept):
#: ``sigmoid(log_alpha) * (b - a) + a > 0``, i.e. ``log_alpha > log(-a / b)``.
KEEP_THRESHOLD = math.log(-LIMIT_A / LIMIT_B)


def prob_nonzero(log_alpha: Tensor) -> Tensor:
    """``P(z != 0) = sigmoid(log_alpha - T * log(-a / b))``, differentiable in ``log_alpha``."""
    return torch.sigmoid(log_alpha - TEMPERATURE * math.log(-LIMIT_A / LIMIT_B))


def log_alpha_for(values: Tensor) -> Tensor:
    """Logits whose deterministic gate equals ``values`` (each in [0, 1]).

    Values of exactly 0 and 1 map to logits of -10 and +10, whose deterministic gates are
    exactly 0 and 1; values in between invert ``sigmoid(log_alpha) = (v - a) / (b - a)``.

    Raises:
        InvalidValueError: If a value lies outside [0, 1] or is not finite.
    """
    v = values.detach()
    if not torch.is_floating_point(v):
        v = v.to(torch.get_default_dtype())
    if not bool(torch.all((v >= 0) & (v <= 1))):
        bad = v[~((v >= 0) & (v <= 1))].flatten()[:5].tolist()
        raise InvalidValueError(f"gate values must be in [0, 1], but got {bad}")
    q = (v - LIMIT_A) / (LIMIT_B - LIMIT_A)
    out = torch.log(q) - torch.log1p(-q)
    out = torch.where(v == 0, torch.full_like(v, _CLOSED_LOG_ALPHA), out)
    return torch.where(v == 1, torch.full_like(v, _OPEN_LOG_ALPHA), out)


def check_init(droprate_init: float, init_std: float = 0.01) -> None:
    """The initial drop rate is in (0, 1) and the noise on ``log_alpha`` finite and >= 0."""
    check_number("droprate_init", droprate_init, low=0.0, high=1.0, inclusive=False)
    check_number("init_std", init_std, low=0.0)


def _init_log_alpha(
    shape: tuple[int, ...] | torch.Size, droprate_init: float, init_std: float
) -> nn.Parameter:
    mean = math.log(1.0 - droprate_init) - math.log(droprate_init)
    data = torch.full(tuple(shape), mean)
    if init_std > 0:
        data = data + init_std * torch.randn(tuple(shape))
    return nn.Parameter(data)


def _set_log_alpha_(log_alpha: Tensor, values: Tensor | list[float]) -> None:
    v = torch.as_tensor(values, device=log_alpha.device)
    if v.shape != log_alpha.shape:
        raise InvalidValueError(
            f"`values` must have shape {tuple(log_alpha.shape)}, but got {tuple(v.shape)}"
        )
    with torch.no_grad():
        log_alpha.copy_(log_alpha_for(v).to(log_alpha.dtype))


# ------------------------------------------------------------------ structured gates


class GateAPI:
    """What every gate answers, from its ``log_alpha`` (a parameter or a view of one).

    Example:
        >>> import torch
        >>> gate = HardConcreteGate(3)
        >>> gate.set_deterministic_(torch.tensor([0.0, 0.5, 1.0]))
        >>> gate.keep_mask().tolist(), round(float(gate.expected_l0()), 3)
        ([False, True, True], 1.832)
    """

    log_alpha: Tensor

    def deterministic(self) -> Tensor:
        """The eval/export gates; 0 means pruned."""
        return hard_concrete_deterministic(self.log_alpha)

    def prob_nonzero(self) -> Tensor:
        """``P(z != 0)`` per entry, differentiable."""
        return prob_nonzero(self.log_alpha)

    def expected_l0(self) -> Tensor:
        """Expected number of open gates, a differentiable scalar."""
        return self.prob_nonzero().sum()

    def keep_mask(self) -> Tensor:
        """Boolean mask of the entries the deterministic gate keeps."""
        return self.deterministic() > 0

    def set_deterministic_(self, values: Tensor | list[float]) -> None:
        """Sets ``log_alpha`` in place so that ``deterministic()`` returns ``values``.

        Values of exactly 0 and 1 are reproduced exactly; values in between up to float
        rounding.

        Raises:
            InvalidValueError: If ``values`` has the wrong shape or leaves [0, 1].
        """
        _set_log_alpha_(self.log_alpha, values)


class HardConcreteGate(GateAPI, nn.Module):
    """One hard-concrete L0 gate per channel of a channel group.

    In training mode ``forward`` draws a stochastic gate; in eval mode it returns the
    deterministic gate, where 0 means the channel is pruned.

    Args:
        n: Number of gates (channels in the group), at least 1.
        droprate_init: Initial drop probability ``p``; ``log_alpha`` starts at
            ``log(1 - p) - log(p)`` plus Gaussian noise.
        per_example: Draw an independent gate per example when ``forward`` gets a batch size.
        init_std: Standard deviation of the initial noise on ``log_alpha``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> gate = HardConcreteGate(4, droprate_init=0.2)
        >>> gate().shape
        torch.Size([4])
        >>> gate.set_deterministic_(torch.tensor([0.0, 0.5, 1.0, 1.0]))
        >>> [round(v, 4) for v in gate.eval()().tolist()]
        [0.0, 0.5, 1.0, 1.0]
        >>> gate.keep_mask().tolist()
        [False, True, True, True]
    """

    def __init__(
        self,
        n: int,
        droprate_init: float = DROPRATE_INIT,
        per_example: bool = False,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        check_int("n", n, 1)
        check_init(droprate_init, init_std)
        self.n = n
        self.droprate_init = float(droprate_init)
        self.per_example = bool(per_example)
        self.log_alpha = _init_log_alpha((n,), droprate_init, init_std)

    def sample(self, batch_size: int | None = None) -> Tensor:
        """Draws stochastic gates: shape ``(n,)``, or ``(batch_size, n)`` when given.

        ``forward`` passes ``batch_size`` only for a ``per_example`` gate.
        """
        if batch_size is None:
            return hard_concrete_sample(self.log_alpha, (self.n,))
        check_int("batch_size", batch_size, 1)
        return hard_concrete_sample(self.log_alpha, (batch_size, self.n))

    def forward(self, batch_size: int | None = None) -> Tensor:
        """Sampled gates in training mode, deterministic gates in eval mode."""
        if self.training:
            return self.sample(batch_size if self.per_example else None)
        return self.deterministic()

    def extra_repr(self) -> str:
        return f"n={self.n}, droprate_init={self.droprate_init}, per_example={self.per_example}"


class GateSlice(GateAPI):
    """A view of entries ``[start, stop)`` of a :class:`HardConcreteGate` (one channel group).

    It reads and writes the gate's own ``log_alpha``: nothing is copied.

    Example:
        >>> import torch
        >>> gate = HardConcreteGate(6)
        >>> part = GateSlice(gate, 2, 4)
        >>> part.set_deterministic_([0.0, 1.0])
        >>> gate.keep_mask().tolist()[2:4], part.n
        ([False, True], 2)
    """

    def __init__(self, gate: HardConcreteGate, start: int, stop: int) -> None:
        if not 0 <= start < stop <= gate.n:
            raise InvalidValueError(
                f"slice [{start}, {stop}) is not inside a gate of {gate.n} entries")
        self.gate, self.start, self.stop = gate, start, stop

    @property
    def n(self) -> int:
        """Number of entries."""
        return self.stop - self.start

    @property
    def log_alpha(self) -> Tensor:  # type: ignore[override]
        """The entries' logits (a view of the gate's parameter)."""
        return self.gate.log_alpha[self.start : self.stop]

    def __repr__(self) -> str:
        return f"GateSlice([{self.start}, {self.stop}) of {self.gate.n})"
