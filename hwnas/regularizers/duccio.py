"""DUCCIO: cost constraints as hinge penalties with a warm-up of their strengths.

The method is arXiv 2310.07217 as implemented in PLiNIO. For each constrained cost
``i`` with target ``T_i``:

- Eq. 13, once, at the first call: ``lambda_i = max(0, L_task / (C_i(theta_0) - T_i))``,
  or the user's ``final_strengths``.
- Eq. 14: ``lambda_i(e) = min(lambda_i / 100 + e * 0.99 * lambda_i / (E / 2), lambda_i)``,
  so the strength grows linearly from 1% to 100% over the first half of the search.
- The term: ``sum_i lambda_i(e) * max(0, C_i(theta) - T_i)``.

Example:
    >>> import torch
    >>> from hwnas.regularizers import DUCCIO
    >>> class Fake:
    ...     cost_names = ("params",)
    ...     def cost(self, name):
    ...         return torch.tensor(1000.0)
    >>> reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    >>> reg(Fake())   # 0.004 * (1000 - 500)
    tensor(2.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.distributed as dist

from hwnas.errors import InvalidTypeError, InvalidValueError, NotReadyError
from hwnas.regularizers.base import as_real, check_cost_names, check_nonnegative
from hwnas.regularizers.protocol import BatchedCostModel
from hwnas.regularizers.registry import register

__all__ = ["DUCCIO", "MIN_GAP_FRACTION"]

#: Floor of the Eq. 13 denominator as a fraction of the target (see :class:`DUCCIO`).
MIN_GAP_FRACTION = 0.01


def _check_epochs(epoch: int | None, n_epochs: int | None) -> None:
    """ValueError unless both are None or ``0 <= epoch`` and ``n_epochs >= 1``."""
    if epoch is None and n_epochs is None:
        return
    if epoch is None or n_epochs is None:
        raise InvalidValueError(
            f"`epoch` and `n_epochs` must both be given or both be None, "
            f"but got epoch={epoch!r}, n_epochs={n_epochs!r}"
        )
    if n_epochs < 1:
        raise InvalidValueError(f"`n_epochs` must be >= 1, but got {n_epochs}")
    if epoch < 0:
        raise InvalidValueError(f"`epoch` must be >= 0, but got {epoch}")


def _schedule(strength: float, epoch: int | None, n_epochs: int | None) -> float:
    """Eq. 14: the strength at ``epoch`` of ``n_epochs``; the full strength without epochs."""
    if epoch is None or n_epochs is None:
        return strength
    ramp = strength / 100 + epoch * 0.99 * strength / (n_epochs / 2)
    return min(ramp, strength)


def _agree_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every rank under torch.distributed; ``values`` otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(buf, src=0)
    return [float(v) for v in buf.tolist()]


@register("duccio")
class DUCCIO:
    """Hinge penalties that push each cost under its target, with warmed-up strengths.

    The strength ``lambda_i`` of each cost is fixed once, at the first call. Either the
    user gives it (``final_strengths``), or it is set from the task loss so that the
    initial constraint violation weighs as much as the task loss (Eq. 13)::

        lambda_i = L_task / max(C_i(theta_0) - T_i, MIN_GAP_FRACTION * T_i)

    The floor ``MIN_GAP_FRACTION * T_i`` (1% of the target) replaces the paper's
    ``max(0, .)``. Without it a cost that already meets its target at the first call
    (``C_i(theta_0) <= T_i``) would divide by zero or get a zero or negative strength,
    and the constraint would then be unenforced for the rest of the search, although it
    can become active later as the weights move. With the floor such a cost gets a finite
    strength of the right scale: an overshoot of 1% of the target costs as much as the
    task loss. When the cost is above the target by more than 1% the formula is exactly
    Eq. 13.

    Under ``torch.distributed`` the strengths derived from the task loss are broadcast
    from rank 0, so every rank uses the same ones.

    During the search the strength follows Eq. 14: 1% of ``lambda_i`` at epoch 0, growing
    linearly to ``lambda_i`` at epoch ``n_epochs / 2``, then constant. The term is
    ``sum_i lambda_i(epoch) * max(0, C_i(theta) - T_i)``.

    Args:
        targets: the target of each constrained cost, by cost name; each > 0.
        task_loss: the task loss at the start of the search, used by Eq. 13.
        final_strengths: ``lambda_i`` by cost name, >= 0, with the same names as
            ``targets``. Give exactly one of ``task_loss`` and ``final_strengths``.

    Attributes:
        targets: the targets, by cost name.
        strengths: the final strengths ``lambda_i`` by cost name after the first call;
            None before it.

    Example:
        >>> import torch
        >>> from hwnas.regularizers import DUCCIO
        >>> class Fake:
        ...     cost_names = ("params", "ops")
        ...     def cost(self, name):
        ...         return torch.tensor({"params": 1000.0, "ops": 10.0}[name])
        >>> reg = DUCCIO({"params": 500.0, "ops": 100.0}, task_loss=2.0)
        >>> reg(Fake(), epoch=0, n_epochs=20)   # params: 0.004 / 100 * 500; ops: met
        tensor(0.0200)
        >>> reg.strengths
        {'params': 0.004, 'ops': 2.0}
        >>> reg.current_strengths(epoch=5, n_epochs=20)["params"]
        0.00202
    """

    def __init__(
        self,
        targets: Mapping[str, float],
        task_loss: float | None = None,
        final_strengths: Mapping[str, float] | None = None,
    ) -> None:
        if not isinstance(targets, Mapping) or not targets:
            raise InvalidValueError(f"`targets` must be a non-empty mapping, but got {targets!r}")
        self.targets: dict[str, float] = {}
        for name, target in targets.items():
            if not isinstance(name, str):
                raise InvalidTypeError(f"`targets` keys must be cost names (str), but got {name!r}")
            value = as_real(f"targets[{name!r}]", target)
            if value <= 0:
                raise InvalidValueError(f"target for {name!r} must be > 0, but got {value:g}")
            self.targets[name] = value

        if (task_loss is None) == (final_strengths is None):
            got = "neither" if task_loss is None else "both"
            raise InvalidValueError(
                f"exactly one of `task_loss` and `final_strengths` must be given, but got {got}"
            )
        self.task_loss = None if task_loss is None else check_nonnegative("task_loss", task_loss)
        self.final_strengths = None
        if final_strengths is not None:
            self.final_strengths = self._check_strengths("final_strengths", final_strengths)
        self.strengths: dict[str, float] | None = None
        self._cached: tuple[Any, torch.Tensor, torch.Tensor] | None = None

    def _check_strengths(self, what: str, strengths: Mapping[str, float]) -> dict[str, float]:
        if not isinstance(strengths, Mapping) or set(strengths) != set(self.targets):
            got = ", ".join(map(str, strengths)) if isinstance(strengths, Mapping) else strengths
            raise InvalidValueError(
                f"`{what}` keys must equal the `targets` keys ({', '.join(self.targets)}), "
                f"but got {got}"
            )
        return {n: check_nonnegative(f"{what}[{n!r}]", strengths[n]) for n in self.targets}

    def _initial_strengths(self, model: Any) -> dict[str, float]:
        """Eq. 13 with the denominator floored at ``MIN_GAP_FRACTION * T_i``."""
        if self.final_strengths is not None:
            return dict(self.final_strengths)
        task_loss = cast(float, self.task_loss)  # __init__ guarantees one of the two
        lambdas: list[float] = []
        device = torch.device("cpu")
        with torch.no_grad():
            for name, target in self.targets.items():
                c0 = model.cost(name)
                device = c0.device
                gap = max(float(c0) - target, MIN_GAP_FRACTION * target)
                lambdas.append(task_loss / gap)
        lambdas = _agree_across_ranks(lambdas, device)
        return dict(zip(self.targets, lambdas, strict=True))

    def __call__(
        self, model: Any, epoch: int | None = None, n_epochs: int | None = None
    ) -> torch.Tensor:
        """The DUCCIO term at ``epoch`` of ``n_epochs`` (full strengths if both are None)."""
        check_cost_names(model, self.targets)
        _check_epochs(epoch, n_epochs)
        if self.strengths is None:
            self.strengths = self._initial_strengths(model)
        current = self.current_strengths(epoch, n_epochs)
        names = tuple(self.targets)
        if isinstance(model, BatchedCostModel):  # every cost in one evaluation
            costs = model.costs_of(names)
        else:
            costs = torch.stack([torch.as_tensor(model.cost(n)) for n in names])
        strengths, targets = self._constants(names, current, costs)
        return torch.dot(strengths, torch.relu(costs - targets))

    def _constants(self, names: tuple[str, ...], current: Mapping[str, float],
                   costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The strengths and targets as tensors, made again only when a value changes (the
        strengths change once per epoch; building them every step costs two host copies)."""
        values = (tuple(current[n] for n in names), tuple(self.targets[n] for n in names))
        key = (values, names, costs.dtype, costs.device)  # `targets` is a public, mutable dict
        if self._cached is None or self._cached[0] != key:
            strengths, targets = (torch.tensor(v, dtype=costs.dtype, device=costs.device)
                                  for v in values)
            self._cached = (key, strengths, targets)
        return self._cached[1], self._cached[2]

    def current_strengths(
        self, epoch: int | None = None, n_epochs: int | None = None
    ) -> dict[str, float]:
        """The strengths at ``epoch`` of ``n_epochs`` by Eq. 14, e.g. for a progress bar.

        Raises:
            RuntimeError: before the first call, when the strengths are not yet set.
        """
        if self.strengths is None:
            raise NotReadyError(
                "DUCCIO strengths are set at the first call; call the regularizer on the "
                "model (or load_state_dict) first"
            )
        _check_epochs(epoch, n_epochs)
        return {n: _schedule(s, epoch, n_epochs) for n, s in self.strengths.items()}

    def violations(self, model: Any) -> dict[str, float]:
        """How far each cost is above its target, ``max(0, C_i - T_i)``; 0.0 when met."""
        check_cost_names(model, self.targets)
        with torch.no_grad():
            return {n: max(0.0, float(model.cost(n)) - t) for n, t in self.targets.items()}

    def state_dict(self) -> dict[str, Any]:
        """A plain dict with the strengths, for checkpoints: ``{"strengths": ... | None}``."""
        return {"strengths": None if self.strengths is None else dict(self.strengths)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the strengths from :meth:`state_dict`, so a resumed search continues alike."""
        if not isinstance(state, Mapping) or set(state) != {"strengths"}:
            raise InvalidValueError(
                f"`state` must be a dict with the key 'strengths', but got {state!r}")
        strengths = state["strengths"]
        self.strengths = (
            None if strengths is None else self._check_strengths("strengths", strengths)
        )

    def reset(self) -> None:
        """Forget the strengths; the next call sets them again by Eq. 13."""
        self.strengths = None

    def __repr__(self) -> str:
        how = (
            f"task_loss={self.task_loss:g}"
            if self.task_loss is not None
            else f"final_strengths={self.final_strengths!r}"
        )
        return f"DUCCIO(targets={self.targets!r}, {how})"
