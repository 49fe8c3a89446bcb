"""Tracing: torch.fx symbolic trace, then one run of ChannelProp on the example inputs.

The tracer does not know which modules hwnas can cost: callers inject that as ``is_leaf``
(``hwnas.cost.profile`` and ``hwnas.wrap`` pass "has a registered cost"), so ``graph``
never imports ``cost``.
"""

from __future__ import annotations

import copy
import inspect
import os
import traceback
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from hwnas.errors import InvalidTypeError, ShapeError, TraceError
from hwnas.graph.channel_prop import ChannelProp
from hwnas.graph.concrete import ShapeTracer
from hwnas.graph.groups import finalize
from hwnas.graph.ir import GROUPS_KEY, LAYER_KEY, ChannelGroup, LayerInfo
from hwnas.graph.rules import rule_for
from hwnas.graph.tracer import LeafPredicate, Tracer

__all__ = ["channel_groups", "layers", "trace"]

def _user_frame(exc: BaseException) -> str:
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(torch_dir) and "/hwnas/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f"\n  at {f.filename}:{f.lineno}: {f.line}"


def _trace_message(model: nn.Module, tracer: Tracer, e: Exception) -> str:
    stack = list(tracer.module_stack.items())
    where = ""
    suggestion = "a submodule and pass its class in leaf_modules="
    if stack:  # the root module is not on the stack, only submodules
        qualname, mtype = stack[-1]
        cls = mtype[1] if isinstance(mtype, tuple) else mtype
        cls_name = getattr(cls, "__name__", str(cls))
        where = f" inside module {qualname!r} ({cls_name})"
        suggestion = (
            f"a leaf module: pass leaf_modules=({cls_name},) or leaf_modules=({qualname!r},)"
        )
    return (f"torch.fx cannot trace {type(model).__name__}{where}, not even specialised on "
            f"the example inputs' shapes: {e}{_user_frame(e)}\n"
            f"Make the part with data-dependent control flow {suggestion}; hwnas then treats "
            f"it as one opaque layer whose channels are frozen.")


def _omitted(model: nn.Module, n_inputs: int) -> dict[str, Any]:
    """Default values of the forward's positional parameters after the ``n_inputs`` given
    (they are specialised: traced as constants, not inputs)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # no Python signature: nothing to specialise
        return {}
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    rest = [p for p in params if p.kind in kinds][n_inputs:]
    if not rest or any(p.default is inspect.Parameter.empty for p in rest):
        return {}
    return {p.name: p.default for p in rest}


def _drop_specialised(graph: fx.Graph, n_inputs: int) -> None:
    """Remove the placeholders of specialised parameters and fx's checks of their values."""
    for p in [n for n in graph.nodes if n.op == "placeholder"][n_inputs:]:
        users, todo = [], list(p.users)
        while todo:
            u = todo.pop()
            if u not in users:
                users.append(u)
                todo.extend(u.users)
        if any(getattr(u.target, "__name__", "") not in _CHECKS for u in users):
            continue
        for u in reversed([n for n in graph.nodes if n in users]):
            graph.erase_node(u)
        graph.erase_node(p)


_CHECKS = frozenset({"_assert_is_none", "_assert", "eq"})


def _symbolic_trace(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                    leaf_modules: tuple[type | str, ...],
                    is_leaf: LeafPredicate | None) -> fx.GraphModule:
    """fx's symbolic trace; where it fails, the trace specialised on the inputs' shapes
    (:mod:`hwnas.graph.concrete`)."""
    concrete = _omitted(model, len(inputs)) or None
    tracer = Tracer(leaf_modules, is_leaf)
    # a forward that caches into its module (LeViT's attention biases) must not keep the
    # tracer's proxies: every dict / list attribute is put back as it was
    saved = [(m, k, copy.copy(v)) for m in model.modules() for k, v in vars(m).items()
             if isinstance(v, (dict, list)) and not k.startswith("_")]
    try:
        try:
            graph = tracer.trace(model, concrete)
        except Exception:  # shape-dependent control flow: specialise on the example
            graph, tracer = _trace_with_shapes(model, inputs, leaf_modules, is_leaf, concrete)
        if concrete:
            _drop_specialised(graph, len(inputs))
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    finally:
        for m, k, v in saved:
            setattr(m, k, v)
        for name in tracer.function_calls:  # copied into the graph module; not the user's
            if name in model._modules:
                delattr(model, name)


def _trace_with_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                       leaf_modules: tuple[type | str, ...], is_leaf: LeafPredicate | None,
                       concrete: dict[str, Any] | None) -> tuple[fx.Graph, Tracer]:
    """The trace specialised on the inputs' shapes, the batch kept free where the model
    runs at batch 2 (:mod:`hwnas.graph.concrete`)."""
    tracer = ShapeTracer(leaf_modules, is_leaf, inputs)
    try:
        try:
            return tracer.trace(model, concrete), tracer
        except TraceError:
            if not tracer.unbatched:
                raise
            tracer = ShapeTracer(leaf_modules, is_leaf, inputs, batched=False)
            return tracer.trace(model, concrete), tracer
    except ShapeError:
        raise
    except Exception as e:
        raise TraceError(_trace_message(model, tracer, e)) from e


def _check_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(v, int) for v in example_inputs):
        shape = ", ".join(map(str, example_inputs))
        raise InvalidTypeError(
            f"`example_inputs` must be a tensor or a tuple of tensors, but got the tuple of "
            f"ints ({shape}); pass a tensor of that shape, like torch.randn({shape})")
    if not isinstance(example_inputs, (tuple, list)) or not all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        got = type(example_inputs).__name__ if not isinstance(example_inputs, (tuple, list)) \
            else f"a {type(example_inputs).__name__} of " + ", ".join(
                sorted({type(t).__name__ for t in example_inputs}))
        raise InvalidTypeError("`example_inputs` must be a tensor or a tuple of tensors, but "
                               f"got {got}")
    return tuple(example_inputs)


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    leaf_modules: tuple[type | str, ...] = (),
    is_leaf: LeafPredicate | None = None,
) -> fx.GraphModule:
    """Trace ``model`` with torch.fx and annotate every node (see :mod:`hwnas.graph.ir`).

    The model is run once on ``example_inputs`` (in its current train/eval mode, without
    gradients) to record shapes. Where torch.fx's symbolic trace fails (a forward that
    branches on a shape), the trace is specialised on the examples' shapes
    (:mod:`hwnas.graph.concrete`: the batch size stays free, other sizes are fixed).
    Forward arguments after the given inputs that have defaults are specialised to them.
    Channel dimensions that must be pruned together (residual adds, concats, splits,
    depthwise convs, flatten->linear) are joined into
    :class:`~hwnas.graph.ir.ChannelGroup` s, available with :func:`channel_groups`. Groups that
    cannot be pruned exactly are frozen with a reason.

    Args:
        model: The model. It is not modified.
        example_inputs: One tensor or a tuple of positional inputs, batch first; trailing
            arguments with defaults (``attn_mask=None``) may be left out.
        leaf_modules: Module classes or qualified names to keep opaque (not traced into),
            e.g. modules with data-dependent control flow. Their channels are frozen.
        is_leaf: Also keep a module opaque when ``is_leaf(module)`` is true (hwnas's own
            callers pass "has a registered cost", so costed custom layers stay whole).

    Returns:
        The ``fx.GraphModule``; ``node.meta["hwnas"]`` holds each node's LayerInfo.

    Raises:
        TraceError: torch.fx cannot trace the model (the message names the source line
            and suggests ``leaf_modules=``), or the model raised while running.
        ShapeError: the example inputs do not fit the model.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> gm = trace(net, torch.randn(1, 3, 8, 8))
        >>> [layer.name for layer in layers(gm)]
        ['_0', '_2']
        >>> [(g.size, g.frozen) for g in channel_groups(gm)][1]
        (8, None)
    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"`model` must be an nn.Module, but got {type(model).__name__}")
    inputs = _check_inputs(example_inputs)
    for m in leaf_modules:
        if not isinstance(m, (type, str)):
            raise InvalidTypeError(
                f"`leaf_modules` entries must be classes or names, but got {m!r}")
    gm = _symbolic_trace(model, inputs, tuple(leaf_modules), is_leaf)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != len(names):
        raise ShapeError(
            f"the model takes {len(names)} input(s), but {len(inputs)} example input(s) were "
            f"given (its inputs: {', '.join(names)})"
        )
    prop = ChannelProp(gm, rule_for)
    with torch.no_grad():
        prop.run(*inputs)
    gm.meta[GROUPS_KEY] = finalize(gm, prop)
    return gm


def channel_groups(gm: fx.GraphModule) -> tuple[ChannelGroup, ...]:
    """The channel groups of a traced model (see :func:`trace`)."""
    if GROUPS_KEY not in gm.meta:
        raise InvalidTypeError(
            "`gm` was not made by hwnas.graph.trace(); call trace(model, x) first")
    return gm.meta[GROUPS_KEY]


_LAYER_KINDS = ("conv", "linear", "matmul", "attention", "norm", "layer")


def layers(gm: fx.GraphModule) -> list[LayerInfo]:
    """LayerInfo of every layer: modules with channels (convs, linears, norms, ...) and
    function calls that compute like layers (``F.linear``, matmul, einsum, attention,
    functional normalisations)."""
    return [
        n.meta[LAYER_KEY]
        for n in gm.graph.nodes
        if n.op in ("call_module", "call_function", "call_method")
        and n.meta[LAYER_KEY].kind in _LAYER_KINDS
    ]
