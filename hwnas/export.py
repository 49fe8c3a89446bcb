"""Materialise a searched model (channels physically removed) and export verified ONNX.

Layer slicing lives in one table of paired functions per layer type,
``slice_out(module, keep)`` / ``slice_in(module, keep, scale)``; add your own layer with
:func:`register_slicer`.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from hwnas.graph import LayerInfo, TraceError
from hwnas.search import ChannelMask, SearchModel, WeightMasked

__all__ = [
    "ExportError",
    "ExportResult",
    "export_onnx",
    "materialize",
    "register_slicer",
    "slice_in",
    "slice_out",
]

SliceOut = Callable[[Any, torch.Tensor], None]
SliceIn = Callable[[Any, torch.Tensor, torch.Tensor], None]
_SLICERS: dict[type, tuple[SliceOut, SliceIn]] = {}


class ExportError(RuntimeError):
    """Export failed or the exported model does not match PyTorch (numbers in the message)."""


def register_slicer(layer_type: type, slice_out: SliceOut, slice_in: SliceIn) -> None:
    """Register the paired slicing functions of ``layer_type`` (and its subclasses).

    ``slice_out(module, keep)`` keeps output channels ``keep`` (a LongTensor, ascending);
    ``slice_in(module, keep, scale)`` first multiplies input channel ``c`` by
    ``scale[c]`` (the folded gate value), then keeps input channels ``keep``. Both change
    ``module`` in place.
    """
    if not isinstance(layer_type, type):
        raise TypeError(f"`layer_type` must be a class, but got {layer_type!r}")
    _SLICERS[layer_type] = (slice_out, slice_in)


def _slicers(module: nn.Module) -> tuple[SliceOut, SliceIn]:
    for cls in type(module).__mro__:
        if cls in _SLICERS:
            return _SLICERS[cls]
    raise KeyError(
        f"no slicer registered for {type(module).__name__}; known: "
        f"{', '.join(sorted(c.__name__ for c in _SLICERS))} (see hwnas.export.register_slicer)"
    )


def slice_out(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep output channels ``keep`` of ``module`` (in place)."""
    _slicers(module)[0](module, keep)


def slice_in(module: nn.Module, keep: torch.Tensor, scale: torch.Tensor) -> None:
    """Fold ``scale`` into input channels of ``module``, then keep ``keep`` (in place)."""
    _slicers(module)[1](module, keep, scale)


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous())


def _conv_out(m: nn.modules.conv._ConvNd, keep: torch.Tensor) -> None:
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    m.weight = _param(m.weight[keep])
    if m.bias is not None:
        m.bias = _param(m.bias[keep])
    m.out_channels = len(keep)
    if depthwise:
        m.in_channels = m.groups = len(keep)


def _conv_in(m: nn.modules.conv._ConvNd, keep: torch.Tensor, scale: torch.Tensor) -> None:
    if m.groups > 1:
        return  # depthwise: inputs follow the outputs; grouped convs are frozen
    shape = [1, -1] + [1] * (m.weight.dim() - 2)
    m.weight = _param((m.weight * scale.reshape(shape).to(m.weight.dtype))[:, keep])
    m.in_channels = len(keep)


def _linear_out(m: nn.Linear, keep: torch.Tensor) -> None:
    m.weight = _param(m.weight[keep])
    if m.bias is not None:
        m.bias = _param(m.bias[keep])
    m.out_features = len(keep)


def _linear_in(m: nn.Linear, keep: torch.Tensor, scale: torch.Tensor) -> None:
    m.weight = _param((m.weight * scale.reshape(1, -1).to(m.weight.dtype))[:, keep])
    m.in_features = len(keep)


def _norm_out(m: Any, keep: torch.Tensor) -> None:
    if getattr(m, "weight", None) is not None:
        m.weight = _param(m.weight[keep])
    if getattr(m, "bias", None) is not None:
        m.bias = _param(m.bias[keep])
    for name in ("running_mean", "running_var"):
        buf = getattr(m, name, None)
        if buf is not None:
            setattr(m, name, buf[keep].clone())
    if isinstance(m, nn.GroupNorm):
        m.num_channels = m.num_groups = len(keep)
    else:
        m.num_features = len(keep)


def _norm_in(m: Any, keep: torch.Tensor, scale: torch.Tensor) -> None:
    return None  # a normalisation layer's inputs are its outputs


register_slicer(nn.modules.conv._ConvNd, _conv_out, _conv_in)
register_slicer(nn.Linear, _linear_out, _linear_in)
register_slicer(nn.modules.batchnorm._NormBase, _norm_out, _norm_in)
register_slicer(nn.GroupNorm, _norm_out, _norm_in)


# ---------------------------------------------------------------------------- materialize


def _kept(slots: np.ndarray, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Boolean per slot: is the slot's channel kept."""
    out = np.ones(slots.shape[1], dtype=bool)
    for g, mask in keep.items():
        sel = slots[0] == g
        out[sel] = mask[slots[1, sel]]
    return out


def _count_kept(chan, keep: dict[int, np.ndarray]) -> int | None:
    if chan is None:
        return None
    _, slots = chan
    if slots.ndim != 2:
        return None
    return int(_kept(slots, keep).sum())


_CHUNK_NAMES = {"chunk", "split"}
_SHAPE_NAMES = {"view", "reshape", "expand"}


def _rewrite_constants(gm: fx.GraphModule, keep: dict[int, np.ndarray]) -> None:
    """Rewrite Python constants that depend on channel counts (split sizes, view shapes)."""
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        out_chan = node.meta.get("hwnas_chan")
        if name in _CHUNK_NAMES and isinstance(out_chan, list):
            dims = {c[0] for c in out_chan if c is not None}
            x = node.args[0]
            in_chan = x.meta.get("hwnas_chan") if isinstance(x, fx.Node) else None
            if in_chan is None or len(dims) != 1 or next(iter(dims)) != in_chan[0]:
                continue  # split along a non-channel dim
            sizes = [_count_kept(c, keep) for c in out_chan]
            if any(s is None for s in sizes):
                continue
            dim = next(iter(dims))
            node.op, node.target = "call_function", torch.split
            node.args, node.kwargs = (x, sizes), {"dim": dim}
        elif name in _SHAPE_NAMES and isinstance(out_chan, tuple) and out_chan[1].shape[0] == 2:
            dim, slots = out_chan
            if slots.ndim != 2:
                continue
            shape_args = list(node.args[1:])
            packed = len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple))
            if packed:
                shape_args = list(shape_args[0])
            if dim < len(shape_args) and isinstance(shape_args[dim], int) and shape_args[dim] != -1:
                shape_args[dim] = int(_kept(slots, keep).sum())
                node.args = (node.args[0], tuple(shape_args)) if packed else (
                    node.args[0], *shape_args)


def materialize(search: SearchModel) -> fx.GraphModule:
    """A plain model with the pruned channels physically removed.

    The deterministic (eval-mode) gates decide which channels stay; gate values below 1
    are folded into the weights of the layers that read the channels, so the result in
    eval mode computes what ``search`` computes in eval mode. Convs (depthwise included),
    linears, BatchNorm (running statistics kept) and GroupNorm are sliced, and Python
    constants that depend on channel counts (split sizes, view shapes) are rewritten. A
    group whose gates are all closed keeps one channel (its most likely one), so every
    layer stays valid; its gate value 0 is folded in, so it contributes nothing.

    The result is a ``torch.fx.GraphModule`` of plain ``torch.nn`` layers: no hwnas code
    runs at inference time.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Conv2d(8, 4, 3))
        >>> search = hwnas.wrap(net, torch.randn(1, 1, 8, 8))
        >>> search.gate(1).set_deterministic_([1, 0] * 4)
        >>> pruned = hwnas.materialize(search.eval())
        >>> pruned.get_submodule("0").out_channels
        4
    """
    if not isinstance(search, SearchModel):
        raise TypeError(f"`search` must be a SearchModel (from hwnas.wrap), but got "
                        f"{type(search).__name__}")
    with torch.no_grad():
        keep_t = search.keep_masks()
        keep = {g: m.cpu().numpy() for g, m in keep_t.items()}
        zdet = {g: search.channel_gate_values(g).detach().cpu() for g in search.free_groups}
        gm = copy.deepcopy(search.gm)
        for name, module in list(gm.named_modules()):
            if isinstance(module, WeightMasked):
                gm.set_submodule(name, module.layer)
        graph = gm.graph
        for node in list(graph.nodes):
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ChannelMask):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                gm.delete_submodule(node.target)
        for node in graph.nodes:
            info: LayerInfo | None = node.meta.get("hwnas")
            if node.op != "call_module" or info is None:
                continue
            if info.in_slots is None and info.out_slots is None:
                continue
            module = gm.get_submodule(node.target)
            if info.frozen is not None and info.kind not in ("conv", "linear", "norm"):
                continue
            try:
                out_fn, in_fn = _slicers(module)
            except KeyError:
                continue
            if info.in_slots is not None and not info.depthwise:
                slots = info.in_slots
                scale = torch.ones(slots.shape[1])
                for g, z in zdet.items():
                    sel = torch.as_tensor(slots[0] == g)
                    scale[sel] = z[torch.as_tensor(slots[1][slots[0] == g])]
                kept = torch.as_tensor(np.flatnonzero(_kept(slots, keep)), dtype=torch.long)
                if len(kept) < slots.shape[1] or bool((scale != 1).any()):
                    in_fn(module, kept, scale)
            if info.out_slots is not None:
                kept_out = np.flatnonzero(_kept(info.out_slots, keep))
                if len(kept_out) < info.out_slots.shape[1]:
                    out_fn(module, torch.as_tensor(kept_out, dtype=torch.long))
        _rewrite_constants(gm, keep)
        for node in graph.nodes:
            for key in ("hwnas", "hwnas_chan", "hwnas_mask_of"):
                node.meta.pop(key, None)
            if isinstance(node.type, str):
                # A string annotation (``from __future__ import annotations``) becomes a str
                # global of the generated code, which GraphModule.__reduce__ cannot pickle.
                node.type = None
        gm.meta.pop("hwnas_groups", None)
        # Unpickling a GraphModule re-traces its code with its tracer class: use torch's, so
        # that loading the exported model does not import hwnas.
        gm._tracer_cls = graph._tracer_cls = None
        graph.lint()
        gm.recompile()
    gm.train(search.training)
    return gm


# ---------------------------------------------------------------------------- ONNX


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: The ONNX file.
        opset: Its default-domain opset.
        input_names / output_names: Graph input and output names.
        max_abs_diff: Largest |onnxruntime - PyTorch| over the checked batches.
        batch_sizes: Batch sizes checked in onnxruntime.
        params / ops: Exact parameter and MAC counts of the exported model (batch 1); NaN
            when torch.fx cannot trace the model (the ONNX file is still verified).
    """

    path: Path
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_abs_diff: float
    batch_sizes: tuple[int, ...]
    params: float
    ops: float


def _batched(x: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch,) + tuple(x.shape[1:])
    if x.is_floating_point():
        return torch.randn(shape, generator=g, dtype=x.dtype) * x.std().clamp(min=1e-3) + x.mean()
    return x[:1].expand(shape).clone()


class _quiet_exporter_logs:
    """Silence the exporter's warnings about optional torchvision ops for one export."""

    def __init__(self) -> None:
        import logging

        self.logger = logging.getLogger("torch.onnx")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def restore(self) -> None:
        self.logger.setLevel(self.level)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    dynamic_batch: bool = True,
    opset: int | None = None,
    check: bool = True,
    atol: float = 1e-4,
) -> ExportResult:
    """Export ``model`` (or a :class:`SearchModel`, materialised first) to a verified ONNX file.

    Uses ``torch.onnx.export`` (the dynamo exporter, one self-contained file), then
    ``onnx.checker.check_model(full_check=True)``, then runs onnxruntime on the example
    input and on a batch of 3 (with ``dynamic_batch``) and compares with PyTorch. The file
    is written to a temporary name and moved to ``path`` only when every check passed: a
    failed export leaves nothing at ``path`` (and an older file there is kept).

    Args:
        model: A plain module or a SearchModel; exported in eval mode.
        path: Destination ``.onnx`` file.
        example_inputs: A tensor or a tuple of tensors, batch first.
        dynamic_batch: Make the batch dim symbolic.
        opset: ONNX opset (default: the exporter's).
        check: Run the checker and onnxruntime parity checks.
        atol: Largest allowed |onnxruntime - PyTorch|.

    Raises:
        ExportError: the exporter failed or onnxruntime differs by more than ``atol``.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     result = export_onnx(net, f"{d}/net.onnx", torch.randn(1, 4))
        >>> result.max_abs_diff < 1e-4, result.params
        (True, 58.0)
    """
    import onnx
    import onnxruntime as ort

    from hwnas.profile import profile

    if isinstance(model, SearchModel):
        model = materialize(model.eval())
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"`model` must be an nn.Module or SearchModel, but got {type(model).__name__}"
        )
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"`path` must end in .onnx, but got {str(path)!r}")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist")
    was_training = model.training
    model.eval()
    quiet = _quiet_exporter_logs()
    try:
        # torch.export specialises a dim of size 1, so trace with a batch of 2.
        trace_inputs = tuple(_batched(x, 2, 0) for x in example_inputs) if dynamic_batch \
            else example_inputs
        dynamic_shapes = None
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1)
            dynamic_shapes = tuple({0: batch} for _ in example_inputs)
        fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=path.parent)
        os.close(fd)
        try:
            try:
                with warnings.catch_warnings():
                    # torch 2.13's exporter warns about its own pytree internals
                    warnings.filterwarnings("ignore", message=".*LeafSpec.*",
                                            category=FutureWarning)
                    program = torch.onnx.export(
                        model, trace_inputs, dynamo=True, dynamic_shapes=dynamic_shapes,
                        opset_version=opset, external_data=False, verbose=False,
                    )
                if program is None:
                    raise ExportError("torch.onnx.export returned no program")
                program.save(tmp, external_data=False)
            except Exception as e:
                raise ExportError(
                    f"torch.onnx.export failed for {type(model).__name__}: {e}"
                ) from e
            proto = onnx.load(tmp)
            opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            input_names = tuple(i.name for i in proto.graph.input)
            output_names = tuple(o.name for o in proto.graph.output)
            diff = 0.0
            batches: tuple[int, ...] = ()
            if check:
                try:
                    onnx.checker.check_model(tmp, full_check=True)
                except Exception as e:
                    raise ExportError(f"onnx.checker rejected the exported model: {e}") from e
                options = ort.SessionOptions()
                options.log_severity_level = 3
                session = ort.InferenceSession(tmp, options, providers=["CPUExecutionProvider"])
                checks = [example_inputs]
                if dynamic_batch:
                    checks.append(tuple(_batched(x, 3, 1) for x in example_inputs))
                for inputs in checks:
                    with torch.no_grad():
                        expected = model(*inputs)
                    expected_list = list(expected) if isinstance(expected, (tuple, list)) \
                        else [expected]
                    feeds = {name: x.detach().cpu().numpy() for name, x in
                             zip(input_names, inputs, strict=True)}
                    got = session.run(None, feeds)
                    for e_t, o in zip(expected_list, got, strict=True):
                        d = float(np.abs(e_t.detach().cpu().numpy() - o).max()) if o.size else 0.0
                        diff = max(diff, d)
                    batches += (inputs[0].shape[0],)
                if not diff <= atol:
                    raise ExportError(
                        f"onnxruntime output differs from PyTorch by {diff:.3g} > atol={atol:g} "
                        f"(batch sizes {batches})"
                    )
            try:
                table = profile(model, tuple(x[:1] for x in example_inputs))
                params = ops = 0.0  # no costed layer (e.g. a LUT network): no params/MACs
                if not table.empty:
                    params, ops = float(table.iloc[-1]["params"]), float(table.iloc[-1]["ops"])
            except TraceError:
                # torch.onnx could export what torch.fx cannot trace: no cost counts then.
                params = ops = float("nan")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        model.train(was_training)
        quiet.restore()
    return ExportResult(
        path=path,
        opset=int(opset_used),
        input_names=input_names,
        output_names=output_names,
        max_abs_diff=diff,
        batch_sizes=batches,
        params=params,
        ops=ops,
    )
