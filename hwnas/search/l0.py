"""Connection-level L0 regularisation (Louizos et al. 2017) of a copy of any module.

:class:`L0` wraps a copy of a module and masks every weight entry through an
:class:`L0Mask` parametrization (``torch.nn.utils.parametrize``), i.e. unstructured,
connection-level pruning. Pretrained weights are kept as
``parametrizations.<name>.original``. The gate formulas and the gate API are those of
:mod:`hwnas.search.gates`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from hwnas._internal.checks import check_number
from hwnas.errors import InvalidTypeError, InvalidValueError
from hwnas.search.gates import (
    DROPRATE_INIT,
    GateAPI,
    _init_log_alpha,
    check_init,
    hard_concrete_deterministic,
    hard_concrete_sample,
)

__all__ = ["L0", "L0Mask"]


class L0Mask(GateAPI, nn.Module):
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
        droprate_init: float = DROPRATE_INIT,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        check_init(droprate_init, init_std)
        self.log_alpha = _init_log_alpha(tuple(shape), droprate_init, init_std)

    def mask(self) -> Tensor:
        """The mask this module applies now: sampled in training, deterministic in eval."""
        if self.training:
            return hard_concrete_sample(self.log_alpha, self.log_alpha.shape)
        return hard_concrete_deterministic(self.log_alpha)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask()

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
        >>> round(model.count_l0().item(), 1)  # 15 weights, each non-zero with P ~ 0.92
        13.8
        >>> model.regularization().shape
        torch.Size([])
    """

    def __init__(
        self,
        module: nn.Module,
        lam: float,
        weight_decay: float = 0.0,
        droprate_init: float = DROPRATE_INIT,
        exclude: tuple[str, ...] = ("bias",),
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise InvalidTypeError(
                f"`module` must be an nn.Module, but got {type(module).__name__}")
        check_number("lam", lam, low=0.0)
        check_number("weight_decay", weight_decay, low=0.0)
        if not isinstance(exclude, tuple) or not all(isinstance(e, str) for e in exclude):
            raise InvalidTypeError(f"`exclude` must be a tuple of str, but got {exclude!r}")
        check_init(droprate_init)
        already = [n for n, m in module.named_modules() if parametrize.is_parametrized(m)]
        if already:
            raise InvalidValueError(
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
            raise InvalidValueError(
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
        return [cast(nn.Parameter, m.log_alpha) for _, _, m in self._masked()]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the wrapped module that is not a mask logit."""
        mask_ids = {id(p) for p in self.mask_parameters()}
        return [p for p in self.parameters() if id(p) not in mask_ids]

    def extra_repr(self) -> str:
        return f"lam={self.lam}, weight_decay={self.weight_decay}, exclude={self.exclude!r}"
