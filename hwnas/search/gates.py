"""Hard-concrete L0 gates (Louizos et al. 2017, arXiv 1712.01312).

Two flavours share one set of formulas:

- :class:`HardConcreteGate` holds one ``log_alpha`` per channel of a channel group
  (structured pruning). It never fuses with the layer it masks; the caller multiplies.
- :class:`L0` wraps a copy of any module and masks every weight entry through a
  :class:`L0Mask` parametrization (``torch.nn.utils.parametrize``), i.e. unstructured,
  connection-level pruning. Pretrained weights are kept as ``parametrizations.<name>.original``.

Formulas, with stretch limits ``a = LIMIT_A``, ``b = LIMIT_B`` and temperature ``T``:

- sample: ``u ~ U(EPS, 1 - EPS)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / T)``,
  ``z = clamp(s * (b - a) + a, 0, 1)``
- deterministic (eval / export): ``z = clamp(sigmoid(log_alpha) * (b - a) + a, 0, 1)``
- probability of a non-zero gate: ``P(z != 0) = sigmoid(log_alpha - T * log(-a / b))``
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "EPS",
    "LIMIT_A",
    "LIMIT_B",
    "TEMPERATURE",
    "GateSlice",
    "HardConcreteGate",
    "L0",
    "L0Mask",
    "hard_concrete_deterministic",
    "hard_concrete_sample",
    "log_alpha_for",
    "prob_nonzero",
]

LIMIT_A = -0.1
LIMIT_B = 1.1
TEMPERATURE = 2.0 / 3.0
EPS = 1e-6

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
        ``u ~ U(EPS, 1 - EPS)``.
    """
    u = torch.rand(shape, dtype=log_alpha.dtype, device=log_alpha.device)
    noise = torch.logit(u.mul_(1.0 - 2.0 * EPS).add_(EPS))  # log u - log(1 - u), no grad
    # in-place ops only on fresh intermediates whose values backward does not read
    s = torch.sigmoid((log_alpha + noise).div_(TEMPERATURE))
    return torch.clamp(s.mul(LIMIT_B - LIMIT_A).add_(LIMIT_A), 0.0, 1.0)


def hard_concrete_deterministic(log_alpha: Tensor) -> Tensor:
    """The eval/export gate ``clamp(sigmoid(log_alpha) * (b - a) + a, 0, 1)``; 0 means pruned."""
    return torch.clamp(torch.sigmoid(log_alpha) * (LIMIT_B - LIMIT_A) + LIMIT_A, 0.0, 1.0)


def prob_nonzero(log_alpha: Tensor) -> Tensor:
    """``P(z != 0) = sigmoid(log_alpha - T * log(-a / b))``, differentiable in ``log_alpha``."""
    return torch.sigmoid(log_alpha - TEMPERATURE * math.log(-LIMIT_A / LIMIT_B))


def log_alpha_for(values: Tensor) -> Tensor:
    """Logits whose deterministic gate equals ``values`` (each in [0, 1]).

    Values of exactly 0 and 1 map to logits of -10 and +10, whose deterministic gates are
    exactly 0 and 1; values in between invert ``sigmoid(log_alpha) = (v - a) / (b - a)``.

    Raises:
        ValueError: If a value lies outside [0, 1] or is not finite.
    """
    v = values.detach()
    if not torch.is_floating_point(v):
        v = v.to(torch.get_default_dtype())
    if not bool(torch.all((v >= 0) & (v <= 1))):
        bad = v[~((v >= 0) & (v <= 1))].flatten()[:5].tolist()
        raise ValueError(f"gate values must be in [0, 1], but got {bad}")
    q = (v - LIMIT_A) / (LIMIT_B - LIMIT_A)
    out = torch.log(q) - torch.log1p(-q)
    out = torch.where(v == 0, torch.full_like(v, _CLOSED_LOG_ALPHA), out)
    return torch.where(v == 1, torch.full_like(v, _OPEN_LOG_ALPHA), out)


def _check_init(droprate_init: float, init_std: float) -> None:
    if isinstance(droprate_init, bool) or not isinstance(droprate_init, (int, float)):
        raise TypeError(f"`droprate_init` must be a float, but got {droprate_init!r}")
    if not 0.0 < droprate_init < 1.0:
        raise ValueError(f"`droprate_init` must be in (0, 1), but got {droprate_init}")
    if isinstance(init_std, bool) or not isinstance(init_std, (int, float)):
        raise TypeError(f"`init_std` must be a float, but got {init_std!r}")
    if not (init_std >= 0.0 and math.isfinite(init_std)):
        raise ValueError(f"`init_std` must be >= 0 and finite, but got {init_std}")


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
        raise ValueError(
            f"`values` must have shape {tuple(log_alpha.shape)}, but got {tuple(v.shape)}"
        )
    with torch.no_grad():
        log_alpha.copy_(log_alpha_for(v).to(log_alpha.dtype))


# ------------------------------------------------------------------ structured gates


class HardConcreteGate(nn.Module):
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
        droprate_init: float = 0.5,
        per_example: bool = False,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"`n` must be an int, but got {n!r}")
        if n < 1:
            raise ValueError(f"`n` must be >= 1, but got {n}")
        _check_init(droprate_init, init_std)
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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1 or None, but got {batch_size!r}")
        return hard_concrete_sample(self.log_alpha, (batch_size, self.n))

    def deterministic(self) -> Tensor:
        """The eval/export gates, shape ``(n,)``; 0 means pruned."""
        return hard_concrete_deterministic(self.log_alpha)

    def forward(self, batch_size: int | None = None) -> Tensor:
        """Sampled gates in training mode, deterministic gates in eval mode."""
        if self.training:
            return self.sample(batch_size if self.per_example else None)
        return self.deterministic()

    def prob_nonzero(self) -> Tensor:
        """``P(z != 0)`` per gate, shape ``(n,)``, differentiable."""
        return prob_nonzero(self.log_alpha)

    def expected_l0(self) -> Tensor:
        """Expected number of open gates, a differentiable scalar."""
        return self.prob_nonzero().sum()

    def keep_mask(self) -> Tensor:
        """Boolean mask of the channels the deterministic gate keeps."""
        return self.deterministic() > 0

    def set_deterministic_(self, values: Tensor | list[float]) -> None:
        """Sets ``log_alpha`` in place so that ``deterministic()`` returns ``values``.

        Values of exactly 0 and 1 are reproduced exactly; values in between up to float
        rounding.

        Raises:
            ValueError: If ``values`` has the wrong shape or leaves [0, 1].
        """
        _set_log_alpha_(self.log_alpha, values)

    def extra_repr(self) -> str:
        return f"n={self.n}, droprate_init={self.droprate_init}, per_example={self.per_example}"


class GateSlice:
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
            raise ValueError(f"slice [{start}, {stop}) is not inside a gate of {gate.n} entries")
        self.gate, self.start, self.stop = gate, start, stop

    @property
    def n(self) -> int:
        """Number of entries."""
        return self.stop - self.start

    @property
    def log_alpha(self) -> Tensor:
        """The entries' logits (a view of the gate's parameter)."""
        return self.gate.log_alpha[self.start : self.stop]

    def deterministic(self) -> Tensor:
        """The eval/export gates of the entries; 0 means pruned."""
        return hard_concrete_deterministic(self.log_alpha)

    def prob_nonzero(self) -> Tensor:
        """``P(z != 0)`` per entry, differentiable."""
        return prob_nonzero(self.log_alpha)

    def keep_mask(self) -> Tensor:
        """Boolean mask of the entries the deterministic gate keeps."""
        return self.deterministic() > 0

    def set_deterministic_(self, values: Tensor | list[float]) -> None:
        """Sets the entries' logits so that ``deterministic()`` returns ``values``."""
        _set_log_alpha_(self.log_alpha, values)

    def __repr__(self) -> str:
        return f"GateSlice([{self.start}, {self.stop}) of {self.gate.n})"


# ------------------------------------------------------------- connection-level masks


class L0Mask(nn.Module):
    """A parametrization that multiplies a tensor by a hard-concrete mask of its shape.

    Register it with ``torch.nn.utils.parametrize.register_parametrization``; :class:`L0`
    does so for every parameter of a module. The mask is sampled on every evaluation in
    training mode and deterministic in eval mode.

    Args:
        shape: Shape of the tensor to mask.
        droprate_init: Initial drop probability ``p`` (see :class:`HardConcreteGate`).
        init_std: Standard deviation of the initial noise on ``log_alpha``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.nn.utils import parametrize
        >>> lin = nn.Linear(2, 2)
        >>> mask = L0Mask(lin.weight.shape).eval()
        >>> mask.set_deterministic_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        >>> parametrize.register_parametrization(lin, "weight", mask)  # doctest: +ELLIPSIS
        ParametrizedLinear(...)
        >>> bool((lin.weight[0, 1] == 0) & (lin.weight[1, 0] == 0))
        True
    """

    def __init__(
        self,
        shape: tuple[int, ...] | torch.Size,
        droprate_init: float = 0.5,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        _check_init(droprate_init, init_std)
        self.log_alpha = _init_log_alpha(tuple(shape), droprate_init, init_std)

    def mask(self) -> Tensor:
        """The mask this module applies now: sampled in training, deterministic in eval."""
        if self.training:
            return hard_concrete_sample(self.log_alpha, self.log_alpha.shape)
        return hard_concrete_deterministic(self.log_alpha)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask()

    def deterministic(self) -> Tensor:
        """The eval/export mask; 0 means the connection is pruned."""
        return hard_concrete_deterministic(self.log_alpha)

    def prob_nonzero(self) -> Tensor:
        """``P(z != 0)`` per entry, differentiable."""
        return prob_nonzero(self.log_alpha)

    def set_deterministic_(self, values: Tensor | list[float]) -> None:
        """Sets ``log_alpha`` in place so that ``deterministic()`` returns ``values``."""
        _set_log_alpha_(self.log_alpha, values)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.log_alpha.shape)}"


class L0(nn.Module):
    """Connection-level L0 regularisation of a copy of any module (Louizos et al. 2017).

    The module is deep-copied once (the user's module is never changed); every parameter
    of every submodule whose local name is not in ``exclude`` gets an :class:`L0Mask`
    parametrization. The pretrained values stay as
    ``self.module.<path>.parametrizations.<name>.original``.

    Args:
        module: The module to regularise.
        lam: Weight of the expected L0 norm, ``>= 0``.
        weight_decay: Weight of the expected L2 norm of the masked weights, ``>= 0``.
        droprate_init: Initial drop probability of every mask entry.
        exclude: Local parameter names left unmasked (``"bias"`` by default).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = L0(nn.Linear(5, 3), lam=1e-3)
        >>> [name for name, _ in model.masks()]
        ['weight']
        >>> model(torch.randn(2, 5)).shape
        torch.Size([2, 3])
        >>> round(model.count_l0().item(), 1)  # 15 weights, each non-zero with P ~ 0.83
        12.5
        >>> model.regularization().shape
        torch.Size([])
    """

    def __init__(
        self,
        module: nn.Module,
        lam: float,
        weight_decay: float = 0.0,
        droprate_init: float = 0.5,
        exclude: tuple[str, ...] = ("bias",),
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"`module` must be an nn.Module, but got {type(module).__name__}")
        for name, value in (("lam", lam), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"`{name}` must be a float, but got {value!r}")
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"`{name}` must be >= 0 and finite, but got {value}")
        if not isinstance(exclude, tuple) or not all(isinstance(e, str) for e in exclude):
            raise TypeError(f"`exclude` must be a tuple of str, but got {exclude!r}")
        _check_init(droprate_init, 0.01)
        already = [n for n, m in module.named_modules() if parametrize.is_parametrized(m)]
        if already:
            raise ValueError(
                f"`module` already has parametrizations (in {already}); "
                "L0 masks plain parameters only"
            )

        self.lam = float(lam)
        self.weight_decay = float(weight_decay)
        self.exclude = exclude
        self.module = copy.deepcopy(module)

        targets = [
            (sub, pname, param)
            for _, sub in self.module.named_modules()
            for pname, param in sub.named_parameters(recurse=False)
            if pname not in exclude
        ]
        if not targets:
            found = ", ".join(n for n, _ in module.named_parameters()) or "none"
            raise ValueError(
                f"`exclude`={exclude!r} leaves no parameter to mask in "
                f"{type(module).__name__}; parameters found: {found}"
            )
        for sub, pname, param in targets:
            mask = L0Mask(param.shape, droprate_init).to(device=param.device, dtype=param.dtype)
            # Registered in eval mode so that the shape check draws no random numbers.
            parametrize.register_parametrization(sub, pname, mask.eval())
            mask.train(self.module.training)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped module, drawing one mask per parameter per call in training."""
        with parametrize.cached():
            return self.module(*args, **kwargs)

    def masks(self) -> Iterator[tuple[str, L0Mask]]:
        """Yields ``(parameter path, mask)`` for every masked parameter, e.g. ``"0.weight"``."""
        for path, _, mask in self._masked():
            yield path, mask

    def _masked(self) -> Iterator[tuple[str, Tensor, L0Mask]]:
        """Yields ``(path, original weight, mask)`` for every masked parameter."""
        for mod_name, sub in self.module.named_modules():
            if not parametrize.is_parametrized(sub):
                continue
            plists: Any = sub.parametrizations
            for pname, plist in plists.items():
                for p in plist:
                    if isinstance(p, L0Mask):
                        path = f"{mod_name}.{pname}" if mod_name else pname
                        yield path, plist.original, p

    def count_l0(self) -> Tensor:
        """Expected number of non-zero masked weights: ``sum P(z != 0)``, differentiable."""
        return torch.stack([m.prob_nonzero().sum() for _, _, m in self._masked()]).sum()

    def count_l2(self) -> Tensor:
        """Expected squared L2 norm of the masked weights: ``sum P(z != 0) * w**2``."""
        return torch.stack(
            [(m.prob_nonzero() * w.pow(2)).sum() for _, w, m in self._masked()]
        ).sum()

    def expected_l0(self) -> Tensor:
        """Same as :meth:`count_l0` (the :class:`~hwnas.regularizers.protocol.GatedModel`
        protocol, so ``hwnas.regularizers.l0_penalty`` works on an L0 model)."""
        return self.count_l0()

    def gated_weights(self) -> Iterator[tuple[Tensor, Tensor]]:
        """``(original weight, P(z != 0))`` for every masked parameter (same shapes)."""
        for _, w, m in self._masked():
            yield w, m.prob_nonzero()

    def regularization(self) -> Tensor:
        """Louizos' expected L0 + L2 penalty of the masked weights.

        ``R = sum_j P(z_j != 0) * (lam + 0.5 * weight_decay * w_j**2)`` over every entry ``j``
        of every masked parameter, with ``P(z_j != 0) = sigmoid(log_alpha_j - T*log(-a/b))``
        and ``w_j`` the unmasked (original) weight. It equals
        ``lam * count_l0() + 0.5 * weight_decay * count_l2()``. Not divided by the dataset
        size; scale it in the loss as needed.
        """
        return torch.stack(
            [
                (m.prob_nonzero() * (self.lam + 0.5 * self.weight_decay * w.pow(2))).sum()
                for _, w, m in self._masked()
            ]
        ).sum()

    def mask_parameters(self) -> list[nn.Parameter]:
        """The ``log_alpha`` parameters of all masks."""
        return [m.log_alpha for _, _, m in self._masked()]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the wrapped module that is not a mask logit."""
        mask_ids = {id(p) for p in self.mask_parameters()}
        return [p for p in self.parameters() if id(p) not in mask_ids]

    def extra_repr(self) -> str:
        return f"lam={self.lam}, weight_decay={self.weight_decay}, exclude={self.exclude!r}"
