"""QONNX export of a quantised model, checked with the qonnx package's own executor.

QONNX (Pappalardo et al. 2022, github.com/fastmachinelearning/qonnx) adds quantisers to
ONNX as operators of the domain ``qonnx.custom_op.general``. Each quantised conv / linear
layer (:mod:`hwnas.export.quantized`) gets three ``IntQuant`` nodes (inputs ``X, scale,
zeropt, bitwidth``; attributes ``signed``, ``narrow``, ``rounding_mode = "ROUND"``, half to
even like ``torch.round``):

- on its input: the activation's scale, zero point 0, its bits, ``signed`` as calibrated,
  ``narrow = 0``;
- on its weight: the per-output-channel scales (shaped to broadcast), zero point 0, the
  weight bits (with per-channel bits the largest, since the spec's ``bitwidth`` is a scalar:
  the weights are stored already clamped to each channel's range, so the node returns
  them unchanged; ``hwnas.weight_bits.<layer>`` in the metadata lists every channel's
  bits), ``signed = 1``, ``narrow = 1``;
- on its bias: scale ``s_a * s_w``, 32 bits, ``signed = 1``.

The other operators are standard ONNX (opset of the exporter), the batch is 1 (FINN's
convention), the weights are float initializers holding the quantised values. Pruned
channels are not in the file: the model is the pruned one. :func:`export_qonnx` runs the
file with ``qonnx.core.onnx_exec.execute_onnx`` on every given example and compares the
output and each activation quantiser's integer codes with PyTorch
(:class:`~hwnas.export.quantized.QuantExportResult`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas._internal.files import atomic_write
from hwnas._internal.modes import eval_mode
from hwnas.cost.bits import QuantParams
from hwnas.errors import ExportError, InvalidValueError, MissingFileError
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

__all__ = ["QONNX_DOMAIN", "export_qonnx", "to_qonnx"]

#: The operator domain of QONNX's ``IntQuant``.
QONNX_DOMAIN = "qonnx.custom_op.general"


def _int_quant(proto: Any, index: int, x: str, out: str, scale: np.ndarray, bits: int,
               signed: bool, narrow: bool) -> int:
    """Insert ``IntQuant(x) -> out`` before node ``index`` (its constants as initializers);
    returns the index of the node that was at ``index``."""
    from onnx import helper, numpy_helper

    for suffix, value in (("scale", scale.astype(np.float32)),
                          ("zeropt", np.zeros((), np.float32)),
                          ("bitwidth", np.asarray(float(bits), np.float32))):
        proto.graph.initializer.append(numpy_helper.from_array(value, f"{out}.{suffix}"))
    node = helper.make_node("IntQuant", [x, f"{out}.scale", f"{out}.zeropt", f"{out}.bitwidth"],
                            [out], name=out, domain=QONNX_DOMAIN, signed=int(signed),
                            narrow=int(narrow), rounding_mode="ROUND")
    proto.graph.node.insert(index, node)
    return index + 1


def to_qonnx(proto: Any, model: nn.Module) -> Any:
    """Put the IntQuant nodes of every quantised layer of ``model`` into ``proto`` (the
    export of its float twin), in place; returns ``proto``."""
    from onnx import helper

    for path, module in quantized_layers(model):
        qp: QuantParams = module.quant_params()
        i, node = layer_node(proto, path)
        shape = [-1] + [1] * (qp.w_int.dim() - 1)
        i = _int_quant(proto, i, node.input[0], f"{path}.input_quant", qp.a_scale.numpy(),
                       qp.a_bits, qp.a_signed, False)
        node.input[0] = f"{path}.input_quant"
        w_bits = int(qp.w_bits.max())
        i = _int_quant(proto, i, node.input[1], f"{path}.weight_quant",
                       qp.w_scale.reshape(shape).numpy(), w_bits, True, True)
        node.input[1] = f"{path}.weight_quant"
        if len(node.input) > 2 and node.input[2]:
            i = _int_quant(proto, i, node.input[2], f"{path}.bias_quant", qp.b_scale.numpy(),
                           32, True, False)
            node.input[2] = f"{path}.bias_quant"
        helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                       f"hwnas.weight_bits.{path}":
                                       ",".join(str(int(b)) for b in qp.w_bits)})
    if not any(o.domain == QONNX_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    return proto


def _run_qonnx(proto: Any, inputs: np.ndarray, model: nn.Module
               ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Outputs and activation codes of the qonnx executor, one example at a time."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    wrapper = ModelWrapper(proto).transform(InferShapes())
    name_in, name_out = proto.graph.input[0].name, proto.graph.output[0].name
    scales = {path: m.quant_params().a_scale.numpy() for path, m in quantized_layers(model)}
    runs = []
    for x in inputs:
        ctx = execute_onnx(wrapper, {name_in: x[None]}, return_full_exec_context=True)
        codes = {p: ctx[f"{p}.input_quant"] / s for p, s in scales.items()}
        runs.append((np.asarray(ctx[name_out]), codes))
    return runs


def export_qonnx(model: nn.Module, path: str | os.PathLike,
                 example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> QuantExportResult:
    """Write ``model`` (a precision search's export, or the SearchModel) as QONNX and check
    it with the qonnx executor on every example of ``example_inputs`` (batch first; the
    file's batch is 1).

    Raises:
        ExportError: the export failed, an output is not finite, or an activation code of
            the qonnx executor is more than one step from PyTorch's. The result says how
            far they are (``bit_exact`` with power-of-two scales).

    Example:
        >>> import tempfile, torch, hwnas
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> space = hwnas.PrecisionSpace(weight_bits=(4,), activation_bits=(6,), scale="pow2")
        >>> s = hwnas.wrap(net, torch.rand(1, 4), precision=space)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     r = export_qonnx(s.eval(), f"{d}/m.qonnx.onnx", torch.rand(8, 4))
        >>> r.bit_exact, r.layers
        (True, (('0', '4', 6), ('2', '4', 6)))
    """
    import onnx

    if isinstance(model, Exportable):
        model = model.export()
    inputs = example_tuple(example_inputs)
    if len(inputs) != 1:
        raise InvalidValueError(f"the QONNX export takes a model with one input, but got "
                                f"{len(inputs)}")
    path = Path(path)
    if not path.parent.is_dir():
        raise MissingFileError(f"folder {str(path.parent)!r} does not exist")
    model, inputs = float32_cpu_copy(model, inputs)
    with eval_mode(model):
        proto = to_qonnx(export_twin(float_twin(model), (inputs[0][:1],), False), model)
        try:
            onnx.checker.check_model(proto)
        except Exception as e:
            raise ExportError(f"onnx.checker rejected the QONNX model: {e}") from e
        runs = _run_qonnx(proto, inputs[0].numpy(), model)
        pairs = []
        for k, (got, codes) in enumerate(runs):
            out, expected = activation_codes(model, (inputs[0][k:k + 1],))
            pairs.append((out.numpy(), got, expected, codes))
        result = summarize(path, "qonnx", "qonnx.core.onnx_exec", model, pairs)
    with atomic_write(path) as tmp:
        onnx.save(proto, str(tmp))
    return result
