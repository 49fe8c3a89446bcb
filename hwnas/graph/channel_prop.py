"""ChannelProp: runs the model once and records, per node, the channel ids of its output.

Shaped like ``torch/fx/passes/shape_prop.py``: an ``fx.Interpreter`` whose ``run_node`` runs
the node, then asks the channel rule of the node's op family (:mod:`hwnas.graph.rules`)
which channel ids the output carries, and records them. A channel id is a union-find
element; ids joined by a rule (a residual add joins its operands) end up in one channel
class, and :mod:`hwnas.graph.groups` turns classes into channel groups.

The methods below are what a channel rule may call (see
:func:`hwnas.graph.register_channel_rule`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from hwnas.errors import ShapeError, TraceError

__all__ = ["Chan", "ChannelProp", "Rule", "RuleLookup"]

#: A channel rule: ``rule(prop, node, module_or_None, output) -> Chan | list | None``.
Rule = Callable[["ChannelProp", fx.Node, "nn.Module | None", Any], Any]
#: Finds the rule of a node: ``rule_for(node, module_or_None) -> Rule``.
RuleLookup = Callable[[fx.Node, "nn.Module | None"], Rule]

# Messages torch (and users' code) give when tensors do not have the expected shape.
_SHAPE_MESSAGE = re.compile(
    r"size|shape|dimension|channels|mat1 and mat2|must match|expected (?:input|.*to have)",
    re.IGNORECASE,
)


@dataclass
class Chan:
    """Channel ids carried by a tensor: ``ids`` covers dims ``[dim, dim + ids.ndim)``."""

    dim: int
    ids: np.ndarray


def compress(dim: int, ids: np.ndarray) -> Chan:
    """Drop leading/trailing axes along which the ids do not change."""
    while ids.ndim > 1 and (ids.shape[-1] == 1 or (ids == ids[..., :1]).all()):
        ids = ids[..., 0]
    while ids.ndim > 1 and (ids.shape[0] == 1 or (ids == ids[:1]).all()):
        ids, dim = ids[0], dim + 1
    return Chan(dim, np.ascontiguousarray(ids))


def expand(chan: Chan, shape: tuple[int, ...]) -> np.ndarray:
    """Ids broadcast over every dim from ``chan.dim`` to the end of ``shape``."""
    rest = len(shape) - chan.dim - chan.ids.ndim
    return np.broadcast_to(chan.ids.reshape(chan.ids.shape + (1,) * rest), shape[chan.dim:])


class UnionFind:
    """Union-find over consecutive integer ids, smallest id as the root."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _is_shape_error(e: BaseException) -> bool:
    return isinstance(e, (RuntimeError, ValueError, IndexError)) and bool(
        _SHAPE_MESSAGE.search(str(e)))


def _where(n: fx.Node) -> str:
    """The user's source line of a node, when the tracer recorded it (torch.fx's own
    frames skipped)."""
    trace = n.meta.get("stack_trace")
    if not trace:
        return ""
    lines = [ln.strip() for ln in str(trace).strip().splitlines() if ln.strip()]
    code = {i: lines[i + 1] for i in range(len(lines) - 1) if not lines[i + 1].startswith("File ")}
    frames = [f"{ln}: {code[i]}" if i in code else ln for i, ln in enumerate(lines)
              if ln.startswith("File ") and "/torch/fx/" not in ln]
    return f" ({frames[-1]})" if frames else ""


class ChannelProp(fx.Interpreter):
    """Runs ``gm`` on example inputs; records shapes and the channel ids of every tensor."""

    def __init__(self, gm: fx.GraphModule, rule_for: RuleLookup) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # our errors name the node; no fx dump appended
        self.rule_for = rule_for
        self.uf = UnionFind()
        self.chan: dict[fx.Node, Any] = {}
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}
        self.frozen: dict[int, str] = {}
        #: (producer node name, the ids it created), in creation order.
        self.blocks: list[tuple[str, np.ndarray]] = []
        #: node name -> (input ids, output ids) of layers (nodes that read/write channels).
        self.slots: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        self.kinds: dict[str, str] = {}
        #: node name -> extra LayerInfo fields a rule recorded (kernel, groups, ...).
        self.fields: dict[str, dict[str, Any]] = {}

    # -- the pass ------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:
            what = f"running the model on the example inputs failed at node {n.format_node()}"
            if _is_shape_error(e):
                raise ShapeError(
                    f"{what}{_where(n)}: {type(e).__name__}: {e}. Check that example_inputs "
                    "have the shape the model expects (batch first)."
                ) from e
            raise TraceError(f"{what}{_where(n)}: {type(e).__name__}: {e}") from e
        self.shapes[n] = tuple(result.shape) if isinstance(result, torch.Tensor) else None
        try:
            module = self.module.get_submodule(str(n.target)) if n.op == "call_module" else None
            self.chan[n] = self.rule_for(n, module)(self, n, module, result)
        except TraceError:
            raise
        except Exception as e:
            raise TraceError(
                f"channel analysis failed at node {n.format_node()}{_where(n)}: "
                f"{type(e).__name__}: {e}") from e
        return result

    # -- what a rule may call ------------------------------------------------------------
    def shape(self, arg: Any) -> tuple[int, ...] | None:
        """The output shape of node ``arg`` (None for non-tensors and non-nodes)."""
        return self.shapes.get(arg) if isinstance(arg, fx.Node) else None

    def info(self, arg: Any) -> Chan | None:
        """The channels node ``arg`` carries (None when untracked or not a node)."""
        if isinstance(arg, fx.Node):
            value = self.chan.get(arg)
            return value if isinstance(value, Chan) else None
        return None

    def value(self, arg: Any) -> Any:
        """What was recorded for node ``arg``: a Chan, a list of them, or None."""
        return self.chan.get(arg) if isinstance(arg, fx.Node) else None

    def set_kind(self, n: fx.Node, kind: str) -> None:
        """Record the LayerInfo ``kind`` of node ``n``."""
        self.kinds[n.name] = kind

    def layer(self, n: fx.Node, kind: str, ids_in: np.ndarray | None,
              ids_out: np.ndarray | None, **fields: Any) -> None:
        """Record a layer: its kind, the ids it reads and writes, extra LayerInfo fields."""
        self.kinds[n.name] = kind
        self.slots[n.name] = (ids_in, ids_out)
        if fields:
            self.fields[n.name] = fields

    def new_ids(self, node: fx.Node, n: int, frozen: str | None = None) -> np.ndarray:
        """Fresh channel ids produced by ``node`` (frozen with a reason when given)."""
        ids = self.uf.add(n)
        self.blocks.append((node.name, ids))
        if frozen is not None:
            self.freeze(ids, frozen)
        return ids

    def freeze(self, ids: np.ndarray | None, reason: str) -> None:
        """Mark the channel classes of ``ids`` as not prunable, keeping the first reason."""
        if ids is None:
            return
        for i in np.unique(ids):
            self.frozen.setdefault(int(i), reason)

    def freeze_inputs(self, node: fx.Node, reason: str) -> None:
        """Freeze every channel that any input of ``node`` carries."""
        for arg in node.all_input_nodes:
            for c in flat_chans(self.chan.get(arg)):
                self.freeze(c.ids, reason)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join ids ``a[i]`` and ``b[i]`` pairwise (they are the same channels)."""
        pairs = np.unique(np.stack([np.ravel(a), np.ravel(b)], 1), axis=0)
        for i, j in pairs:
            self.uf.union(int(i), int(j))

    def along(self, node: fx.Node, arg: Any, dim: int, size: int, reason: str) -> np.ndarray:
        """Ids of ``arg`` along ``dim`` as a 1-D array; fresh frozen ids when not tracked."""
        chan = self.info(arg)
        if chan is not None and chan.dim == dim and chan.ids.ndim == 1:
            return chan.ids
        if chan is not None:
            self.freeze(chan.ids, f"{reason} reads a dim other than the tracked one")
        if isinstance(arg, fx.Node) and arg.op == "placeholder":
            return self.new_ids(arg, size, frozen="model input")
        producer = arg if isinstance(arg, fx.Node) else node
        return self.new_ids(producer, size, frozen=f"channels not tracked into {reason}")


def flat_chans(value: Any) -> list[Chan]:
    """Every Chan in a recorded value (a Chan, a list of them, or None)."""
    if isinstance(value, Chan):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in flat_chans(v)]
    return []

