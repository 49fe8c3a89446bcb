"""Cost models: pure functions ``(LayerInfo, alive, Target) -> Tensor`` in a registry.

A cost function is registered for a (metric, layer type) pair and looked up along the
layer type's class hierarchy, so a subclass of ``nn.Conv2d`` is costed like a conv. Layers
that are function calls in the traced graph (``F.linear``, ``torch.matmul``, ``x @ y``,
``torch.einsum``, ``F.scaled_dot_product_attention``, ...) are costed by the same kind of
function, registered under the function itself or its name (``"matmul"`` covers
``torch.matmul``, ``operator.matmul`` and the method ``x.matmul``).
``alive`` maps ``"in"`` and ``"out"`` to the number of alive input and output channels
as tensors: integer counts give the exact cost, expected counts from the L0 gates give
the differentiable cost, with the same formula.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hwnas import cost
    >>> class Scale(nn.Module):
    ...     def forward(self, x):
    ...         return x * 2
    >>> @cost.register("ops", Scale)
    ... def _scale_ops(info, alive, target):
    ...     return alive["out"] * info.positions
    >>> cost.lookup("ops", Scale) is _scale_ops
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from hwnas._internal.registry import Registry
from hwnas.cost.target import LutModel, Target, known_targets, load_target
from hwnas.errors import InvalidTypeError, InvalidValueError, UnknownNameError

if TYPE_CHECKING:
    from hwnas.graph.ir import LayerInfo

__all__ = [
    "CostFn",
    "LutModel",
    "Target",
    "check_metric",
    "evaluate",
    "is_costed",
    "is_pure",
    "known_targets",
    "load_target",
    "lookup",
    "metrics",
    "register",
    "version",
]

CostFn = Callable[["LayerInfo", dict[str, torch.Tensor], Target], torch.Tensor]

_REGISTRY: dict[str, Registry[CostFn]] = {}


_IMPURE: set[CostFn] = set()


def register(metric: str, layer_type: type | Callable[..., object] | str,
             pure: bool = True) -> Callable[[CostFn], CostFn]:
    """Decorator: register ``fn`` as the ``metric`` cost of ``layer_type`` and subclasses.

    Args:
        metric: Cost name, e.g. ``"params"``, ``"ops"``, ``"luts"`` or a new one.
        layer_type: The module class the function applies to (and its subclasses), or a
            function called in the model's forward (``torch.bmm``), or the name of a
            function or method (``"bmm"``: every function or method of that name).
        pure: The function depends only on ``(info, alive, target)``, so a search may
            cache what it derives from it. Pass False for a function that reads state
            that changes during training (a LUT layer's truth tables, a layer's weights):
            it is then evaluated afresh every time.
    """
    if not isinstance(metric, str) or not metric:
        raise InvalidValueError(f"`metric` must be a non-empty string, but got {metric!r}")
    if isinstance(layer_type, nn.Module) or not (
            isinstance(layer_type, (type, str)) or callable(layer_type)):
        raise InvalidTypeError(
            f"`layer_type` must be a class, a function or a name, but got {layer_type!r}")

    def deco(fn: CostFn) -> CostFn:
        table = _REGISTRY.setdefault(metric, Registry(f"{metric!r} cost", "hwnas.register_cost"))
        table.register(layer_type, fn)
        if not pure:
            _IMPURE.add(fn)
        return fn

    return deco


def version() -> int:
    """Changes whenever a cost function is registered (a key for caches of lookups)."""
    return max((table.version for table in _REGISTRY.values()), default=0)


def is_pure(fn: CostFn) -> bool:
    """False for a cost function registered with ``pure=False``."""
    return fn not in _IMPURE


def metrics() -> list[str]:
    """Names of all registered metrics."""
    return sorted(_REGISTRY)


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is registered, else raise an error listing the known ones."""
    if metric not in _REGISTRY:
        raise UnknownNameError(f"unknown cost {metric!r}; known: {', '.join(metrics())}")
    return metric


def lookup(metric: str, layer_type: object) -> CostFn | None:
    """The cost function of ``metric`` for ``layer_type`` (nearest registered base class).

    ``layer_type`` is a module class (looked up along its hierarchy), a function (looked up
    as itself, then by its name) or a function or method name (``LayerInfo.cost_key``).
    Returns ``None`` when nothing is registered (the layer costs nothing in that metric,
    like an activation's MACs). Raises UnknownNameError for an unknown metric.
    """
    table = _REGISTRY[check_metric(metric)]
    if layer_type is None:
        return None
    found = table.lookup(layer_type)
    if found is None and not isinstance(layer_type, (type, str)):
        name = getattr(layer_type, "__name__", None)
        found = table.lookup(name) if isinstance(name, str) else None
    return found


def _owner(table: Registry[CostFn], cls: type) -> type | None:
    """The class in ``cls``'s hierarchy that ``table`` has an entry for (nearest first)."""
    keys = {k for k in table if isinstance(k, type)}
    return next((c for c in cls.__mro__ if c in keys), None)


def is_costed(module: nn.Module) -> bool:
    """True when some metric has a cost function for ``module``'s type (a tracer leaf).

    A subclass of a ``torch.nn`` layer that overrides its ``forward`` may compute something
    else (torchvision's ``LayerNorm2d`` permutes around a LayerNorm): it is not costed as
    that layer, so the tracer traces into it. (Subclasses of a user's own registered class
    inherit its cost.)
    """
    cls = type(module)
    for table in _REGISTRY.values():
        owner = _owner(table, cls)
        if owner is None:
            continue
        if not owner.__module__.startswith("torch.") or getattr(cls, "forward", None) is \
                getattr(owner, "forward", None):
            return True
    return False


def evaluate(metric: str, info: LayerInfo, alive: dict[str, torch.Tensor], target: Target):
    """Cost of one layer in ``metric``, or ``None`` when nothing is registered for it."""
    fn = lookup(metric, info.cost_key)
    if fn is None:
        return None
    return fn(info, alive, target)


from hwnas.cost import bits as _bits  # noqa: E402,F401  (bitops, weight_memory)
from hwnas.cost import formulas as _formulas  # noqa: E402,F401  (registers the defaults)
from hwnas.cost import luts as _luts  # noqa: E402,F401  (registers the LUT costs)
