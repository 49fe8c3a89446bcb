"""Model graph: torch.fx trace + shapes + channel groups, stored in ``node.meta["hwnas"]``."""

from __future__ import annotations

import math
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from hwnas import cost


@dataclass(frozen=True)
class LayerInfo:
    """What hwnas knows about one fx node (stored in ``node.meta["hwnas"]``).

    Attributes:
        name: The fx node name.
        target: Module path for ``call_module`` nodes, else the function/method name.
        kind: ``"conv"``, ``"linear"``, ``"norm"``, ``"layer"`` (another leaf module),
            ``"elementwise"``, ``"pool"``, ``"reshape"``, ``"cat"``, ``"split"``,
            ``"reduce"``, ``"input"``, ``"output"``, ``"attr"`` or ``"other"``.
        module_type: The module class for ``call_module`` nodes, else ``None``.
        module: The module itself (not compared, not printed).
        in_channels: Channels (features) the layer reads, or ``None``.
        out_channels: Channels (features) the layer writes, or ``None``.
        kernel: Kernel size (convs), else ``()``.
        stride: Stride (convs), else ``()``.
        groups: Conv groups (1 otherwise).
        depthwise: True for a conv with ``groups == in_channels == out_channels``.
        bias: Whether the layer adds a bias.
        out_shape: Output shape including the batch dim (``None`` for non-tensors).
        positions: Output positions per example at which each output channel is computed
            (conv: product of output spatial dims; linear: product of token dims; else 1).
        in_slots: For each input channel slot, its ``(group, position)`` (int arrays,
            shape ``(2, in_channels)``), or ``None`` when the node reads no channels.
        out_slots: Same for output channel slots.
        frozen: Why a group this node touches cannot be pruned, or ``None``.
    """

    name: str
    target: str
    kind: str
    module_type: type | None = None
    module: nn.Module | None = field(default=None, compare=False, repr=False)
    in_channels: int | None = None
    out_channels: int | None = None
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    groups: int = 1
    depthwise: bool = False
    bias: bool = False
    out_shape: tuple[int, ...] | None = None
    positions: int = 1
    in_slots: np.ndarray | None = field(default=None, compare=False, repr=False)
    out_slots: np.ndarray | None = field(default=None, compare=False, repr=False)
    frozen: str | None = None

    @property
    def kernel_size(self) -> int:
        """Product of the kernel dims (1 for non-convs)."""
        return math.prod(self.kernel) if self.kernel else 1


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together (one gate per group in a search).

    Attributes:
        index: Group id, the ``group`` in ``LayerInfo.in_slots`` / ``out_slots``.
        size: Number of independent channels (gate entries) in the group.
        producers: Nodes whose output channels belong to the group.
        consumers: Nodes that read the group's channels as inputs.
        frozen: Why the group cannot be pruned exactly, or ``None`` when it is free.
    """

    index: int
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    frozen: str | None = None


class TraceError(RuntimeError):
    """The model cannot be traced or analysed; the message names the node or source line."""

__all__ = ["ChannelGroup", "LayerInfo", "TraceError", "trace", "channel_groups", "layers"]

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
)
_UNARY = {
    "relu", "relu_", "relu6", "sigmoid", "tanh", "gelu", "silu", "hardswish", "hardsigmoid",
    "hardtanh", "leaky_relu", "elu", "mish", "softplus", "dropout", "dropout1d", "dropout2d",
    "contiguous", "clone", "float", "to", "detach", "abs", "neg", "clamp", "clip", "exp",
    "sqrt", "square", "type_as", "expand", "expand_as",
}
_BINARY = {"add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "maximum", "minimum"}
_SPATIAL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "interpolate", "upsample", "pad",
}
_RESHAPE = {"view", "reshape", "flatten", "transpose", "permute", "squeeze", "unsqueeze", "t"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_SPLIT = {"chunk", "split", "tensor_split", "unbind"}
_CAT = {"cat", "concat", "concatenate"}
_SHAPE = {"size", "dim", "numel", "getattr"}


def _args(node: fx.Node) -> tuple[Any, ...]:
    """``node.args`` typed loosely: fx's Argument union is too wide to be useful here."""
    return tuple(node.args)


def _kwargs(node: fx.Node) -> dict[str, Any]:
    return dict(node.kwargs)


def _fn_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", str(target))


@dataclass
class _Chan:
    """Channel ids carried by a tensor: ``ids`` covers dims [dim, dim + ids.ndim)."""

    dim: int
    ids: np.ndarray


def _compress(dim: int, ids: np.ndarray) -> _Chan:
    """Drop leading/trailing axes along which the ids do not change."""
    while ids.ndim > 1 and (ids.shape[-1] == 1 or (ids == ids[..., :1]).all()):
        ids = ids[..., 0]
    while ids.ndim > 1 and (ids.shape[0] == 1 or (ids == ids[:1]).all()):
        ids, dim = ids[0], dim + 1
    return _Chan(dim, np.ascontiguousarray(ids))


def _expand(chan: _Chan, shape: tuple[int, ...]) -> np.ndarray:
    """Ids broadcast over every dim from ``chan.dim`` to the end of ``shape``."""
    rest = len(shape) - chan.dim - chan.ids.ndim
    return np.broadcast_to(chan.ids.reshape(chan.ids.shape + (1,) * rest), shape[chan.dim:])


class _UnionFind:
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


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: tuple) -> None:
        super().__init__()
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self.leaf_names = {m for m in leaf_modules if isinstance(m, str)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaf_types) or module_qualified_name in self.leaf_names:
            return True
        if any(cost.lookup(metric, type(m)) is not None for metric in cost.metrics()):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(exc: BaseException) -> str:
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(torch_dir)]
    if not frames:
        return ""
    f = frames[-1]
    return f"\n  at {f.filename}:{f.lineno}: {f.line}"


def _symbolic_trace(model: nn.Module, leaf_modules: tuple) -> fx.GraphModule:
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as e:
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
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}{where}: {e}{_user_frame(e)}\n"
            f"Make the part with data-dependent control flow {suggestion}; hwnas then treats "
            f"it as one opaque layer whose channels are frozen."
        ) from e
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


class _ChannelProp(fx.Interpreter):
    """Runs the model on example inputs; records shapes and the channel ids of every tensor."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.uf = _UnionFind()
        self.chan: dict[fx.Node, Any] = {}
        self.frozen: dict[int, str] = {}
        self.blocks: list[tuple[str, np.ndarray]] = []  # producer node name, its ids
        self.slots: dict[str, tuple[Any, Any]] = {}
        self.kinds: dict[str, str] = {}

    # -- helpers -------------------------------------------------------------------------
    def new_ids(self, node: fx.Node, n: int, frozen: str | None = None) -> np.ndarray:
        """Fresh channel ids produced by ``node`` (frozen with a reason when given)."""
        ids = self.uf.add(n)
        self.blocks.append((node.name, ids))
        if frozen is not None:
            self.freeze(ids, frozen)
        return ids

    def freeze(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is None:
            return
        for i in np.unique(ids):
            self.frozen.setdefault(int(i), reason)

    def freeze_args(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            for c in self._flat(self.chan.get(arg)):
                self.freeze(c.ids, reason)

    @staticmethod
    def _flat(value) -> list[_Chan]:
        if isinstance(value, _Chan):
            return [value]
        if isinstance(value, (list, tuple)):
            return [c for v in value for c in _ChannelProp._flat(v)]
        return []

    def info(self, arg) -> _Chan | None:
        if isinstance(arg, fx.Node):
            value = self.chan.get(arg)
            return value if isinstance(value, _Chan) else None
        return None

    def along(self, node: fx.Node, arg, dim: int, size: int, reason: str) -> np.ndarray:
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

    # -- the pass ------------------------------------------------------------------------
    def run_node(self, n: fx.Node):
        try:
            result = super().run_node(n)
        except Exception as e:
            raise ValueError(
                f"running the model on the example inputs failed at node "
                f"{n.format_node()}: {e}. Check that example_inputs have the shape the model "
                f"expects (batch first)."
            ) from e
        try:
            self.chan[n] = self.propagate(n, result)
        except TraceError:
            raise
        except Exception as e:
            raise TraceError(f"channel analysis failed at node {n.format_node()}: {e}") from e
        is_tensor = isinstance(result, torch.Tensor)
        n.meta["tensor_meta_shape"] = tuple(result.shape) if is_tensor else None
        return result

    def propagate(self, n: fx.Node, result):
        if n.op == "placeholder":
            self.kinds[n.name] = "input"
            return None
        if n.op == "get_attr":
            self.kinds[n.name] = "attr"
            return None
        if n.op == "output":
            self.kinds[n.name] = "output"
            for c in self._flat([self.chan.get(a) for a in n.all_input_nodes]):
                self.freeze(c.ids, "model output")
            return None
        if n.op == "call_module":
            return self.module_rule(n, self.module.get_submodule(str(n.target)), result)
        return self.function_rule(n, _fn_name(n), result)

    def module_rule(self, n: fx.Node, m: nn.Module, out):
        x = _args(n)[0] if _args(n) else None
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
            self.kinds[n.name] = "conv"
            cin, cout, g = m.in_channels, m.out_channels, m.groups
            ids_in = self.along(n, x, 1, cin, "conv input")
            if g == 1:
                ids_out = self.new_ids(n, cout)
            elif g == cin == cout:
                ids_out = ids_in
            else:
                reason = f"grouped conv {n.target} (groups={g}) keeps its channels"
                self.freeze(ids_in, reason)
                ids_out = self.new_ids(n, cout, frozen=reason)
            self.slots[n.name] = (ids_in, ids_out)
            return _Chan(1, ids_out)
        if isinstance(m, nn.Linear):
            self.kinds[n.name] = "linear"
            ids_in = self.along(n, x, len(shape) - 1, m.in_features, "linear input")
            ids_out = self.new_ids(n, m.out_features)
            self.slots[n.name] = (ids_in, ids_out)
            return _Chan(len(shape) - 1, ids_out)
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            self.kinds[n.name] = "norm"
            c = int(m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features)
            ids = self.along(n, x, 1, c, f"{type(m).__name__} input")
            if isinstance(m, nn.GroupNorm) and m.num_groups != m.num_channels:
                self.freeze(ids, f"GroupNorm {n.target} normalises across channels")
            self.slots[n.name] = (ids, ids)
            return _Chan(1, ids)
        if isinstance(m, nn.LayerNorm):
            self.kinds[n.name] = "norm"
            chan = self.info(x)
            k = len(m.normalized_shape)
            if chan is not None and chan.dim + chan.ids.ndim > len(shape) - k:
                self.freeze(chan.ids, f"LayerNorm {n.target} normalises over the channel dim")
            if chan is not None and chan.dim == len(shape) - 1 and chan.ids.ndim == 1:
                self.slots[n.name] = (chan.ids, chan.ids)
            return chan
        if isinstance(m, _ACTIVATIONS):
            self.kinds[n.name] = "elementwise"
            return self.info(x)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            return self.softmax(n, x, m.dim, shape)
        if isinstance(m, _POOLS):
            self.kinds[n.name] = "pool"
            return self.spatial(n, x, shape)
        if isinstance(m, nn.Flatten):
            self.kinds[n.name] = "reshape"
            return self.reshaped(n, x, shape)
        self.kinds[n.name] = "layer"
        reason = f"{type(m).__name__} {n.target} is opaque to channel pruning"
        self.freeze_args(n, reason)
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            x_shape = x.meta.get("tensor_meta_shape") if isinstance(x, fx.Node) else None
            layer_in = None
            if x_shape is not None and len(x_shape) >= 2:
                layer_in = self.along(n, x, 1, x_shape[1], reason)
            ids_out = self.new_ids(n, shape[-1] if out.dim() == 2 else shape[1], frozen=reason)
            self.slots[n.name] = (layer_in, ids_out)
            return _Chan(1, ids_out)
        return None

    def function_rule(self, n: fx.Node, name: str, out):
        args = _args(n)
        x = args[0] if args else None
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        if name in _SHAPE or not isinstance(out, (torch.Tensor, tuple, list)):
            self.kinds[n.name] = "other"
            return None
        if name == "getitem":
            return self.getitem(n, x, args[1], shape)
        if name in _UNARY:
            self.kinds[n.name] = "elementwise"
            return self.info(x)
        if name in ("softmax", "log_softmax"):
            dim = args[1] if len(args) > 1 else _kwargs(n).get("dim")
            return self.softmax(n, x, dim, shape)
        if name in _BINARY or name == "where":
            self.kinds[n.name] = "elementwise"
            return self.binary(n, shape)
        if name in _SPATIAL:
            self.kinds[n.name] = "pool"
            if name == "pad":
                pad = args[1] if len(args) > 1 else _kwargs(n)["pad"]
                chan = self.info(x)
                if chan is not None and chan.dim + chan.ids.ndim > len(shape) - len(pad) // 2:
                    self.freeze(chan.ids, "pad over the channel dim")
                return chan
            return self.spatial(n, x, shape)
        if name in _RESHAPE:
            self.kinds[n.name] = "reshape"
            return self.reshaped(n, x, shape)
        if name in _REDUCE:
            self.kinds[n.name] = "reduce"
            return self.reduced(n, x, shape)
        if name in _CAT:
            self.kinds[n.name] = "cat"
            return self.cat(n, shape)
        if name in _SPLIT:
            self.kinds[n.name] = "split"
            return self.split(n, x, out)
        self.kinds[n.name] = "other"
        self.freeze_args(n, f"unknown op {name!r} at node {n.name}")
        return None

    def softmax(self, n: fx.Node, x, dim, shape):
        self.kinds[n.name] = "elementwise"
        chan = self.info(x)
        if chan is not None and dim is not None:
            d = dim % len(shape)
            if chan.dim <= d < chan.dim + chan.ids.ndim:
                self.freeze(chan.ids, f"softmax over the channel dim at {n.name}")
        return chan

    def spatial(self, n: fx.Node, x, shape):
        chan = self.info(x)
        if chan is not None and (chan.dim != 1 or chan.ids.ndim != 1):
            self.freeze(chan.ids, f"pooling over tracked channels at {n.name}")
        return chan

    def binary(self, n: fx.Node, shape):
        operands = [a for a in _args(n) if isinstance(a, fx.Node)]
        chans: list[tuple[_Chan | None, Any, int]] = []
        for a in operands:
            a_shape = a.meta.get("tensor_meta_shape")
            if a_shape is None:
                continue
            chan = self.info(a)
            offset = len(shape) - len(a_shape)
            if chan is None:
                chans.append((None, a_shape, offset))
            else:
                chans.append((_Chan(chan.dim + offset, chan.ids), a_shape, offset))
        tracked = [c for c, _, _ in chans if c is not None]
        if not tracked:
            return None
        ref = tracked[0]
        lo = min(c.dim for c in tracked)
        hi = max(c.dim + c.ids.ndim for c in tracked)
        for chan, a_shape, offset in chans:
            local = [a_shape[d - offset] if d - offset >= 0 else 1 for d in range(lo, hi)]
            if chan is None:
                if any(s > 1 for s in local):
                    for c in tracked:
                        self.freeze(c.ids, f"combined with an untracked tensor at {n.name}")
                continue
            if chan is ref:
                continue
            if all(s == 1 for s in local):
                continue
            if chan.dim != ref.dim or chan.ids.shape != ref.ids.shape:
                for c in tracked:
                    self.freeze(c.ids, f"channel layouts differ at {n.name}")
                continue
            pairs = np.unique(np.stack([ref.ids.ravel(), chan.ids.ravel()], 1), axis=0)
            for i, j in pairs:
                self.uf.union(int(i), int(j))
        out_ref = ref
        if shape and any(shape[d] != (out_ref.ids.shape[d - out_ref.dim]) for d in range(
                out_ref.dim, out_ref.dim + out_ref.ids.ndim)):
            # ``ref`` was broadcast (size-1 channel dim); take an operand that is not.
            full = [c for c in tracked if c.ids.shape == tuple(shape[c.dim:c.dim + c.ids.ndim])]
            if not full:
                for c in tracked:
                    self.freeze(c.ids, f"broadcast over channels at {n.name}")
                return None
            out_ref = full[0]
        return out_ref

    def reshaped(self, n: fx.Node, x, shape):
        chan = self.info(x)
        if chan is None or not isinstance(x, fx.Node):
            return None
        in_shape = x.meta["tensor_meta_shape"]
        name = _fn_name(n) if n.op != "call_module" else "flatten"
        d = chan.dim
        full = _expand(chan, in_shape)
        if name in ("transpose", "permute", "t"):
            if name == "t":
                perm = list(range(len(in_shape)))[::-1]
            elif name == "transpose":
                a, b = (int(v) % len(in_shape) for v in _args(n)[1:3])
                perm = list(range(len(in_shape)))
                perm[a], perm[b] = perm[b], perm[a]
            else:
                args = _args(n)
                dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
                perm = [int(v) % len(in_shape) for v in dims]
            if d > 0 and perm[0] != 0:
                self.freeze(chan.ids, f"permute moves the batch dim at {n.name}")
                return None
            # Ids over every dim but the batch dim: dims before the channels (spatial, tokens)
            # may move too, e.g. NCHW -> NHWC -> NCHW around a channels-last Linear.
            lead = min(d, 1)
            full = np.broadcast_to(full, tuple(in_shape[lead:]))
            new = np.transpose(full, [p - lead for p in perm[lead:]])
            return self.checked(n, _compress(lead, new))
        # view / reshape / flatten / squeeze / unsqueeze: keep the dims before the channels
        k = d
        while k > 0 and (len(shape) < k or tuple(shape[:k]) != tuple(in_shape[:k])):
            k -= 1
        if k < d and math.prod(in_shape[k:d]) != 1:
            self.freeze(chan.ids, f"reshape merges the channel dim with batch dims at {n.name}")
            return None
        if math.prod(shape[k:]) != full.size:
            self.freeze(chan.ids, f"reshape changes sizes at {n.name}")
            return None
        return self.checked(n, _compress(k, np.reshape(full, shape[k:])))

    def checked(self, n: fx.Node, chan: _Chan) -> _Chan:
        if chan.ids.ndim > 1:
            self.freeze(chan.ids, f"reshape at {n.name} splits the channel dim (mixes channels)")
        return chan

    def reduced(self, n: fx.Node, x, shape):
        chan = self.info(x)
        if chan is None:
            return None
        in_shape = x.meta["tensor_meta_shape"]
        dims = _args(n)[1] if len(_args(n)) > 1 else _kwargs(n).get("dim")
        keepdim = _args(n)[2] if len(_args(n)) > 2 else _kwargs(n).get("keepdim", False)
        if dims is None:
            self.freeze(chan.ids, f"reduction over all dims at {n.name}")
            return None
        dims = [int(v) % len(in_shape)
                for v in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if any(chan.dim <= v < chan.dim + chan.ids.ndim for v in dims):
            self.freeze(chan.ids, f"reduction over the channel dim at {n.name}")
            return None
        shift = 0 if keepdim else sum(1 for v in dims if v < chan.dim)
        return _Chan(chan.dim - shift, chan.ids)

    def cat(self, n: fx.Node, shape):
        tensors = _args(n)[0]
        dim = _args(n)[1] if len(_args(n)) > 1 else _kwargs(n).get("dim", 0)
        dim = int(dim) % len(shape)
        parts = []
        for t in tensors:
            size = t.meta["tensor_meta_shape"][dim]
            parts.append(self.along(n, t, dim, size, f"cat input at {n.name}"))
        chans = [self.info(t) for t in tensors]
        if dim == 1 or all(c is not None and c.dim == dim for c in chans):
            return _Chan(dim, np.concatenate(parts))
        self.freeze(np.concatenate(parts), f"cat along a non-channel dim at {n.name}")
        return None

    def split(self, n: fx.Node, x, out):
        chan = self.info(x)
        if chan is None:
            return None
        in_shape = x.meta["tensor_meta_shape"]
        name = _fn_name(n)
        dim = _kwargs(n).get("dim", _args(n)[2] if len(_args(n)) > 2 else 0)
        if name == "unbind":
            dim = _args(n)[1] if len(_args(n)) > 1 else _kwargs(n).get("dim", 0)
        dim = int(dim) % len(in_shape)
        if not (chan.dim <= dim < chan.dim + chan.ids.ndim):
            return [chan for _ in out]
        if chan.ids.ndim != 1 or name == "unbind" or name == "tensor_split":
            self.freeze(chan.ids, f"{name} over the channel dim at {n.name}")
            return [chan for _ in out]
        result, start = [], 0
        for piece in out:
            size = piece.shape[dim]
            result.append(_Chan(dim, chan.ids[start:start + size]))
            start += size
        return result

    def getitem(self, n: fx.Node, x, index, shape):
        value = self.chan.get(x) if isinstance(x, fx.Node) else None
        if isinstance(value, list):
            self.kinds[n.name] = "split"
            return value[index]
        chan = self.info(x)
        self.kinds[n.name] = "reshape"
        if chan is None:
            return None
        in_shape = x.meta["tensor_meta_shape"]
        if in_shape is None:
            return None
        idx = index if isinstance(index, tuple) else (index,)
        full_slice = all(isinstance(i, slice) and i == slice(None) for i in idx[: chan.dim + 1])
        if len(idx) <= chan.dim or full_slice and all(
                isinstance(i, slice) for i in idx[: chan.dim + chan.ids.ndim]):
            if len(idx) > chan.dim and any(
                    not (isinstance(i, slice) and i == slice(None))
                    for i in idx[chan.dim: chan.dim + chan.ids.ndim]):
                self.freeze(chan.ids, f"slicing the channel dim at {n.name}")
            return chan
        self.freeze(chan.ids, f"indexing over the channel dim at {n.name}")
        return None


def _finalize(gm: fx.GraphModule, prop: _ChannelProp) -> tuple[ChannelGroup, ...]:
    """Union channel classes by producer into groups; write LayerInfo into node.meta."""
    uf = prop.uf
    n_ids = len(uf.parent)
    cls = np.array([uf.find(i) for i in range(n_ids)], dtype=np.int64)
    # classes that share a producer belong to one group
    guf = _UnionFind()
    guf.add(n_ids)
    for _, ids in prop.blocks:
        roots = np.unique(cls[ids])
        for r in roots[1:]:
            guf.union(int(roots[0]), int(r))
    class_roots = np.unique(cls)
    group_of_root: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    for r in class_roots:
        g = guf.find(int(r))
        members.setdefault(g, []).append(int(r))
    group_index = {g: k for k, g in enumerate(sorted(members))}
    position = np.zeros(n_ids, dtype=np.int64)
    group = np.zeros(n_ids, dtype=np.int64)
    pos_of_root: dict[int, int] = {}
    for g, group_roots in members.items():
        for p, r in enumerate(sorted(group_roots)):
            pos_of_root[r] = p
            group_of_root[r] = group_index[g]
    for i in range(n_ids):
        group[i] = group_of_root[int(cls[i])]
        position[i] = pos_of_root[int(cls[i])]
    frozen: dict[int, str] = {}
    for i, why in sorted(prop.frozen.items()):
        frozen.setdefault(int(group[i]), why)

    producers: dict[int, list[str]] = {k: [] for k in range(len(members))}
    consumers: dict[int, list[str]] = {k: [] for k in range(len(members))}
    for name, ids in prop.blocks:
        for g in np.unique(group[ids]):
            producers[int(g)].append(name)

    def slots(ids: np.ndarray | None) -> np.ndarray | None:
        if ids is None:
            return None
        return np.stack([group[ids], position[ids]])

    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        ids_in, ids_out = prop.slots.get(node.name, (None, None))
        if ids_in is not None:
            for g in np.unique(group[ids_in]):
                consumers[int(g)].append(node.name)
        chan = prop.chan.get(node)
        node.meta["hwnas_chan"] = _map_chan(chan, group, position)
        shape = node.meta.pop("tensor_meta_shape", None)
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        kind = prop.kinds.get(node.name, "other")
        own = ids_out if ids_out is not None else ids_in
        touched = [] if own is None else [int(g) for g in np.unique(group[own])]
        reason = next((frozen[g] for g in touched if g in frozen), None)
        node.meta["hwnas"] = _layer_info(node, kind, module, shape, slots(ids_in), slots(ids_out),
                                         reason)
    groups = tuple(
        ChannelGroup(
            index=k,
            size=len(members[g]),
            producers=tuple(dict.fromkeys(producers[k])),
            consumers=tuple(dict.fromkeys(consumers[k])),
            frozen=frozen.get(k),
        )
        for g, k in group_index.items()
    )
    return groups


def _map_chan(chan, group: np.ndarray, position: np.ndarray):
    if isinstance(chan, _Chan):
        return (chan.dim, np.stack([group[chan.ids], position[chan.ids]]))
    if isinstance(chan, list):
        return [_map_chan(c, group, position) for c in chan]
    return None


def _layer_info(node: fx.Node, kind: str, module: nn.Module | None, shape: Any,
                in_slots: np.ndarray | None, out_slots: np.ndarray | None,
                reason: str | None) -> LayerInfo:
    common: dict[str, Any] = dict(
        name=node.name,
        target=str(node.target) if node.op == "call_module" else _fn_name(node),
        kind=kind,
        module_type=type(module) if module is not None else None,
        module=module,
        out_shape=tuple(shape) if shape is not None else None,
        in_slots=in_slots,
        out_slots=out_slots,
        frozen=reason,
        in_channels=None if in_slots is None else in_slots.shape[1],
        out_channels=None if out_slots is None else out_slots.shape[1],
    )
    if isinstance(module, nn.modules.conv._ConvNd):
        positions = math.prod(shape[2:]) if shape is not None else 1
        return LayerInfo(
            **common,
            kernel=tuple(module.kernel_size),
            stride=tuple(module.stride),
            groups=module.groups,
            depthwise=(module.groups > 1
                       and module.groups == module.in_channels == module.out_channels),
            bias=module.bias is not None,
            positions=positions,
        )
    if isinstance(module, nn.Linear):
        positions = math.prod(shape[1:-1]) if shape is not None and len(shape) > 2 else 1
        return LayerInfo(**common, bias=module.bias is not None, positions=positions)
    return LayerInfo(**common)


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    leaf_modules: tuple[type | str, ...] = (),
) -> fx.GraphModule:
    """Trace ``model`` with torch.fx and annotate every node with a :class:`LayerInfo`.

    The model is run once on ``example_inputs`` (in its current train/eval mode, without
    gradients) to record shapes. Channel dimensions that must be pruned together (residual
    adds, concats, splits, depthwise convs, flatten->linear) are joined into
    :class:`ChannelGroup` s, available with :func:`channel_groups`. Groups that cannot be
    pruned exactly are frozen with a reason.

    Args:
        model: The model. It is not modified.
        example_inputs: One tensor or a tuple of positional inputs, batch first.
        leaf_modules: Module classes or qualified names to keep opaque (not traced into),
            e.g. modules with data-dependent control flow. Their channels are frozen.

    Returns:
        The ``fx.GraphModule``; ``node.meta["hwnas"]`` holds each node's LayerInfo.

    Raises:
        TraceError: torch.fx cannot trace the model (the message names the source line
            and suggests ``leaf_modules=``).
        ValueError: the example inputs do not fit the model.

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
        raise TypeError(f"`model` must be an nn.Module, but got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        raise TypeError("`example_inputs` must be a tensor or a tuple of tensors")
    for m in leaf_modules:
        if not isinstance(m, (type, str)):
            raise TypeError(f"`leaf_modules` entries must be classes or names, but got {m!r}")
    gm = _symbolic_trace(model, tuple(leaf_modules))
    n_inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    if len(example_inputs) != n_inputs:
        raise ValueError(
            f"the model takes {n_inputs} input(s), but {len(example_inputs)} example "
            f"input(s) were given"
        )
    prop = _ChannelProp(gm)
    with torch.no_grad():
        prop.run(*example_inputs)
    gm.meta["hwnas_groups"] = _finalize(gm, prop)
    return gm


def channel_groups(gm: fx.GraphModule) -> tuple[ChannelGroup, ...]:
    """The channel groups of a traced model (see :func:`trace`)."""
    if "hwnas_groups" not in gm.meta:
        raise ValueError("`gm` was not made by hwnas.trace(); call hwnas.trace(model, x) first")
    return gm.meta["hwnas_groups"]


def layers(gm: fx.GraphModule) -> list[LayerInfo]:
    """LayerInfo of every ``call_module`` node with channels (convs, linears, norms, ...)."""
    return [
        n.meta["hwnas"]
        for n in gm.graph.nodes
        if n.op == "call_module" and n.meta["hwnas"].kind in ("conv", "linear", "norm", "layer")
    ]
