"""Tests for the quantised exports: hwnas/export/qonnx.py (checked with the qonnx package's
executor), hwnas/export/qdq.py (onnxruntime) and hwnas/export/quantized.py.

Which equality each test asserts: with power-of-two scales the exports are bit-exact (the
final outputs and every activation quantiser's integer codes equal PyTorch's, since all
products and sums are exact in float32 below 2^24, which ``exact_bound`` checks); with
learned (LSQ) scales a runtime that sums in another order may round a tie the other way,
so the codes are allowed one step and the outputs a float32 rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_precision import _random_bits, _random_gates
from torch import nn

import hwnas
from hwnas.errors import ExportError, InvalidTypeError
from hwnas.export.qdq import export_qdq
from hwnas.export.qonnx import QONNX_DOMAIN, export_qonnx
from hwnas.zoo.datasets import digits
from hwnas.zoo.models import digits_cnn


@pytest.fixture(scope="module")
def data():
    return digits()


def _exported(data, scale: str, seed: int = 3) -> tuple[nn.Module, hwnas.SearchModel]:
    """A digits search with calibrated quantisers, random gates and per-channel bits."""
    torch.manual_seed(0)
    s = hwnas.wrap(digits_cnn(), data.example,
                   precision=hwnas.PrecisionSpace(per_channel=True, scale=scale))
    batches = [b for _, b in zip(range(4), data.train, strict=False)]
    s.train()
    for x, _ in batches:  # BatchNorm statistics of real activations
        s(x, gates="off")
    s.precision.calibrate(s, batches)
    _random_gates(s, seed)
    _random_bits(s, seed)
    return s.eval().export(), s


@pytest.fixture(scope="module")
def pow2(data):
    return _exported(data, "pow2")


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_qonnx_is_bit_exact_in_the_qonnx_executor(tmp_path, data, pow2):
    model, _ = pow2
    result = export_qonnx(model, tmp_path / "m.onnx", data.x_test[:2])
    assert result.bit_exact and result.exact_bound
    assert (result.max_abs_diff, result.max_code_diff, result.samples) == (0.0, 0, 2)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    quants = [n for n in proto.graph.node if n.op_type == "IntQuant"]
    assert {n.domain for n in quants} == {QONNX_DOMAIN}
    assert len(quants) == 3 * 4  # input, weight and bias (own or a folded BatchNorm's) x 4
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in quants}
    assert attrs["0.weight_quant"] == {"signed": 1, "narrow": 1, "rounding_mode": b"ROUND"}
    assert attrs["0.input_quant"]["signed"] == 0  # pixels are >= 0
    inits = _initializers(tmp_path / "m.onnx")
    for name, module in model.named_modules():
        if hasattr(module, "quant_params"):
            qp = module.quant_params()
            assert float(inits[f"{name}.weight_quant.bitwidth"]) == int(qp.w_bits.max())
            assert float(inits[f"{name}.input_quant.bitwidth"]) == qp.a_bits
            assert inits[f"{name}.weight"].shape == tuple(qp.w_int.shape)  # pruned channels gone
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["hwnas.weight_bits.0"].count(",") == model.get_submodule("0").out_channels - 1


def test_qdq_is_bit_exact_in_onnxruntime_and_holds_no_pruned_channel(tmp_path, data, pow2):
    model, search = pow2
    result = export_qdq(model, tmp_path / "m.onnx", data.x_test)
    assert result.bit_exact and result.samples == 360
    inits = _initializers(tmp_path / "m.onnx")
    kept = search.precision.table(search)["out_kept"].tolist()
    original = [32, 64, 64, 10]
    for (name, module), k, full in zip(
            [(n, m) for n, m in model.named_modules() if hasattr(m, "quant_params")], kept,
            original, strict=True):
        qp = module.quant_params()
        w = inits[f"{name}.weight_dq.int"]
        assert w.dtype == np.int8 and np.array_equal(w, qp.w_int.numpy())
        assert w.shape[0] == k <= full
        if qp.b_int is not None:
            assert inits[f"{name}.bias_dq.int"].dtype == np.int32
    assert sum(v.size for n, v in inits.items() if n.endswith("weight_dq.int")) == sum(
        m.weight.numel() for m in model.modules() if hasattr(m, "quant_params"))
    kinds = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert kinds.count("QuantizeLinear") == 4 and kinds.count("DequantizeLinear") == 12


def test_lsq_scales_match_within_one_step(tmp_path, data):
    model, _ = _exported(data, "lsq")
    qdq = export_qdq(model, tmp_path / "a.onnx", data.x_test[:128])
    qonnx = export_qonnx(model, tmp_path / "b.onnx", data.x_test[:1])
    for r in (qdq, qonnx):
        assert r.max_code_diff <= 1 and r.code_mismatch <= 0.01
        assert r.max_abs_diff < 1e-4


def test_search_model_exports_and_errors(tmp_path, data):
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(InvalidTypeError, match="must have quantised conv / linear layers"):
        export_qdq(net, tmp_path / "x.onnx", torch.rand(2, 4))
    wide = hwnas.wrap(net, torch.rand(1, 4), precision=hwnas.PrecisionSpace(
        weight_bits=(4,), activation_bits=(12,)))
    with pytest.raises(ExportError, match="activations of 12 bits need int16"):
        export_qdq(wide.eval(), tmp_path / "x.onnx", torch.rand(2, 4))
    assert not (tmp_path / "x.onnx").exists()
    search = hwnas.wrap(net, torch.rand(1, 4), precision=hwnas.PrecisionSpace(scale="pow2"))
    assert export_qdq(search.eval(), tmp_path / "s.onnx", torch.rand(5, 4)).bit_exact
