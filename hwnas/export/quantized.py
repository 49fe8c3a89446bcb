"""What the quantised exports share (:mod:`hwnas.export.qonnx`, :mod:`hwnas.export.qdq`).

A model is exported in three steps. Its *float twin* replaces every quantised layer
(:class:`~hwnas.cost.bits.QuantizedLayer`, e.g. a precision search's export) with the plain
layer holding its dequantised weight ``w_scale * w_int`` and bias ``b_scale * b_int``: the
very float32 values the quantised layer computes with. ``torch.onnx`` exports the twin
(one file, the dynamo exporter); each quantised layer is found in the graph by its weight
initializer (``<path>.weight``, the ``Conv`` / ``Gemm`` reading it), and the format puts its
quantisers around that node: the activation's on the node's input, the weight's and the
bias's on their initializers. A run of the file is then compared with the PyTorch model on
the final outputs and on the *integer outputs* of every activation quantiser (the codes
``round(x / s)``): :class:`QuantExportResult` says how far they are apart.

Which equality holds: with power-of-two scales every product and partial sum is an integer
times one power of two, exact in float32 while the accumulator stays below 2^24
(:func:`exact_accumulators` checks that bound), so PyTorch and any runtime agree bit for
bit; with learned (LSQ) scales the float products round, a runtime that sums in another
order can land on the other side of a rounding tie, and codes may differ by one step.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas.cost.bits import QuantizedLayer, QuantParams, bits_label
from hwnas.errors import ExportError, InvalidTypeError

__all__ = ["QuantExportResult", "activation_codes", "exact_accumulators", "export_twin",
           "float_twin", "layer_node", "quantized_layers", "summarize"]

_BASES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class QuantExportResult:
    """What a quantised export wrote and measured.

    Attributes:
        path: The file.
        format: ``"qonnx"`` or ``"qdq"``.
        runtime: What ran it (the qonnx executor, onnxruntime).
        layers: Quantised layers, as ``(path, weight bits label, activation bits)``.
        samples: Inputs compared.
        max_abs_diff: Largest |runtime - PyTorch| of the final outputs.
        max_code_diff: Largest difference of an activation quantiser's integer output.
        code_mismatch: Fraction of activation codes that differ.
        bit_exact: Outputs and codes equal bit for bit.
        exact_bound: Every accumulator stays below 2^24 (power-of-two scales are then exact
            in float32 in any summation order).
    """

    path: Path
    format: str
    runtime: str
    layers: tuple[tuple[str, str, int], ...]
    samples: int
    max_abs_diff: float
    max_code_diff: int
    code_mismatch: float
    bit_exact: bool
    exact_bound: bool


def quantized_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """``(path, module)`` of every quantised conv / linear layer; an error if there is none."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, QuantizedLayer) and isinstance(m, _BASES)]
    if not found:
        raise InvalidTypeError(
            f"`model` must have quantised conv / linear layers (the export of a precision "
            f"search, hwnas.wrap(..., precision=...)), but {type(model).__name__} has none")
    return found


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each quantised layer its plain base layer holding the
    dequantised weight and bias (what the quantised layer multiplies with)."""
    twin = copy.deepcopy(model)
    for name, module in quantized_layers(twin):
        qp: QuantParams = module.quant_params()
        base = next(b for b in _BASES if isinstance(module, b))
        plain = copy.copy(module)
        plain.__class__ = base
        shape = [-1] + [1] * (qp.w_int.dim() - 1)
        weight = nn.Parameter(qp.w_int.float() * qp.w_scale.reshape(shape))
        bias = None if qp.b_int is None else nn.Parameter(qp.b_int.float() * qp.b_scale)
        plain._parameters = {"weight": weight, "bias": bias}
        plain._buffers, plain._modules = {}, {}
        twin.set_submodule(name, plain)
    return twin.eval()


def export_twin(twin: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic_batch: bool) -> Any:
    """The twin as an ONNX ``ModelProto`` (torch.onnx, dynamo exporter)."""
    dynamic_shapes = None
    if dynamic_batch:  # torch.export specialises a dim of size 1: trace with a batch of 2
        inputs = tuple(torch.cat([x, x]) for x in inputs)
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(twin, inputs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        external_data=False, verbose=False)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for the float twin of "
                          f"{type(twin).__name__}: {e}") from e
    finally:
        logger.setLevel(level)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def layer_node(proto: Any, path: str) -> tuple[int, Any]:
    """``(index, node)`` of the ``Conv`` / ``Gemm`` that reads ``<path>.weight``."""
    name = f"{path}.weight"
    for i, node in enumerate(proto.graph.node):
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] == name:
            if node.op_type == "Gemm" and any(a.name == "transB" and a.i != 1
                                              for a in node.attribute):
                break
            return i, node
    raise ExportError(f"the quantised layer {path!r} is not a Conv or Gemm reading {name!r} in "
                      "the exported graph (a linear layer on more than 2-d inputs exports as "
                      "MatMul, which the quantised exports do not support)")


def activation_codes(model: nn.Module, inputs: tuple[torch.Tensor, ...]
                     ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The model's output and, per quantised layer, the integer codes of its input."""
    codes: dict[str, np.ndarray] = {}
    hooks = []
    for name, module in quantized_layers(model):
        qp: QuantParams = module.quant_params()
        lo, hi = qp.a_range

        def record(_m: nn.Module, args: tuple[Any, ...], name: str = name,
                   scale: torch.Tensor = qp.a_scale, lo: int = lo, hi: int = hi) -> None:
            x = args[0].detach().float().cpu()
            codes[name] = torch.clamp(torch.round(x / scale), lo, hi).numpy()

        hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"the quantised exports check one output tensor, but the model "
                          f"returned {type(out).__name__}")
    return out.detach().float().cpu(), codes


def exact_accumulators(model: nn.Module) -> bool:
    """Whether every output channel's accumulator stays below 2^24 (float32 integers):
    ``sum |w_int| * max |a_int| + |b_int|``."""
    for _, module in quantized_layers(model):
        qp: QuantParams = module.quant_params()
        reach = qp.w_int.abs().flatten(1).sum(1) * max(abs(v) for v in qp.a_range)
        if qp.b_int is not None:
            reach = reach + qp.b_int.abs()
        if bool((reach >= 2**24).any()):
            return False
    return True


def summarize(path: Path, fmt: str, runtime: str, model: nn.Module,
              pairs: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray],
                                dict[str, np.ndarray]]]) -> QuantExportResult:
    """The result of comparing ``(expected out, got out, expected codes, got codes)`` runs;
    an ExportError when an output is not finite or a code is more than one step off."""
    max_abs, max_code, differ, total = 0.0, 0, 0, 0
    for expected, got, codes_e, codes_g in pairs:
        if not (np.isfinite(expected).all() and np.isfinite(got).all()):
            raise ExportError(f"{fmt}: an output is not finite ({runtime} or PyTorch); a "
                              "non-finite output is never a match")
        if expected.shape != got.shape:
            raise ExportError(f"{fmt}: {runtime} returned shape {got.shape}, PyTorch "
                              f"{expected.shape}")
        max_abs = max(max_abs, float(np.abs(expected.astype(np.float64) - got).max()))
        for name, code in codes_e.items():
            diff = np.abs(code - np.round(codes_g[name]))
            max_code = max(max_code, int(diff.max()))
            differ += int((diff > 0).sum())
            total += diff.size
    if max_code > 1:
        raise ExportError(f"{fmt}: an activation code of {runtime} differs from PyTorch by "
                          f"{max_code} steps (at most one step, a rounding tie, is allowed)")
    layers = tuple((name, bits_label(m.bits()[0]), m.bits()[1])
                   for name, m in quantized_layers(model))
    return QuantExportResult(Path(path), fmt, runtime, layers, len(pairs), max_abs, max_code,
                             differ / max(total, 1), max_abs == 0.0 and max_code == 0,
                             exact_accumulators(model))

