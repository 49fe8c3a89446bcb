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


def is_shape_error(e: BaseException) -> bool:
    return isinstance(e, (RuntimeError, ValueError, IndexError)) and bool(
        _SHAPE_MESSAGE.search(str(e)))


def shape_message(n: fx.Node, module: nn.Module | None, shapes: list[Any],
                  e: BaseException) -> str:
    """One line under 200 characters: the layer, the shapes it got, torch's complaint."""
    what = f"layer {n.target!r} ({type(module).__name__})" if module is not None \
        else f"{_name(n.target)} at {n.name}"
    got = ", ".join("x".join(map(str, s)) for s in shapes if s is not None) or "no tensor"
    head = f"input {got} does not fit {what}"
    tail = ". Check that example_inputs have the shape the model expects"
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "expected" in detail:  # conv: "Given groups=1, weight of size ..., expected input..."
        detail = detail[detail.index("expected"):]
    room = 199 - len(head) - len(tail) - 3
    if room < 20:
        return (head + tail)[:199]
    return f"{head} ({detail if len(detail) <= room else detail[:room - 3] + '...'}){tail}"


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


#: Ops through which a constant (a tensor computed from parameters and buffers only) keeps
#: the dims of its parameter: same-shape elementwise ops, and ops that only move dims.
_SAME_DIMS = frozenset({
    "clamp", "clip", "exp", "log", "sigmoid", "tanh", "neg", "abs", "float", "half", "double",
    "to", "type_as", "contiguous", "clone", "detach", "mul", "add", "sub", "truediv", "div",
    "pow", "sqrt", "rsqrt", "relu", "softplus", "reciprocal", "square", "iadd", "imul",
    "isub", "itruediv",
})
_RESHAPES = frozenset({"view", "reshape", "flatten", "unsqueeze", "squeeze", "getitem"})
_EXPANDS = frozenset({"expand", "expand_as", "broadcast_to"})
_PERMUTES = frozenset({"permute", "transpose", "t", "swapaxes", "swapdims"})


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _reshape_map(in_shape: tuple[int, ...], in_map: tuple[int | None, ...],
                 out_shape: tuple[int, ...]) -> tuple[int | None, ...] | None:
    """Dim map through an op that only adds or removes size-1 dims, else None."""
    src = [(size, m) for size, m in zip(in_shape, in_map, strict=True) if size != 1]
    dst = [k for k, size in enumerate(out_shape) if size != 1]
    if [size for size, _ in src] != [out_shape[k] for k in dst]:
        return None
    out: list[int | None] = [None] * len(out_shape)
    for (_, m), k in zip(src, dst, strict=True):
        out[k] = m
    return tuple(out)


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
        #: constant node -> its roots: (get_attr target, the parameter dim of each of the
        #: node's dims, or None) for each parameter or buffer it is computed from, by ops
        #: that keep their dims.
        self.origin: dict[fx.Node, list[tuple[str, tuple[int | None, ...]]]] = {}
        #: get_attr target -> parameter dim -> (channel ids, gate folded there per index).
        self.params: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        #: node name -> targets of the parameters it reads that take its gates.
        self.scaled: dict[str, list[str]] = {}
        self._current: fx.Node | None = None
        #: The examples' batch size (dim 0 of the first input).
        self.batch = 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim()), None)
        self.batch = int(first.shape[0]) if first is not None else 0
        return super().run(*args, **kwargs)

    # -- the pass ------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:
            what = f"running the model on the example inputs failed at node {n.format_node()}"
            if is_shape_error(e):
                module = self.module.get_submodule(str(n.target)) \
                    if n.op == "call_module" else None
                shapes = [self.shapes.get(a) for a in n.all_input_nodes]
                raise ShapeError(shape_message(n, module, shapes, e)) from e
            raise TraceError(f"{what}{_where(n)}: {type(e).__name__}: {e}") from e
        self.shapes[n] = tuple(result.shape) if isinstance(result, torch.Tensor) else None
        if isinstance(result, torch.Tensor):
            self._track_origin(n, result)
        try:
            module = self.module.get_submodule(str(n.target)) if n.op == "call_module" else None
            self._current = n
            self.chan[n] = self.rule_for(n, module)(self, n, module, result)
        except TraceError:
            raise
        except Exception as e:
            raise TraceError(
                f"channel analysis failed at node {n.format_node()}{_where(n)}: "
                f"{type(e).__name__}: {e}") from e
        return result

    def _track_origin(self, n: fx.Node, result: torch.Tensor) -> None:
        if n.op == "get_attr":
            self.origin[n] = [(str(n.target), tuple(range(result.dim())))]
            return
        if n.op not in ("call_function", "call_method"):
            return
        tensors = [a for a in n.all_input_nodes if self.shapes.get(a) is not None]
        if not tensors or any(t not in self.origin for t in tensors):
            return
        out_shape, name = tuple(result.shape), _name(n.target)
        roots: list[tuple[str, tuple[int | None, ...]]] = []
        for src in tensors:
            in_shape = self.shapes[src]
            assert in_shape is not None
            for target, dmap in self.origin[src]:
                new = _moved_map(n, name, in_shape, dmap, out_shape, len(tensors) > 1)
                if new is None:
                    return
                roots.append((target, new))
        self.origin[n] = roots

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        # fx passes list arguments as immutable lists; the traced code passes fresh lists,
        # which some wrapped functions change in place (torchvision's video Swin)
        return super().call_function(target, _mutable(args), _mutable(kwargs))

    # -- what a rule may call ------------------------------------------------------------
    def concrete(self, arg: Any) -> Any:
        """The value ``arg`` had in the run (a node's output, or ``arg`` itself)."""
        return self.env.get(arg, arg) if isinstance(arg, fx.Node) else arg

    def constant_dim(self, arg: Any, dim: int) -> bool:
        """True when ``arg`` is a constant (computed from parameters and buffers only) whose
        ``dim`` is a dim of one of them (the others broadcast along it)."""
        if not isinstance(arg, fx.Node) or arg not in self.origin:
            return False
        rank = len(self.origin[arg][0][1])
        return -rank <= dim < rank and any(dmap[dim] is not None for _, dmap in self.origin[arg])

    def adopt(self, arg: Any, dim: int, ids: np.ndarray, scaled: Any = False) -> bool:
        """Give the channels ``ids`` to dim ``dim`` of the constant ``arg``.

        ``arg`` must be a parameter or buffer (a ``get_attr`` node), or computed from
        parameters and buffers by ops that keep their dims (view, unsqueeze, expand,
        elementwise arithmetic, ...): each is then sliced with the channels. ``scaled`` (a
        bool, or one per index) says where the layer that reads the parameter reads the
        channel, so its gate value is folded in there (into the first parameter only).
        Returns False (and records nothing) when ``arg`` is not such a constant.
        """
        if not self.constant_dim(arg, dim):
            return False
        ids = np.asarray(ids)
        flags = np.broadcast_to(np.asarray(scaled, dtype=bool), ids.shape).copy()
        roots = [(t, dmap[dim]) for t, dmap in self.origin[arg] if dmap[dim] is not None]
        for target, pdim in roots:
            old = self.params.get(target, {}).get(pdim)  # type: ignore[arg-type]
            if old is not None and old[0].shape != ids.shape:
                return False
        for k, (target, pdim) in enumerate(roots):
            assert pdim is not None
            mine = flags if k == 0 else np.zeros_like(flags)
            dims = self.params.setdefault(target, {})
            if pdim in dims:
                old_ids, old_flags = dims[pdim]
                self.union(old_ids, ids)
                dims[pdim] = (old_ids, old_flags | mine)
            else:
                dims[pdim] = (ids, mine)
            if mine.any() and self._current is not None:
                self.scaled.setdefault(self._current.name, []).append(target)
        return True

    def is_parameter(self, arg: Any) -> bool:
        """True when ``arg`` is computed from parameters only (no buffer, no activation)."""
        if not isinstance(arg, fx.Node) or arg not in self.origin:
            return False
        for target, _ in self.origin[arg]:
            owner, _, name = target.rpartition(".")
            if name not in self.module.get_submodule(owner)._parameters:
                return False
        return True

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
        shape = self.shapes.get(n)
        if shape and shape[0] > 1 and self.batch == 1:
            # a leading dim other than the batch (patches folded into it, MobileViT; tokens
            # first): its positions count per example too
            for key in ("positions", "attn_positions"):
                if fields.get(key):
                    fields[key] *= shape[0]
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


def _moved_map(n: fx.Node, name: str, in_shape: tuple[int, ...], dmap: tuple[int | None, ...],
               out_shape: tuple[int, ...], several: bool) -> tuple[int | None, ...] | None:
    """The parameter dim of each output dim of op ``n`` on a constant, or None when the op
    does not keep the constant's dims. ``several``: more than one constant operand (then
    only broadcasting elementwise ops keep them)."""
    if name in _SAME_DIMS and len(out_shape) >= len(in_shape):
        lead = len(out_shape) - len(in_shape)  # broadcasting aligns the trailing dims
        if any(size not in (1, out_shape[lead + k]) for k, size in enumerate(in_shape)):
            return None
        return (None,) * lead + tuple(
            m if size == out_shape[lead + k] and size > 1 else None
            for k, (size, m) in enumerate(zip(in_shape, dmap, strict=True)))
    if several:
        return None
    if name in _RESHAPES:
        return _reshape_map(in_shape, dmap, out_shape)
    if name in _EXPANDS and len(out_shape) >= len(in_shape):
        lead = len(out_shape) - len(in_shape)
        return (None,) * lead + tuple(
            m if size == out_shape[lead + k] else None
            for k, (size, m) in enumerate(zip(in_shape, dmap, strict=True)))
    if name in _PERMUTES and len(out_shape) == len(in_shape):
        perm = _permutation_of(n, name, len(in_shape))
        return None if perm is None else tuple(dmap[p] for p in perm)
    return None


def _permutation_of(n: fx.Node, name: str, rank: int) -> list[int] | None:
    """The dim permutation of a permute / transpose / t / swapaxes node."""
    args = tuple(n.args)
    kwargs = dict(n.kwargs)
    if name == "t":
        return list(range(rank))[::-1]
    if name in ("transpose", "swapaxes", "swapdims"):
        pair = list(args[1:3])
        for key in ("dim0", "dim1", "axis0", "axis1"):
            if key in kwargs:
                pair.append(kwargs[key])
        if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
            return None
        a, b = (int(v) % rank for v in pair)  # type: ignore[arg-type]
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    dims = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else (
        args[1] if len(args) > 1 else kwargs.get("dims"))
    if not isinstance(dims, (list, tuple)) or not all(isinstance(v, int) for v in dims):
        return None
    return [int(v) % rank for v in dims]


def _mutable(value: Any) -> Any:
    if isinstance(value, list):
        return [_mutable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_mutable(v) for v in value)
    if isinstance(value, dict):
        return {k: _mutable(v) for k, v in value.items()}
    return value


def flat_chans(value: Any) -> list[Chan]:
    """Every Chan in a recorded value (a Chan, a list of them, or None)."""
    if isinstance(value, Chan):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in flat_chans(v)]
    return []

