"""The torch.fx tracer hwnas uses: an injected leaf predicate, module classes or names kept
whole, and the leaves of :mod:`hwnas.graph.leaves` (layer subclasses that compute what
their base computes; custom autograd Functions, recorded by :meth:`Tracer.trace`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch.fx as fx
from torch import nn
from torch.fx import _symbolic_trace

from hwnas.graph.leaves import base_of, functions_as_leaves, same_as_base

__all__ = ["LeafPredicate", "Tracer", "unpatched"]

LeafPredicate = Callable[[nn.Module], bool]
#: A context in which fx's patches of the trace under way are undone (modules run as
#: modules): to run ops on real values, or to trace a module alone, during a trace.
unpatched: Callable[[], Any] = getattr(_symbolic_trace, "_maybe_revert_all_patches",
                                       contextlib.nullcontext)


class Tracer(fx.Tracer):
    """fx's tracer with hwnas's leaves (see the module docstring)."""

    def __init__(self, leaf_modules: tuple[type | str, ...], is_leaf: LeafPredicate | None) -> None:
        super().__init__()
        self.leaf_modules = leaf_modules
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self.leaf_names = {m for m in leaf_modules if isinstance(m, str)}
        self.is_leaf = is_leaf
        self.record_stack_traces = True
        self._call: tuple[Any, Any] = ((), {})
        self._same: dict[int, bool] = {}
        #: The FunctionCall submodules added to the root while tracing.
        self.function_calls: list[str] = []

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        with functions_as_leaves(root, self) as added:
            try:
                return super().trace(root, concrete_args)
            finally:
                self.function_calls = list(added)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        self._call = (args, kwargs)
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaf_types) or module_qualified_name in self.leaf_names:
            return True
        if base_of(m) is not None:
            if id(m) not in self._same:
                with unpatched():
                    graph = self.trace_alone(m, *self._call)
                self._same[id(m)] = graph is not None and same_as_base(m, graph)
            return self._same[id(m)]
        if self.is_leaf is not None and self.is_leaf(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def trace_alone(self, m: nn.Module, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> fx.Graph | None:
        """``m.forward`` traced on its own (None where it cannot be)."""
        try:
            return fx.Tracer().trace(m)
        except Exception:  # not traceable alone: traced through as part of the model
            return None
