"""Tests for hwnas/hw/verilog.py: the port convention, simplification, input quantisation.

These run no external tool; simulation parity is in test_hw_sim.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from hwnas.difflut import GroupSum, LUTLayer, ThermometerEncoder, lut_network, simplify
from hwnas.errors import InvalidValueError, MissingFileError
from hwnas.hw import InputQuantizer, VerilogModule, export_verilog


def _net(seed: int = 0, head: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [LUTLayer(10, 12, k=3, seed=seed),
                               LUTLayer(12, 6, k=2, seed=seed + 1)]
    if head:
        layers.append(GroupSum(3))
    return nn.Sequential(*layers).eval()


def test_ports_without_encoder(tmp_path):
    v = export_verilog(_net(head=False), tmp_path / "a.v", top="net_a")
    assert v.top == "net_a" and v.latency == 0 and v.k_classes is None
    assert [(p.name, p.direction, p.width) for p in v.ports] == [("x", "input", 10),
                                                                 ("y", "output", 6)]
    text = (tmp_path / "a.v").read_text()
    assert "module net_a (\n  input wire [9:0] x,\n  output wire [5:0] y\n);" in text
    assert "clk" not in text


def test_ports_with_head_and_encoder_and_pipeline(tmp_path):
    x = torch.rand(40, 4) * 16
    model = nn.Sequential(ThermometerEncoder(3).fit(x), LUTLayer(12, 8, k=3, seed=0),
                          LUTLayer(8, 4, k=2, seed=1), GroupSum(2)).eval()
    v = export_verilog(model, tmp_path / "b.v", input_bits=5, input_range=(0.0, 16.0),
                       pipeline=True)
    # m = 2 features per class: w = ceil(log2(3)) = 2 bits per count
    assert [(p.name, p.width) for p in v.ports] == [("clk", 1), ("x", 20), ("y", 4)]
    assert (v.count_width, v.k_classes, v.input_bits) == (2, 2, 5)
    assert v.latency == 4  # encoder, two LUT layers, the GroupSum counts
    assert VerilogModule.from_file(tmp_path / "b.v") == v


def test_count_width_and_popcount_slices(tmp_path):
    model = nn.Sequential(LUTLayer(6, 14, k=2, seed=0), GroupSum(2)).eval()  # m = 7
    v = export_verilog(model, tmp_path / "c.v")
    assert v.count_width == 3 and v.output_width == 6
    text = (tmp_path / "c.v").read_text()
    assert "assign y[2:0] = " in text and "assign y[5:3] = " in text


def test_constants_propagate_and_unused_nodes_go(tmp_path):
    first = LUTLayer(4, 3, k=2, seed=0)
    last = LUTLayer(3, 2, k=2, seed=1)
    with torch.no_grad():
        first.logits.copy_(torch.tensor([[3.0, 3, 3, 3], [-1, 1, 1, -1], [-1, 1, 1, -1]]))
        first.logits[0].fill_(3.0)  # node 0: constant 1; nodes 1, 2: xor of their inputs
        last.connections.copy_(torch.tensor([[0, 1], [1, 1]]))
        last.logits.copy_(torch.tensor([[-1.0, -1, 1, 1],     # node 0 = input 1 (node 1)
                                        [-1.0, 1, 1, 1]]))   # node 1 = or(n1, n1) = n1
    model = nn.Sequential(first, last).eval()
    v = export_verilog(model, tmp_path / "d.v")
    text = (tmp_path / "d.v").read_text()
    assert v.constant_nodes == (1, 0)
    assert v.node_inputs == ((2,), (1, 1))  # only first-layer node 1 is built
    assert "l0_0" not in text and "l0_2" not in text
    layers, read = simplify(lut_network(model))
    assert [layer.used for layer in layers] == [(False, True, False), (True, True)]
    assert v.unread_inputs == tuple(i for i in range(4) if not read[i])


def test_constant_output_bits_and_counts(tmp_path):
    layer = LUTLayer(4, 4, k=2, seed=0)
    with torch.no_grad():
        layer.logits.copy_(torch.tensor([-1.0, 1, 1, -1]).expand(4, 4))  # xor nodes
        layer.logits[1].fill_(2.0)    # constant 1
        layer.logits[2].fill_(-2.0)   # constant 0
    v = export_verilog(nn.Sequential(layer, GroupSum(2)).eval(), tmp_path / "e.v")
    text = (tmp_path / "e.v").read_text()
    assert re.search(r"assign y\[1:0\] = l0_0 \+ 2'd1;", text)
    assert re.search(r"assign y\[3:2\] = l0_3 \+ 2'd0;", text)
    assert v.node_inputs == ((2, 2),)


def test_quantized_thresholds_are_exact_on_the_grid():
    q = InputQuantizer(bits=5, low=0.0, step=1.0)
    thresholds = torch.tensor([[-1.0, 0.0, 2.5, 3.0, 16.0, 40.0]])
    codes = q.threshold_codes(thresholds)
    assert codes.tolist() == [[-1, 0, 2, 3, 16, 31]]
    grid = q.dequantize(torch.arange(32).reshape(-1, 1)).reshape(-1)
    for j in range(thresholds.shape[1]):
        model_bits = grid > thresholds[0, j]
        hw_bits = torch.arange(32) > codes[0, j]
        assert torch.equal(model_bits, hw_bits)


def test_quantizer_rounds_and_clamps_per_feature():
    q = InputQuantizer.from_range(3, torch.tensor([0.0, -1.0]), torch.tensor([7.0, 1.0]))
    x = torch.tensor([[3.4, 0.1], [-5.0, 2.0], [6.6, -0.72]])
    assert q.quantize(x).tolist() == [[3, 4], [0, 7], [7, 1]]
    assert q.dequantize(torch.tensor([[3, 7]])).tolist() == [[3.0, 1.0]]


def test_encoder_needs_an_input_range(tmp_path):
    x = torch.rand(10, 2)
    model = nn.Sequential(ThermometerEncoder(2).fit(x), LUTLayer(4, 2, k=2, seed=0))
    with pytest.raises(InvalidValueError, match="needs `input_range=\\(low, high\\)`"):
        export_verilog(model, tmp_path / "f.v")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(InvalidValueError, match="`top` must be a Verilog identifier, but got '1x'"):
        export_verilog(_net(), tmp_path / "g.v", top="1x")
    with pytest.raises(InvalidValueError, match="`bits` must be an integer in \\[1, 24\\]"):
        InputQuantizer(bits=0)
    with pytest.raises(InvalidValueError, match="`step` must be finite and > 0"):
        InputQuantizer(bits=4, step=0.0)
    with pytest.raises(InvalidValueError, match="not part of a LUT network"):
        export_verilog(nn.Sequential(LUTLayer(4, 2, k=2), nn.ReLU()), tmp_path / "h.v")
    with pytest.raises(MissingFileError, match="does not exist"):
        VerilogModule.from_file(tmp_path / "none.v")
    (tmp_path / "other.v").write_text("module m; endmodule\n")
    with pytest.raises(InvalidValueError, match="was not written by hwnas.hw.export_verilog"):
        VerilogModule.from_file(tmp_path / "other.v")


def test_pack_unpack_round_trip(tmp_path):
    v = export_verilog(_net(), tmp_path / "i.v")
    codes = (torch.rand(5, 10) > 0.5).long()
    packed = v.pack(codes)
    assert packed[0] == sum(int(b) << i for i, b in enumerate(codes[0].tolist()))
    values = [0b10_01_11, 0]
    assert v.unpack(values).tolist() == [[3, 1, 2], [0, 0, 0]]


def _muxf_value(text: str, node: str, bits: list[int]) -> int:
    """Evaluate one node of an export for xc7 from its subtables and muxes (bits[i] = the
    value of the node's source i)."""
    low = sum(b << i for i, b in enumerate(bits[:6]))
    q = bits[6] | (bits[7] << 1 if len(bits) == 8 else 0)
    table = int(re.search(rf"T{node}_{q} = 64'h([0-9a-f]+);", text).group(1), 16)
    return (table >> low) & 1


@pytest.mark.parametrize("k", [7, 8])
def test_wide_nodes_for_xc7_are_subtables_joined_by_muxf(tmp_path, k):
    layer = LUTLayer(20, 5, k=k, seed=k).eval()
    model = nn.Sequential(layer)
    v = export_verilog(model, tmp_path / "w.v", target="xc7-lut6")
    text = v.path.read_text()
    assert v.primitives == (("MUXF7",) if k == 7 else ("MUXF7", "MUXF8"))
    assert VerilogModule.from_file(v.path).primitives == v.primitives
    assert len(re.findall(r"^  MUXF7 ", text, re.M)) == 5 * (1 if k == 7 else 2)
    assert len(re.findall(r"^  MUXF8 ", text, re.M)) == (0 if k == 7 else 5)
    # every entry of every subtable is the node's table entry at that address
    net, _ = simplify(lut_network(model))
    for j in net[0].live():
        node = net[0].nodes[j]
        for address in range(2 ** k):
            bits = [(address >> i) & 1 for i in range(k)]
            assert _muxf_value(text, f"0_{j}", bits) == (node.table >> address) & 1
    # portable Verilog, or a target without MUXF: one table per node, nothing instantiated
    for target in (None, "ice40-lut4"):
        plain = export_verilog(model, tmp_path / "p.v", target=target)
        assert plain.primitives == () and "MUXF" not in plain.path.read_text()
