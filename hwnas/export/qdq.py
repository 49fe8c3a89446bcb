"""QDQ ONNX export of a quantised model: standard ``QuantizeLinear`` / ``DequantizeLinear``
pairs that onnxruntime runs (and fuses into integer kernels where it can).

Each quantised conv / linear layer (:mod:`hwnas.export.quantized`) becomes:

- its input: ``QuantizeLinear(x, s_a, 0)`` to uint8 (int8 when signed), a ``Clip`` to the
  activation's own range when it has fewer than 8 bits, ``DequantizeLinear`` back;
- its weight: an int8 initializer of the integer weights and ``DequantizeLinear`` with the
  per-output-channel scales (``axis = 0``); an int32 initializer beyond 8 bits;
- its bias: an int32 initializer at scale ``s_a * s_w`` and ``DequantizeLinear``
  (the integer-inference convention, Jacob et al. 2018).

The file has a dynamic batch and no pruned channel (the model is the pruned one).
:func:`export_qdq` checks it with ``onnx.checker`` and runs it in onnxruntime twice: as
written (onnxruntime may fuse the QDQ pairs into QLinearConv / QGemm) for the outputs,
and with each activation's integer codes as extra outputs (which keeps that quantiser
unfused) for the codes; :class:`~hwnas.export.quantized.QuantExportResult` says how far
both are from PyTorch. Activations of more than 8 bits need int16 QDQ (opset 21): refused.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas._internal.files import atomic_write
from hwnas._internal.modes import eval_mode
from hwnas.cost.bits import QuantParams
from hwnas.errors import ExportError, MissingFileError
from hwnas.export.onnx import Exportable
from hwnas.export.quantized import (
    QuantExportResult,
    activation_codes,
    export_twin,
    float_twin,
    layer_node,
    quantized_layers,
    summarize,
)
from hwnas.export.verify import example_tuple, float32_cpu_copy

__all__ = ["export_qdq", "to_qdq"]


def _const(proto: Any, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    proto.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _drop_initializer(proto: Any, name: str) -> None:
    for k, init in enumerate(proto.graph.initializer):
        if init.name == name:
            del proto.graph.initializer[k]
            return


def _activation(proto: Any, index: int, x: str, path: str, qp: QuantParams) -> int:
    """``Q -> [Clip] -> DQ`` on ``x`` before node ``index``; the codes are ``<path>.codes``."""
    from onnx import helper

    if qp.a_bits > 8:
        raise ExportError(f"layer {path!r}: QDQ activations of {qp.a_bits} bits need int16 "
                          "(opset 21); at most 8 bits are exported")
    dtype = np.int8 if qp.a_signed else np.uint8
    scale = _const(proto, f"{path}.input_scale", qp.a_scale.numpy().astype(np.float32))
    zero = _const(proto, f"{path}.input_zero", np.zeros((), dtype))
    lo, hi = qp.a_range
    nodes = [helper.make_node("QuantizeLinear", [x, scale, zero], [f"{path}.input_q"],
                              name=f"{path}.input_q")]
    codes = f"{path}.input_q"
    if (lo, hi) != (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)):
        low = _const(proto, f"{path}.input_min", np.asarray(lo, dtype))
        high = _const(proto, f"{path}.input_max", np.asarray(hi, dtype))
        nodes.append(helper.make_node("Clip", [codes, low, high], [f"{path}.codes"],
                                      name=f"{path}.clip"))
        codes = f"{path}.codes"
    else:
        nodes.append(helper.make_node("Identity", [codes], [f"{path}.codes"],
                                      name=f"{path}.codes"))
        codes = f"{path}.codes"
    nodes.append(helper.make_node("DequantizeLinear", [codes, scale, zero], [f"{path}.input_dq"],
                                  name=f"{path}.input_dq"))
    for k, node in enumerate(nodes):
        proto.graph.node.insert(index + k, node)
    return index + len(nodes)


def _dequantized(proto: Any, index: int, name: str, values: np.ndarray, scale: np.ndarray,
                 out: str) -> int:
    """Replace initializer ``name`` by integers ``values`` and ``DequantizeLinear`` (axis 0)."""
    from onnx import helper

    _drop_initializer(proto, name)
    ints = _const(proto, f"{out}.int", values)
    s = _const(proto, f"{out}.scale", scale.astype(np.float32))
    z = _const(proto, f"{out}.zero", np.zeros(scale.shape, values.dtype))
    proto.graph.node.insert(index, helper.make_node("DequantizeLinear", [ints, s, z], [out],
                                                    name=out, axis=0))
    return index + 1


def to_qdq(proto: Any, model: nn.Module) -> Any:
    """Put the QDQ pairs of every quantised layer of ``model`` into ``proto`` (the export of
    its float twin), in place; returns ``proto``."""
    for path, module in quantized_layers(model):
        qp: QuantParams = module.quant_params()
        i, node = layer_node(proto, path)
        i = _activation(proto, i, node.input[0], path, qp)
        node.input[0] = f"{path}.input_dq"
        w_dtype = np.int8 if int(qp.w_bits.max()) <= 8 else np.int32
        i = _dequantized(proto, i, node.input[1], qp.w_int.numpy().astype(w_dtype),
                         qp.w_scale.numpy(), f"{path}.weight_dq")
        node.input[1] = f"{path}.weight_dq"
        if len(node.input) > 2 and node.input[2] and qp.b_int is not None:
            i = _dequantized(proto, i, node.input[2], qp.b_int.numpy().astype(np.int32),
                             qp.b_scale.numpy(), f"{path}.bias_dq")
            node.input[2] = f"{path}.bias_dq"
    return proto


def _session(proto: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(proto.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load the QDQ model: {e}") from e


def _run_qdq(proto: Any, x: np.ndarray, model: nn.Module
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The output as written, and the activation codes from a copy that outputs them."""
    from onnx import helper

    name_in = proto.graph.input[0].name
    out = _session(proto).run(None, {name_in: x})[0]
    probe = copy.deepcopy(proto)
    paths = [p for p, _ in quantized_layers(model)]
    for p in paths:
        probe.graph.output.append(helper.make_empty_tensor_value_info(f"{p}.codes"))
    got = _session(probe).run([f"{p}.codes" for p in paths], {name_in: x})
    return np.asarray(out), {p: np.asarray(c).astype(np.float64) for p, c in zip(paths, got,
                                                                                 strict=True)}


def export_qdq(model: nn.Module, path: str | os.PathLike,
               example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> QuantExportResult:
    """Write ``model`` (a precision search's export, or the SearchModel) as QDQ ONNX and run
    it in onnxruntime on ``example_inputs`` (one batch; the file's batch is dynamic).

    Raises:
        ExportError: the export failed, the checker rejected it, onnxruntime cannot run it,
            an output is not finite, or an activation code is more than one step from
            PyTorch's. The result says how far they are (``bit_exact`` with power-of-two
            scales).

    Example:
        >>> import tempfile, torch, hwnas
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> space = hwnas.PrecisionSpace(weight_bits=(4,), activation_bits=(6,), scale="pow2")
        >>> s = hwnas.wrap(net, torch.rand(1, 4), precision=space)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     r = export_qdq(s.eval(), f"{d}/m.qdq.onnx", torch.rand(8, 4))
        >>> r.bit_exact, r.samples
        (True, 8)
    """
    import onnx

    if isinstance(model, Exportable):
        model = model.export()
    inputs = example_tuple(example_inputs)
    if len(inputs) != 1:
        raise ExportError(f"the QDQ export takes a model with one input, but got {len(inputs)}")
    path = Path(path)
    if not path.parent.is_dir():
        raise MissingFileError(f"folder {str(path.parent)!r} does not exist")
    model, inputs = float32_cpu_copy(model, inputs)
    with eval_mode(model):
        proto = to_qdq(export_twin(float_twin(model), (inputs[0][:1],), True), model)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as e:
            raise ExportError(f"onnx.checker rejected the QDQ model: {e}") from e
        got, codes = _run_qdq(proto, inputs[0].numpy(), model)
        out, expected = activation_codes(model, inputs)
        result = summarize(path, "qdq", "onnxruntime", model,
                           [(out.numpy(), got, expected, codes)])
        result = QuantExportResult(**{**result.__dict__, "samples": int(inputs[0].shape[0])})
    with atomic_write(path) as tmp:
        onnx.save(proto, str(tmp))
    return result
