"""Penalty functions: sparsity of the gates, gradient norms, output magnitudes.

``l0_penalty`` and ``expected_l2_penalty`` follow the regularizer protocol
``(model, epoch=None, n_epochs=None) -> Tensor``. ``gradient_penalty`` and
``output_magnitude_penalty`` act on a function and its inputs or on an output tensor.
``Every`` applies any of them only on every n-th call.

Example:
    >>> import torch
    >>> from hwnas.regularizers import output_magnitude_penalty
    >>> output_magnitude_penalty(torch.tensor([[3.0, 4.0], [0.0, 0.5]]), target=1.0)
    tensor(8.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from hwnas.errors import InvalidTypeError, InvalidValueError
from hwnas.regularizers.base import check_nonnegative
from hwnas.regularizers.protocol import GatedModel
from hwnas.regularizers.registry import register

__all__ = [
    "Every",
    "expected_l2_penalty",
    "gradient_penalty",
    "l0_penalty",
    "output_magnitude_penalty",
]

_MODES = ("output", "interpolated")
_REDUCTIONS = ("mean", "sum")


def _sum_or_zero(terms: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _gated(model: Any, what: str) -> GatedModel:
    if not isinstance(model, GatedModel):
        raise InvalidTypeError(
            f"{what} needs a model with gates (expected_l0() and gated_weights(), e.g. a "
            f"hwnas.wrap(...) SearchModel or hwnas.L0), but got {type(model).__name__}"
        )
    return model


@register("l0")
def l0_penalty(model: Any, epoch: int | None = None, n_epochs: int | None = None) -> torch.Tensor:
    """The expected number of non-zero gates, ``model.expected_l0()``.

    Each hard-concrete gate contributes ``P(z != 0)`` (Louizos et al. 2017, Eq. 12).
    Epochs are ignored. ``model`` is a :class:`~hwnas.regularizers.protocol.GatedModel`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> search = hwnas.wrap(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)),
        ...                     torch.randn(1, 2))
        >>> search.gate(1).set_deterministic_([1.0, 1.0, 0.0, 0.0])
        >>> round(l0_penalty(search).item(), 3)   # P(open) ~ 1, 1, 0, 0
        2.0
    """
    return _gated(model, "l0_penalty").expected_l0()


@register("expected_l2")
def expected_l2_penalty(
    model: Any, epoch: int | None = None, n_epochs: int | None = None
) -> torch.Tensor:
    """The expected squared L2 norm of the gated weights: ``sum((p * w**2).sum())``.

    A weight ``w`` multiplied by a gate ``z`` that is non-zero with probability ``p``
    has expected L2 ``p * w**2`` (Louizos et al. 2017, Eq. 13, the weight-decay part).
    ``model.gated_weights()`` yields ``(w, p)`` pairs with ``p`` broadcastable to ``w``.
    Epochs are ignored.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(),
        ...                     nn.Linear(2, 1, bias=False))
        >>> search = hwnas.wrap(net, torch.randn(1, 2))
        >>> with torch.no_grad():
        ...     _ = search.gm.get_submodule("2").layer.weight.fill_(2.0)
        >>> search.gate(1).set_deterministic_([1.0, 0.0])   # P(open) = 1.0 and 0.0002
        >>> round(expected_l2_penalty(search).item(), 3)   # (1.0 + 0.0002) * 4
        4.001
    """
    pairs = _gated(model, "expected_l2_penalty").gated_weights()
    return _sum_or_zero([(prob * weight.square()).sum() for weight, prob in pairs])


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each example: over all dims but the first."""
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


@register("gradient_penalty")
def gradient_penalty(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target_norm: float = 1.0,
    mode: str = "output",
    reference: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over the batch of ``(||d fn / d x_b||_2 - target_norm)**2``.

    The gradient of ``fn(x).sum()`` with respect to ``x`` holds, in row ``b``, the
    gradient of example ``b``'s outputs with respect to its own input, as long as the
    examples of a batch are independent in ``fn`` (no batch norm in training mode, no
    attention across the batch). Its norm is taken over all non-batch dims.

    - ``mode="output"``: the gradient at ``x``.
    - ``mode="interpolated"`` (WGAN-GP, Gulrajani et al. 2017): the gradient at
      ``x_hat = eps * x + (1 - eps) * reference`` with ``eps ~ U(0, 1)`` drawn once per
      example from ``generator``. ``x`` and ``reference`` are detached first, as in
      a critic update.

    When grad mode is on, the gradient is computed with ``create_graph=True``, so the
    penalty backpropagates into the parameters of ``fn`` (and into ``x`` in output
    mode, when ``x`` requires grad). Under ``torch.no_grad()`` it is evaluated without a
    graph.

    Args:
        fn: the function whose input gradient is penalised, e.g. a model or a critic.
        x: a batch of inputs of shape ``(B, ...)``; floating point.
        target_norm: the gradient norm that costs nothing, >= 0.
        mode: ``"output"`` or ``"interpolated"``.
        reference: a batch of the same shape as ``x``; required for ``"interpolated"``.
        generator: the random generator for ``eps``, for reproducible penalties.

    Returns:
        A scalar tensor.

    Example:
        >>> import torch
        >>> from hwnas.regularizers import gradient_penalty
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> gradient_penalty(lin, torch.randn(8, 2), target_norm=1.0)   # (5 - 1)**2
        tensor(16., grad_fn=<MeanBackward0>)
    """
    if mode not in _MODES:
        raise InvalidValueError(
            f"`mode` must be one of {', '.join(map(repr, _MODES))}, but got {mode!r}")
    target_norm = check_nonnegative("target_norm", target_norm)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x)
        raise InvalidTypeError(
            f"`x` must be a floating-point tensor with a batch dim, but got {got}")

    if mode == "output":
        if reference is not None:
            raise InvalidValueError(
                "`reference` is only used with mode='interpolated', but got one")
        point = x if x.requires_grad else x.detach().requires_grad_(True)
    else:
        if not isinstance(reference, torch.Tensor):
            raise InvalidValueError("`reference` is required for mode='interpolated', but got None")
        if reference.shape != x.shape:
            raise InvalidValueError(
                f"`reference` must have the shape of `x` {tuple(x.shape)}, "
                f"but got {tuple(reference.shape)}"
            )
        eps_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        gen_device = generator.device if generator is not None else x.device
        eps = torch.rand(eps_shape, generator=generator, device=gen_device, dtype=x.dtype)
        eps = eps.to(x.device)
        point = eps * x.detach() + (1 - eps) * reference.detach().to(x.dtype)
        point.requires_grad_(True)

    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        out = fn(point)
        if out.requires_grad:
            (grad,) = torch.autograd.grad(
                out.sum(), point, create_graph=create_graph, allow_unused=True
            )
        else:
            grad = None
    if grad is None:  # fn does not depend on its input
        grad = torch.zeros_like(point)
    if not create_graph:
        grad = grad.detach()
    return (_per_example_norm(grad) - target_norm).square().mean()


@register("output_magnitude")
def output_magnitude_penalty(
    output: torch.Tensor, target: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Penalise the per-example L2 norm of ``output`` where it exceeds ``target``.

    With ``n_b = ||output[b]||_2`` over all non-batch dims (``|output[b]|`` for a 1-D
    output), the penalty is ``reduce_b(max(0, n_b - target)**2)``, where ``reduce`` is the
    mean or the sum over the batch. Outputs inside the ball of radius ``target`` cost
    nothing, and the gradient is zero there.

    Args:
        output: a batch of outputs of shape ``(B, ...)``; floating point.
        target: the largest norm that costs nothing, >= 0.
        reduction: ``"mean"`` or ``"sum"`` over the batch.

    Example:
        >>> import torch
        >>> from hwnas.regularizers import output_magnitude_penalty
        >>> out = torch.tensor([[3.0, 4.0], [0.0, 0.5]])   # norms 5 and 0.5
        >>> output_magnitude_penalty(out, target=1.0, reduction="sum")   # (5 - 1)**2 + 0
        tensor(16.)
    """
    if reduction not in _REDUCTIONS:
        raise InvalidValueError(
            f"`reduction` must be one of {', '.join(map(repr, _REDUCTIONS))}, but got {reduction!r}"
        )
    target = check_nonnegative("target", target)
    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.ndim < 1:
        got = (
            f"{output.dtype} of shape {tuple(output.shape)}"
            if isinstance(output, torch.Tensor)
            else type(output)
        )
        raise InvalidTypeError(
            f"`output` must be a floating-point tensor with a batch dim, but got {got}")
    excess = torch.relu(_per_example_norm(output) - target).square()
    return excess.mean() if reduction == "mean" else excess.sum()


class Every:
    """Apply ``weight * penalty(...)`` on every ``every``-th call only, zero otherwise.

    The wrapper counts its own calls from 0; calls ``0, every, 2 * every, ...`` return
    ``weight * penalty(*args, **kwargs)``, the others return ``tensor(0.)`` without
    calling the penalty (no graph). To keep the average strength of an expensive penalty
    while computing it less often (lazy regularization), pass ``weight=every``.

    Args:
        penalty: any callable returning a tensor, e.g. ``gradient_penalty`` or a regularizer.
        every: apply the penalty once every this many calls, >= 1.
        weight: the multiplier applied on the calls that compute the penalty, >= 0.

    Example:
        >>> import torch
        >>> from hwnas.regularizers import Every
        >>> lazy = Every(lambda t: t.sum(), every=2, weight=3.0)
        >>> [float(lazy(torch.ones(2))) for _ in range(4)]
        [6.0, 0.0, 6.0, 0.0]
    """

    def __init__(self, penalty: Callable[..., torch.Tensor], every: int, weight: float = 1.0):
        if not callable(penalty):
            raise InvalidTypeError(f"`penalty` must be callable, but got {type(penalty).__name__}")
        if isinstance(every, bool) or not isinstance(every, int):
            raise InvalidTypeError(f"`every` must be an int, but got {type(every).__name__}")
        if every < 1:
            raise InvalidValueError(f"`every` must be >= 1, but got {every}")
        self.penalty = penalty
        self.every = every
        self.weight = check_nonnegative("weight", weight)
        self.step = 0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``weight * penalty(*args, **kwargs)`` on every ``every``-th call, else ``tensor(0.)``."""
        step = self.step
        self.step += 1
        if step % self.every:
            return torch.zeros(())
        return self.weight * self.penalty(*args, **kwargs)

    def state_dict(self) -> dict[str, int]:
        """The call counter, ``{"step": n}``, for checkpoints."""
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the call counter from :meth:`state_dict`."""
        step = state.get("step") if isinstance(state, Mapping) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidValueError(f"`state` must be {{'step': int >= 0}}, but got {state!r}")
        self.step = step

    def __repr__(self) -> str:
        return f"Every({self.penalty!r}, every={self.every}, weight={self.weight:g})"
