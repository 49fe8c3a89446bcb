"""The fallback tracer: torch.fx specialised on the example inputs' shapes.

Symbolic tracing fails where a model branches on a shape (``if H % 2:``, TensorFlow-style
"same" padding computed from the input size, a window partition). :class:`ShapeTracer`
traces the same way, but runs every recorded op on the example inputs as it goes, so a
tensor's ``shape``, ``size()``, ``dim()``, ``len()`` and its ``dtype`` / ``device`` are the
example's: Python code computes with real numbers and the graph holds them as constants.

The batch stays free: every op also runs on the examples repeated to batch size 2, and a
size that differs between the two runs (a batch size, or a size computed from it) is
recorded as a ``size`` call in the graph instead of a constant, so the traced, searched
and exported models run at any batch size. Other sizes are fixed: the model then runs at
the example's spatial size only. Control flow on tensor values still fails, as in fx.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from hwnas.errors import ShapeError, TraceError
from hwnas.graph.channel_prop import is_shape_error, shape_message
from hwnas.graph.tracer import LeafPredicate, Tracer, unpatched

__all__ = ["ShapeTracer"]

_ATTRS = frozenset({"dtype", "device", "is_cuda", "ndim", "layout", "is_sparse",
                    "is_quantized", "is_complex"})
_QUERIES = frozenset({"size", "dim", "numel", "ndimension", "nelement"})
#: Ops on sizes that give sizes (``B * N``, ``H // 2``): their results are sizes too.
_SIZE_OPS = frozenset({"add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "getitem",
                       "eq", "ne", "lt", "le", "gt", "ge", "size", "numel", "nelement"})


class _ShapeProxy(fx.Proxy):
    """A Proxy whose shape queries answer with the example's numbers."""

    def __getattr__(self, k: str) -> Any:
        tracer: ShapeTracer = self.tracer  # type: ignore[assignment]
        if k in _ATTRS:
            return getattr(tracer.values[self.node][0], k)
        if k == "shape":
            return tracer.query(self, "size")
        if k in _QUERIES:
            return functools.partial(tracer.query, self, k)
        return super().__getattr__(k)

    def __len__(self) -> int:
        return len(self.tracer.values[self.node][0])  # type: ignore[attr-defined]

    def __iter__(self) -> Any:
        return iter([self[i] for i in range(len(self))])  # type: ignore[index]


class ShapeTracer(Tracer):
    """:class:`~hwnas.graph.tracer.Tracer` that runs what it records on ``inputs`` (see the
    module docstring)."""

    def __init__(self, leaf_modules: tuple[type | str, ...], is_leaf: LeafPredicate | None,
                 inputs: tuple[Any, ...], batched: bool = True) -> None:
        super().__init__(leaf_modules, is_leaf)
        runs = [tuple(inputs)]
        if batched:
            runs.append(tuple(torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim()
                              else t for t in inputs))
        self.runs = runs
        #: node -> its value in each run (the examples; the examples at batch 2).
        self.values: dict[fx.Node, list[Any]] = {}
        self.sizes: set[fx.Node] = set()
        self._next_input = 0
        #: Set when an op fails at batch size 2 (then the batch cannot be kept free).
        self.unbatched = False

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any], name: str | None = None, type_expr: Any = None,
                     proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr,
                                     proxy_factory_fn)
        node = proxy.node
        if kind == "placeholder":
            k, self._next_input = self._next_input, self._next_input + 1
            self.values[node] = [run[k] if k < len(run) else (args[0] if args else None)
                                 for run in self.runs]
        elif kind != "output":
            try:
                self.values[node] = [self._run(kind, target, args, kwargs, r)
                                     for r in range(len(self.runs))]
            except Exception as e:
                if self.unbatched or not is_shape_error(e):
                    raise
                module = self.root.get_submodule(str(target)) if kind == "call_module" else None
                shapes = [tuple(v.shape) for v in (self.values[p.node][0] for p in
                          _proxies((args, kwargs))) if isinstance(v, torch.Tensor)]
                raise ShapeError(shape_message(node, module, shapes, e)) from e
            operands = [a.node for a in _proxies((args, kwargs))]
            op = target if isinstance(target, str) else getattr(target, "__name__", "")
            if (kind == "call_method" and op in _QUERIES) or (
                    operands and op in _SIZE_OPS and all(o in self.sizes for o in operands)):
                self.sizes.add(node)
        return proxy

    def _run(self, kind: str, target: Any, args: Any, kwargs: Any, r: int) -> Any:
        def value(a: Any) -> Any:
            return self.values[a.node][r] if isinstance(a, fx.Proxy) else a

        args, kwargs = fx.node.map_aggregate((args, kwargs), value)
        try:
            with unpatched(), torch.no_grad():
                if kind == "get_attr":
                    return _attr(self.root, str(target))
                if kind == "call_module":
                    return self.root.get_submodule(str(target))(*args, **kwargs)
                if kind == "call_method":
                    return getattr(args[0], target)(*args[1:], **kwargs)
                return target(*args, **kwargs)
        except Exception as e:
            if r > 0:  # the caller traces again with fixed sizes only
                self.unbatched = True
                raise TraceError(f"the model does not run at batch size 2: {e}") from e
            raise

    def query(self, proxy: fx.Proxy, what: str, *args: Any) -> Any:
        """``proxy.size(*args)`` / ``dim()`` / ``numel()``: numbers where every run agrees,
        else a traced call (a batch-dependent size)."""
        if what in ("dim", "ndimension"):
            return self.values[proxy.node][0].dim()
        values = [getattr(v, what)(*args) for v in self.values[proxy.node]]
        if what == "size" and not args:
            return tuple(self.query(proxy, "size", d) for d in range(len(values[0])))
        if all(v == values[0] for v in values):
            return int(values[0])
        return self.create_proxy("call_method", what, (proxy, *args), {})

    def to_bool(self, obj: fx.Proxy) -> bool:
        values = self.values.get(obj.node, [])
        if obj.node in self.sizes and values and all(v == values[0] for v in values):
            return bool(values[0])
        return super().to_bool(obj)

    def iter(self, obj: fx.Proxy) -> Any:
        return iter([obj[i] for i in range(len(self.values[obj.node][0]))])  # type: ignore[index]

    def trace_alone(self, m: nn.Module, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> fx.Graph | None:
        inputs = [self.values[a.node][0] if isinstance(a, fx.Proxy) else a for a in args]
        try:
            return ShapeTracer((), None, tuple(inputs), batched=False).trace(m)
        except Exception:  # not traceable alone: traced through as part of the model
            return None


def _proxies(value: Any) -> list[fx.Proxy]:
    found: list[fx.Proxy] = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, fx.Proxy) else None)
    return found


def _attr(root: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)

