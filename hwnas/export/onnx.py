"""Verified ONNX export of any ``nn.Module``: torch.onnx, onnx.checker, onnxruntime parity.

A model passes only when the checker accepts the file and onnxruntime reproduces every
PyTorch output within ``|ort - torch| <= atol + rtol * |torch|`` at each checked batch size.
A non-finite value on either side is a mismatch, never a pass. Outputs may be a tensor or
tuples, lists and dicts of tensors, nested; they are compared leaf by leaf in the order
``torch.utils._pytree`` flattens them, which is the order of the ONNX graph's outputs.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from hwnas._internal.files import atomic_write
from hwnas._internal.modes import eval_mode
from hwnas.errors import (
    ExportError,
    InvalidTypeError,
    InvalidValueError,
    MissingFileError,
    TraceError,
)
from hwnas.export.verify import (
    batched,
    check_tolerance,
    compare,
    example_tuple,
    float32_cpu_copy,
    tensor_leaves,
)

__all__ = ["Exportable", "ExportResult", "export_onnx"]


@runtime_checkable
class Exportable(Protocol):
    """A model that is exported as another (a :class:`~hwnas.SearchModel` as its pruned
    plain model): the exporter knows nothing of the search, only this protocol."""

    def export(self) -> nn.Module: ...

    def arch_parameters(self) -> Iterator[nn.Parameter]: ...


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: The ONNX file.
        opset: Its default-domain opset.
        input_names / output_names: Graph input and output names.
        max_abs_diff: Largest |onnxruntime - PyTorch| over the checked batches and outputs.
        max_rel_diff: Largest |onnxruntime - PyTorch| / |PyTorch| (0 where both are 0).
        batch_sizes: Batch sizes checked in onnxruntime.
        params / ops: Exact parameter and MAC counts of the exported model (batch 1); NaN
            when torch.fx cannot trace the model (the ONNX file is still verified).
    """

    path: Path
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_abs_diff: float
    max_rel_diff: float
    batch_sizes: tuple[int, ...]
    params: float
    ops: float


def _export_program(model: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic_batch: bool,
                    opset: int | None, tmp: str) -> None:
    trace_inputs = inputs
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specialises a dim of size 1, so trace with a batch of 2.
        trace_inputs = tuple(batched(x, 2, 0) for x in inputs)
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # warnings about optional torchvision ops
    try:
        with warnings.catch_warnings():
            # torch 2.13's exporter warns about its own pytree internals
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                model, trace_inputs, dynamo=True, dynamic_shapes=dynamic_shapes,
                opset_version=opset, external_data=False, verbose=False,
            )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(tmp, external_data=False)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {e}") from e
    finally:
        logger.setLevel(level)


def _verify(model: nn.Module, tmp: str, input_names: tuple[str, ...],
            checks: list[tuple[torch.Tensor, ...]], atol: float,
            rtol: float) -> tuple[float, float]:
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(tmp, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the exported model: {e}") from e
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(tmp, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load the exported model: {e}") from e
    max_abs = max_rel = 0.0
    for inputs in checks:
        batch = inputs[0].shape[0]
        with torch.no_grad():
            expected = tensor_leaves(model(*inputs), "the PyTorch output")
        feeds = {name: x.detach().cpu().numpy() for name, x in
                 zip(input_names, inputs, strict=True)}
        try:
            got = session.run(None, feeds)
        except Exception as e:
            raise ExportError(f"onnxruntime failed to run the exported model at batch "
                              f"{batch}: {e}") from e
        if len(got) != len(expected):
            raise ExportError(f"the ONNX graph has {len(got)} outputs, the PyTorch model "
                              f"{len(expected)} tensors")
        for k, (e_t, o) in enumerate(zip(expected, got, strict=True)):
            d_abs, d_rel = compare(e_t, np.asarray(o), atol, rtol,
                                    f"output {k} at batch {batch}")
            max_abs, max_rel = max(max_abs, d_abs), max(max_rel, d_rel)
    return max_abs, max_rel


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    dynamic_batch: bool = True,
    opset: int | None = None,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> ExportResult:
    """Export ``model`` (a SearchModel is materialised first) to a verified ONNX file.

    The exported and verified model is float32 on the CPU: a model on another device or
    in another dtype (CUDA, float64, bf16) is exported from a float32 CPU copy
    (:func:`float32_cpu_copy`), so the ONNX file always has float32 inputs and weights.

    Uses ``torch.onnx.export`` (the dynamo exporter, one self-contained file), then
    ``onnx.checker.check_model(full_check=True)``, then runs onnxruntime on the example
    input and on a batch of 3 (with ``dynamic_batch``) and compares every output with
    PyTorch. The file is written to a temporary name in the destination folder and moved
    to ``path`` only when every check passed: a failed export leaves nothing at ``path``
    (and an older file there is kept).

    Args:
        model: Any module (or a SearchModel); exported in eval mode, left in its mode.
        path: Destination ``.onnx`` file; its folder must exist.
        example_inputs: A tensor or a tuple of tensors, batch first.
        dynamic_batch: Make the batch dim symbolic.
        opset: ONNX opset (default: the exporter's).
        check: Run the checker and onnxruntime parity checks.
        atol: Absolute tolerance, ``>= 0``.
        rtol: Relative tolerance (to |PyTorch|), ``>= 0``: outputs match when
            ``|ort - torch| <= atol + rtol * |torch|`` everywhere.

    Raises:
        ExportError: the exporter failed, onnx.checker rejected the file, an output is not
            finite, or onnxruntime differs from PyTorch beyond the tolerance.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     result = export_onnx(net, f"{d}/net.onnx", torch.randn(1, 4))
        >>> result.max_abs_diff < 1e-4, result.params
        (True, 58.0)
    """
    if isinstance(model, Exportable):  # a SearchModel: its pruned plain model
        model = model.export()
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(
            f"`model` must be an nn.Module or SearchModel, but got {type(model).__name__}"
        )
    inputs = example_tuple(example_inputs)
    model, inputs = float32_cpu_copy(model, inputs)
    atol, rtol = check_tolerance("atol", atol), check_tolerance("rtol", rtol)
    path = Path(path)
    if path.suffix != ".onnx":
        raise InvalidValueError(f"`path` must end in .onnx, but got {str(path)!r}")
    if not path.parent.is_dir():
        raise MissingFileError(f"folder {str(path.parent)!r} does not exist")
    with eval_mode(model), atomic_write(path) as tmp:
        _export_program(model, inputs, dynamic_batch, opset, str(tmp))
        import onnx

        proto = onnx.load(str(tmp), load_external_data=False)
        opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        input_names = tuple(i.name for i in proto.graph.input)
        output_names = tuple(o.name for o in proto.graph.output)
        max_abs = max_rel = 0.0
        batches: tuple[int, ...] = ()
        if check:
            checks = [inputs]
            if dynamic_batch:
                checks.append(tuple(batched(x, 3, 1) for x in inputs))
            max_abs, max_rel = _verify(model, str(tmp), input_names, checks, atol, rtol)
            batches = tuple(c[0].shape[0] for c in checks)
        params, ops = _counts(model, inputs)
    return ExportResult(
        path=path, opset=int(opset_used), input_names=input_names, output_names=output_names,
        max_abs_diff=max_abs, max_rel_diff=max_rel, batch_sizes=batches, params=params, ops=ops,
    )


def _counts(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """Exact (params, MACs) of ``model`` at batch 1; NaN when torch.fx cannot trace it."""
    from hwnas.cost.profile import profile

    try:
        table = profile(model, tuple(x[:1] for x in inputs))
    except TraceError:
        # torch.onnx could export what torch.fx cannot trace: no cost counts then.
        return float("nan"), float("nan")
    if table.empty:  # no costed layer (e.g. a LUT network): no params/MACs
        return 0.0, 0.0
    return float(table.iloc[-1]["params"]), float(table.iloc[-1]["ops"])
