"""What the tracer keeps whole: custom autograd Functions and layer subclasses that compute
what their ``torch.nn`` base computes.

- ``MyFunction.apply(x)`` of a ``torch.autograd.Function`` would be traced through into
  the ops of its ``forward``, and its ``backward`` lost (a straight-through sign would get
  ``torch.sign``'s zero gradient). While a model is traced, :func:`functions_as_leaves`
  records each such call as one :class:`FunctionCall` module instead: the traced, searched
  and exported models call ``apply`` and autograd runs the Function's ``backward``.
- A subclass of ``nn.Linear`` / ``nn.Conv*d`` that overrides ``forward`` (timm's
  ``Linear``, its TensorFlow-padded ``Conv2dSame``) is kept as one layer when its forward,
  traced alone, is the base layer's functional call on its own weight and bias, after at
  most a zero padding of its input (:func:`same_as_base`): it is then costed, pruned and
  exported like its base (the exported model calls the module, where hooks see it). Any
  other forward (a weight computed from the parameter, as in weight standardisation) is
  traced through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["FunctionCall", "functions_as_leaves", "same_as_base"]


class FunctionCall(nn.Module):
    """Calls ``function.apply`` (a ``torch.autograd.Function``): one leaf node in a traced
    graph, so autograd sees the Function and runs its ``backward``."""

    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.function = function

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.function.apply(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.function.__module__}.{self.function.__qualname__}"


def _has_proxy(values: Any) -> bool:
    found: list[bool] = []
    fx.node.map_aggregate(values, lambda v: found.append(isinstance(v, fx.Proxy)))
    return any(found)


@contextlib.contextmanager
def functions_as_leaves(root: nn.Module, tracer: fx.Tracer) -> Iterator[list[str]]:
    """While tracing ``root``: every ``Function.apply`` on traced values becomes a call of a
    :class:`FunctionCall` submodule added to ``root`` (named in the list this yields; the
    caller removes them from ``root`` once the graph module holds them)."""
    original = torch.autograd.Function.__dict__["apply"]
    added: list[str] = []

    def apply(cls: type[torch.autograd.Function], *args: Any, **kwargs: Any) -> Any:
        if not _has_proxy((args, kwargs)):
            return original.__func__(cls, *args, **kwargs)
        name = f"hwnas_function_{len(added)}"
        root.add_module(name, FunctionCall(cls))
        added.append(name)
        return tracer.create_proxy("call_module", name, args, kwargs)

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[assignment,method-assign]
    try:
        yield added
    finally:
        torch.autograd.Function.apply = original  # type: ignore[method-assign]


_BASES: dict[type, Callable[..., Any]] = {nn.Linear: F.linear, nn.Conv1d: F.conv1d,
                                          nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def base_of(m: nn.Module) -> type | None:
    """The ``torch.nn`` layer ``m`` subclasses with its own ``forward``, else None."""
    base = next((b for b in _BASES if isinstance(m, b)), None)
    if base is None or type(m) is base or type(m).forward is getattr(base, "forward", None):
        return None
    if isinstance(m, nn.modules.conv._ConvNd) and m.padding_mode != "zeros":
        return None
    return base


def _zero_pad(n: fx.Node) -> bool:
    args = list(n.args) + [None] * 4
    mode = n.kwargs.get("mode", args[2] or "constant")
    value = n.kwargs.get("value", args[3])
    return n.target is F.pad and mode == "constant" and value in (None, 0, 0.0)


def same_as_base(m: nn.Module, graph: fx.Graph) -> bool:
    """Whether ``graph`` (``m.forward`` traced alone) is the base layer's functional call on
    ``m``'s own weight and bias with its stride, dilation and groups, its input zero-padded
    at most."""
    base = base_of(m)
    if base is None:
        return False
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    if not nodes or nodes[-1].target is not _BASES[base]:
        return False
    *pads, call = nodes
    if any(not _zero_pad(p) for p in pads):
        return False
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    given = dict(zip(names, call.args, strict=False)) | dict(call.kwargs)
    x = given.get("input")
    while isinstance(x, fx.Node) and x in pads:
        x = x.args[0]
    weight, bias = given.get("weight"), given.get("bias")
    ok = (isinstance(x, fx.Node) and x.op == "placeholder"
          and isinstance(weight, fx.Node) and weight.target == "weight"
          and (bias.target == "bias" if isinstance(bias, fx.Node) else m.bias is None))
    if not ok or base is nn.Linear:
        return ok
    conv: Any = m
    wanted = {"stride": conv.stride, "dilation": conv.dilation, "groups": conv.groups}
    if not pads:
        wanted["padding"] = conv.padding
    defaults = {"stride": 1, "dilation": 1, "groups": 1, "padding": 0}
    return all(_same(given.get(k, defaults[k]), v) for k, v in wanted.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int) and isinstance(b, (tuple, list)):
        return all(v == a for v in b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return tuple(a) == tuple(b)
    return bool(a == b)
