"""Channel rule of custom ``torch.autograd.Function`` calls (the tracer records each as one
:class:`~hwnas.graph.leaves.FunctionCall` module, so its ``backward`` is kept).

A Function whose ``forward`` takes one tensor and, traced alone, is made of pointwise ops
only (a straight-through sign, a clipped round) passes the channels through like an
activation; any other Function is opaque: what it reads and writes is frozen, with the
reason naming it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from hwnas.graph.channel_prop import ChannelProp
from hwnas.graph.leaves import FunctionCall
from hwnas.graph.rules.base import first, name_of, register_channel_rule

__all__: list[str] = []

#: Ops that compute each output element from the same element of their tensor operands.
POINTWISE = frozenset({
    "sign", "round", "floor", "ceil", "trunc", "clamp", "clip", "abs", "neg", "relu",
    "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "pow", "mul", "add", "sub",
    "truediv", "div", "where", "gt", "lt", "ge", "le", "eq", "ne", "float", "to", "type_as",
    "detach", "clone", "contiguous", "hardtanh", "heaviside", "reciprocal", "square",
    "zeros_like", "ones_like", "sign_", "clamp_", "mul_", "add_", "floordiv", "mod",
})


class _Ctx:
    """A stand-in for the context a Function's forward receives (it records nothing)."""

    needs_input_grad = (True,)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def pointwise(function: type[torch.autograd.Function]) -> bool:
    """Whether ``function.forward(ctx, x)`` traces to pointwise ops on ``x`` and scalars."""

    def forward(x: Any) -> Any:
        return function.forward(_Ctx(), x)

    try:
        graph = fx.Tracer().trace(forward)
    except Exception:  # not traceable (several inputs, control flow): not provably pointwise
        return False
    for n in graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        if n.op not in ("call_function", "call_method") or name_of(n.target) not in POINTWISE:
            return False
    return True


def function_rule(prop: ChannelProp, n: fx.Node, m: Any, out: Any) -> Any:
    x = first(n)
    shape = prop.shape(x)
    if (len(n.args) == 1 and not n.kwargs and isinstance(out, torch.Tensor)
            and shape == tuple(out.shape) and pointwise(m.function)):
        prop.set_kind(n, "elementwise")
        return prop.info(x)
    prop.set_kind(n, "other")
    prop.freeze_inputs(n, f"custom autograd.Function {m.function.__qualname__} at {n.name} is "
                          "opaque to channel pruning")
    return None


register_channel_rule(FunctionCall, function_rule)
