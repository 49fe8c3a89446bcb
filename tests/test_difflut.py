"""Tests for hwnas/difflut/: LUT layers, sensitivity regularizers, LUT cost, export."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from helpers import small_lut_network
from torch import nn

from hwnas import cost
from hwnas.cost import load_target
from hwnas.cost.luts import comparator_luts, popcount_luts
from hwnas.difflut import (
    GaussianThermometerEncoder,
    GroupSum,
    LUTLayer,
    ThermometerEncoder,
    binary_inference_module,
    effective_inputs,
    export_lut_onnx,
    export_truth_tables,
    functional_sensitivity,
    group_sum_luts,
    input_dependence,
    lut_report,
    read_truth_tables,
    set_binary_,
    table_luts,
    used_nodes,
)
from hwnas.graph.ir import LayerInfo
from hwnas.regularizers import registry


def all_bits(k: int) -> torch.Tensor:
    """All 2^k bit vectors, row a = address a (bit j of a is column j)."""
    a = torch.arange(2**k)
    return ((a[:, None] >> torch.arange(k)) & 1).float()


def identity_layer(k: int, nodes: int, seed: int = 0) -> LUTLayer:
    """A layer whose every node reads inputs 0..k-1 in order."""
    layer = LUTLayer(k, nodes, k=k, seed=seed)
    layer.connections.copy_(torch.arange(k).expand(nodes, k))
    return layer


def parity_logits(k: int, m: int) -> torch.Tensor:
    """Logits of the parity of the first m of k inputs (depends on exactly those m)."""
    bits = all_bits(k)[:, :m].sum(1) % 2
    return bits * 2.0 - 1.0


def info_for(module: nn.Module, in_channels: int | None = None) -> LayerInfo:
    return LayerInfo(
        name="n",
        target="n",
        kind="layer",
        module_type=type(module),
        module=module,
        in_channels=in_channels,
    )


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("k", [1, 3, 6])
def test_multilinear_equals_table_on_binary_inputs(k):
    torch.manual_seed(0)
    layer = identity_layer(k, nodes=5).train()
    x = all_bits(k)
    soft = layer(x)  # (2^k, nodes): row a reads address a
    assert torch.equal(soft, layer.table().detach().t())
    layer.eval()
    assert torch.equal(layer(x), layer.truth_table().float().t())


def test_multilinear_matches_brute_force_on_soft_inputs():
    torch.manual_seed(1)
    k = 4
    layer = identity_layer(k, nodes=3).train()
    x = torch.rand(6, k)
    got = layer(x)
    z = all_bits(k)  # (2^k, k)
    weights = (x[:, None, :] * z + (1 - x[:, None, :]) * (1 - z)).prod(-1)  # (6, 2^k)
    expected = weights @ layer.table().detach().t()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_gradients_flow_to_table_and_inputs():
    torch.manual_seed(2)
    layer = LUTLayer(10, 7, k=3, seed=0).train()
    x = torch.rand(5, 10, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert layer.logits.grad is not None and layer.logits.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_chunked_forward_equals_unchunked_with_gradients():
    torch.manual_seed(3)
    full = LUTLayer(12, 9, k=4, seed=5).train()
    chunked = LUTLayer(12, 9, k=4, seed=5, max_elements=20).train()
    x = torch.rand(4, 12)
    y1, y2 = full(x), chunked(x)
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=0)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(full.logits.grad, chunked.logits.grad, atol=1e-6, rtol=0)


def test_learnable_connections_forward_argmax_and_get_gradients():
    torch.manual_seed(4)
    layer = LUTLayer(9, 6, k=3, connections="learnable", seed=0).train()
    x = (torch.rand(8, 9) > 0.5).float()
    soft = layer(x)
    idx = layer.connection_indices()
    address = (x[:, idx] * torch.tensor([1.0, 2.0, 4.0])).sum(-1).long()  # (8, 6)
    assert torch.equal(soft, layer.table().detach().gather(1, address.t()).t())
    soft.sum().backward()
    assert layer.connection_logits.grad.abs().sum() > 0


def test_random_connections_cover_all_inputs_and_are_distinct():
    layer = LUTLayer(50, 30, k=4, seed=0)
    conn = layer.connections
    assert set(conn.flatten().tolist()) == set(range(50))
    assert all(len(set(row)) == 4 for row in conn.tolist())


def test_memory_bounded_forward_k8_batch256_2000_nodes():
    layer = LUTLayer(512, 2000, k=8, seed=0).train()
    with torch.no_grad():
        y = layer(torch.rand(256, 512))
    assert y.shape == (256, 2000)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="`k` must be an integer in \\[1, 12\\]"):
        LUTLayer(4, 2, k=0)
    with pytest.raises(ValueError, match="`connections` must be one of"):
        LUTLayer(4, 2, k=2, connections="dense")
    with pytest.raises(ValueError, match="expects inputs of shape \\(batch, 4\\)"):
        LUTLayer(4, 2, k=2)(torch.rand(3, 5))
    with pytest.raises(ValueError, match="not fitted"):
        ThermometerEncoder(3)(torch.rand(2, 2))
    with pytest.raises(ValueError, match="divisible by k_classes=3"):
        GroupSum(3)(torch.rand(2, 4))


# --------------------------------------------------------------------------- encoders, head


def test_thermometer_encoders():
    x = torch.tensor([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0]])
    enc = ThermometerEncoder(3, method="uniform").fit(x)
    torch.testing.assert_close(enc.thresholds, torch.tensor([[0.75, 1.5, 2.25], [17.5, 25, 32.5]]))
    assert enc(torch.tensor([[1.6, 5.0]])).tolist() == [[1, 1, 0, 0, 0, 0]]
    q = ThermometerEncoder(1, method="quantile").fit(x)
    torch.testing.assert_close(q.thresholds, torch.tensor([[1.5], [25.0]]))
    g = GaussianThermometerEncoder(1).fit(x)
    torch.testing.assert_close(g.thresholds, torch.tensor([[1.5], [25.0]]))


def test_group_sum():
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    assert GroupSum(3, tau=2.0)(x).tolist() == [[0.5, 1.0, 1.0]]


# --------------------------------------------------------------------------- sensitivity


def brute_force_exact(layer: LUTLayer, p: float) -> torch.Tensor:
    t = layer.table().detach()
    k = layer.k
    per_node = []
    for n in range(t.shape[0]):
        total = 0.0
        for i in range(k):
            total += sum(abs(t[n, z] - t[n, z ^ (1 << i)]) ** p for z in range(2**k)) / 2**k
        per_node.append(total / k)
    return torch.stack(per_node)


@pytest.mark.parametrize("k,p", [(1, 2), (2, 1), (3, 2), (4, 1.5)])
def test_exact_sensitivity_equals_brute_force(k, p):
    torch.manual_seed(k)
    layer = LUTLayer(k + 2, 4, k=k, seed=k)
    got = functional_sensitivity(layer, p=p, mode="exact", reduction="sum")
    torch.testing.assert_close(got.detach(), brute_force_exact(layer, p).sum(), atol=1e-5, rtol=0)
    got.backward()
    assert layer.logits.grad.abs().sum() > 0


def test_input_based_equals_loop_reference():
    torch.manual_seed(5)
    layer = LUTLayer(6, 3, k=3, seed=1)
    bits = torch.rand(5, 3, 3) > 0.5  # (batch, nodes, k)
    got = functional_sensitivity(layer, p=2, inputs=bits, mode="input")
    t = layer.table().detach()
    per_node = []
    for n in range(3):
        acc = 0.0
        for b, i in itertools.product(range(5), range(3)):
            a = sum(int(bits[b, n, j]) << j for j in range(3))
            acc += float((t[n, a] - t[n, a ^ (1 << i)]) ** 2)
        per_node.append(acc / (5 * 3))
    assert got.item() == pytest.approx(sum(per_node) / 3, abs=1e-6)


def test_input_based_from_recorded_inputs_and_mode_default():
    torch.manual_seed(6)
    layer = LUTLayer(8, 4, k=3, seed=2, record_inputs=True)
    assert functional_sensitivity(layer).item() == pytest.approx(
        functional_sensitivity(layer, mode="exact").item()
    )  # nothing recorded yet: exact
    x = torch.rand(10, 8)
    layer.train()(x)
    assert layer.last_inputs.shape == (10, 4, 3) and not layer.last_inputs.requires_grad
    by_layer_inputs = functional_sensitivity(layer, inputs=x, mode="input")
    assert functional_sensitivity(layer).item() == pytest.approx(by_layer_inputs.item())


def test_random_mode_has_gradients_and_registry_names():
    torch.manual_seed(7)
    layer = LUTLayer(8, 4, k=3, seed=3)
    value = functional_sensitivity(layer, mode="random", num_samples=16)
    value.backward()
    assert 0 < value.item() < 1 and layer.logits.grad.abs().sum() > 0
    model = nn.Sequential(LUTLayer(8, 4, k=3, seed=0), LUTLayer(4, 2, k=2, seed=1))
    assert registry.get("functional") is functional_sensitivity
    one = registry.get("functional_l1")(model, mode="exact").item()
    assert one == pytest.approx(functional_sensitivity(model, p=1, mode="exact").item())
    assert registry.get("functional_exact")(model, p=1).item() == pytest.approx(one)
    two = registry.get("functional_l2")(model, mode="exact").item()
    assert two == pytest.approx(functional_sensitivity(model, p=2, mode="exact").item())
    assert two != pytest.approx(one)
    total = functional_sensitivity(model, mode="exact", reduction="sum").item()
    parts = sum(functional_sensitivity(m, mode="exact", reduction="sum").item() for m in model)
    assert total == pytest.approx(parts)
    with pytest.raises(ValueError, match="mode='input' needs `inputs`"):
        registry.get("functional_input")(model)


def test_regularizer_names_are_distinct_from_weight_penalties():
    """Issue 11 item 7: one clear name each; "l2" no longer shadows "expected_l2"."""
    from hwnas.regularizers.penalties import expected_l2_penalty

    functional = {n for n in registry.names() if n.startswith("functional")}
    assert functional == {"functional", "functional_l1", "functional_l2", "functional_input",
                          "functional_exact"}
    assert registry.get("expected_l2") is expected_l2_penalty
    for old in ("l", "l1", "l2", "l_exact", "l_input_based"):
        with pytest.raises(KeyError, match=f"unknown regularizer '{old}'; known: .*functional_l2"):
            registry.get(old)


def test_lut_layer_costs_are_registered_impure():
    """A LUT layer's luts read its truth tables, which change in training: never cached."""
    assert not cost.is_pure(cost.lookup("luts", LUTLayer))
    assert cost.is_pure(cost.lookup("params", LUTLayer))
    assert cost.lookup("luts", GroupSum).__name__ == "group_sum_layer_luts"
    assert group_sum_luts.__module__ == "hwnas.difflut.cost"


# --------------------------------------------------------------------------- LUT cost


def parity_layer(k: int, ms: list[int]) -> LUTLayer:
    layer = identity_layer(k, nodes=len(ms))
    with torch.no_grad():
        layer.logits.copy_(torch.stack([parity_logits(k, m) for m in ms]))
    return layer


def _xor_tree(m: int) -> int:
    """LUT4 of the parity of m inputs: a tree of XOR4s, ceil((m - 1) / 3) (m >= 2)."""
    return math.ceil((m - 1) / 3) if m >= 2 else 0


@pytest.mark.parametrize(
    "k,ms,xc7,ice40",
    [   # parity of m inputs: m effective inputs; on iCE40 it splits as h(xor4, rest)
        (6, [6, 5, 4, 0], 1 + 1 + 1 + 0, 2 + 2 + 1 + 0),
        (7, [7, 6, 5, 4], 2 + 1 + 1 + 1, 2 + 2 + 2 + 1),
        (8, [8, 7, 6], 4 + 2 + 1, 3 + 2 + 2),
    ],
)
def test_luts_of_pruned_layer(k, ms, xc7, ice40):
    layer = parity_layer(k, ms)
    assert effective_inputs(layer).tolist() == ms
    info = info_for(layer, in_channels=k)
    alive = {"in": torch.tensor(float(k)), "out": torch.tensor(float(len(ms)))}
    assert cost.evaluate("luts", info, alive, load_target("xc7-lut6")).item() == xc7
    got = cost.evaluate("luts", info, alive, load_target("ice40-lut4")).item()
    assert got == ice40 == sum(_xor_tree(m) for m in ms)  # whole LUTs
    assert cost.evaluate("params", info, alive, load_target("generic")).item() == len(ms) * 2**k


def test_lut_formulas_and_generic_target():
    # xc7: 9 / 10 inputs: 8 / 16 LUT6 behind MUXF7/MUXF8, and one / one 4:1-mux LUT
    assert table_luts(torch.tensor([9, 10]), "xc7-lut6").tolist() == [9.0, 17.0]
    cal = load_target("ice40-lut4").luts.calibration
    x = torch.arange(5, 10)
    assert table_luts(x, "ice40-lut4").tolist() == pytest.approx(list(cal.table_random))
    assert group_sum_luts(40, 10, "xc7-lut6").item() == pytest.approx(
        10 * popcount_luts(4, "xc7-lut6"), rel=1e-6)
    enc = ThermometerEncoder(3).fit(torch.rand(10, 4))
    got = cost.evaluate("luts", info_for(enc), {}, load_target("xc7-lut6")).item()
    assert got == round(12 * comparator_luts(8, "xc7-lut6"))
    layer = parity_layer(6, [6])
    with pytest.raises(ValueError,
                       match="target 'generic' has no LUT model; use one of ice40-lut4, xc7-lut6"):
        cost.evaluate("luts", info_for(layer), {}, load_target("generic"))


def test_duplicate_sources_are_analysed_as_one_input():
    layer = LUTLayer(4, 1, k=2, connections="learnable", seed=0)
    with torch.no_grad():
        layer.connection_logits.zero_()
        layer.connection_logits[0, :, 3] = 5.0  # both inputs read source 3
        layer.logits.copy_(parity_logits(2, 2))  # xor(x3, x3) == 0: a constant
    assert input_dependence(layer).tolist() == [[False, False]]
    with torch.no_grad():
        layer.logits.copy_(torch.tensor([-1.0, 1.0, 1.0, 1.0]))  # or(x3, x3) == x3
    assert input_dependence(layer).tolist() == [[True, False]]


def test_used_nodes_and_lut_report():
    first = identity_layer(4, nodes=4)  # node n: parity of its first n+1 inputs... set below
    with torch.no_grad():
        first.logits.copy_(torch.stack([parity_logits(4, m) for m in (4, 3, 2, 1)]))
    last = LUTLayer(4, 2, k=2, seed=0)
    last.connections.copy_(torch.tensor([[0, 1], [1, 2]]))
    with torch.no_grad():  # node 0 reads only first's node 0; node 1 reads node 1 and 2
        last.logits.copy_(torch.stack([torch.tensor([-1.0, 1, -1, 1]), parity_logits(2, 2)]))
    enc = ThermometerEncoder(2).fit(torch.rand(20, 2))
    model = nn.Sequential(enc, first, last, GroupSum(2))
    assert [u.tolist() for u in used_nodes(model)] == [[True, True, True, False], [True, True]]
    report = lut_report(model, "xc7-lut6")
    assert report["type"].tolist() == ["ThermometerEncoder", "LUTLayer", "LUTLayer", "GroupSum"]
    assert report["used_nodes"].tolist() == [4, 3, 2, 2]
    # encoder: 4 comparators of 8-bit inputs (1.69 LUTs each on xc7); first: 3 used nodes;
    # last: node 0 is first's node 0 itself (a wire, no LUT), node 1 one LUT; 1-bit sums
    assert comparator_luts(8, "xc7-lut6") == pytest.approx(1.6875)
    assert report["luts"].tolist() == [7.0, 3.0, 1.0, 0.0]


# --------------------------------------------------------------------------- export


def small_network() -> tuple[nn.Module, torch.Tensor]:
    return small_lut_network()


def test_onnx_export_matches_binary_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, data = small_network()
    path = export_lut_onnx(model, tmp_path / "lut.onnx", data[:3])
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == ["lut.onnx"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 7):
        x = torch.rand(batch, 5) * 10
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, {name: x.numpy()})[0]
        assert got.shape == (batch, 4)
        np.testing.assert_array_equal(got, expected.numpy())
        assert (got.argmax(1) == expected.argmax(1).numpy()).all()


def test_export_rejects_unknown_modules_without_leaving_files(tmp_path):
    model = nn.Sequential(LUTLayer(4, 2, k=2, seed=0), nn.ReLU())
    with pytest.raises(ValueError, match="'1' \\(ReLU\\) is not part of a LUT network"):
        export_lut_onnx(model, tmp_path / "bad.onnx", torch.rand(2, 4))
    assert list(tmp_path.iterdir()) == []


def test_binary_module_soft_mode_and_set_binary():
    model, data = small_network()
    net = binary_inference_module(model)
    assert torch.equal(net(data), model(data))
    set_binary_(model, False)
    assert not torch.equal(model(data), net(data))  # soft values differ from popcounts
    set_binary_(model, None)


def test_truth_table_json_round_trip(tmp_path):
    model, data = small_network()
    paths = export_truth_tables(model, tmp_path)
    assert [p.name for p in paths] == ["lut_layer_0.json", "lut_layer_1.json", "network.json"]
    docs = read_truth_tables(tmp_path)
    manifest = json.loads((tmp_path / "network.json").read_text())
    assert manifest["head"] == {"k_classes": 4, "tau": 3.0}
    layers = [m for m in model if isinstance(m, LUTLayer)]
    used = used_nodes(model)
    x = model[0](data)  # encoder bits
    for doc, layer, mask in zip(docs, layers, used, strict=True):
        assert doc["k"] == layer.k and len(doc["nodes"]) == layer.out_features
        assert [n["used"] for n in doc["nodes"]] == mask.tolist()
        expected = layer(x)
        bits = x.bool()
        rebuilt = torch.zeros_like(expected)
        for node in doc["nodes"]:
            assert len(node["table"]) == 2 ** len(node["inputs"])
            address = sum(bits[:, s].long() << j for j, s in enumerate(node["inputs"]))
            table = torch.tensor([c == "1" for c in node["table"]])
            rebuilt[:, node["node"]] = table[torch.as_tensor(address)].float()
        assert torch.equal(rebuilt, expected)
        assert [len(n["inputs"]) for n in doc["nodes"]] == effective_inputs(layer).tolist()
        x = expected


# --------------------------------------------------------------------------- unchanged values
# Captured from git HEAD before the kernels/ and device changes (036f0ec): the encoders, the
# seeded layers, the soft forward and every sensitivity mode must keep these numbers.

HEAD_THRESHOLDS = {
    "quantile": [[-0.19630159, 1.07552516, 1.98076570, 3.00369072],
                 [-0.80445307, -0.18761425, 0.79742527, 1.80651736],
                 [-0.75314265, 0.31964704, 1.32388425, 2.84714818]],
    "uniform": [[-3.23501587, -1.17943907, 0.87613773, 2.93171453],
                [-0.73527241, 1.05577874, 2.84683013, 4.63788128],
                [-0.84468877, 1.03253555, 2.90976024, 4.78698444]],
    "gaussian": [[-0.52251506, 0.74439543, 1.83561492, 3.10252547],
                 [-0.96967709, 0.07898590, 0.98222375, 2.03088665],
                 [-0.71077847, 0.48686874, 1.51843011, 2.71607733]],
}


def test_encoder_thresholds_keep_their_values():
    torch.manual_seed(0)
    x = torch.randn(50, 3, dtype=torch.float64) * 2 + 1
    encoders = {"quantile": ThermometerEncoder(4), "uniform": ThermometerEncoder(4, "uniform"),
                "gaussian": GaussianThermometerEncoder(4)}
    for name, enc in encoders.items():
        got = enc.fit(x).thresholds
        torch.testing.assert_close(got, torch.tensor(HEAD_THRESHOLDS[name]), atol=1e-6, rtol=0)


def test_seeded_layers_and_sensitivity_keep_their_values():
    layer = LUTLayer(10, 6, k=4, seed=3, record_inputs=True)
    assert layer.connections.tolist() == [[6, 0, 3, 7], [8, 5, 1, 9], [2, 4, 9, 8],
                                          [5, 3, 0, 6], [7, 2, 1, 4], [0, 9, 6, 1]]
    assert layer.logits.sum().item() == pytest.approx(-2.7618942, abs=1e-6)
    learnable = LUTLayer(10, 6, k=3, seed=4, connections="learnable")
    assert learnable.connection_indices().tolist() == [[0, 4, 9], [6, 7, 3], [2, 8, 1],
                                                       [5, 1, 6], [5, 8, 0], [4, 9, 2]]
    assert learnable.connection_logits.sum().item() == pytest.approx(17.7827606, abs=1e-5)
    exact = [functional_sensitivity(layer, p=p, mode="exact").item() for p in (1, 2, 1.5)]
    assert exact == pytest.approx([0.21197724, 0.07348060, 0.11987654], abs=1e-7)
    torch.manual_seed(1)
    x = torch.rand(7, 10)
    layer.train()(x)
    assert layer(x)[0].tolist() == pytest.approx(
        [0.51077974, 0.48839295, 0.51386142, 0.51680017, 0.36482403, 0.54254043], abs=1e-7)
    by_input = [functional_sensitivity(layer, p=p, mode="input").item() for p in (1, 2)]
    assert by_input == pytest.approx([0.20343458, 0.07128406], abs=1e-7)
    torch.manual_seed(2)
    random = functional_sensitivity(layer, p=2, mode="random", num_samples=16).item()
    assert random == pytest.approx(0.07718378, abs=1e-7)
    functional_sensitivity(layer, p=2, mode="input").backward()
    assert layer.logits.grad.abs().sum().item() == pytest.approx(0.12640150, abs=1e-7)


# ------------------------------------------------------------- one analysis, one protocol
def test_the_json_export_describes_what_the_verilog_builds(tmp_path):
    """The truth-table JSON and the Verilog come from one analysis: a node that reads only
    a constant node of the layer before is itself constant, so neither is built, and the
    JSON's `used` flags and inputs say exactly what the Verilog wires."""
    from hwnas.hw import export_verilog

    first, last = LUTLayer(6, 4, k=2, seed=0), LUTLayer(4, 3, k=2, seed=1)
    with torch.no_grad():
        first.logits[0].fill_(5.0)  # node 0 of the first layer: constant 1
        last.connections.copy_(torch.tensor([[0, 0], [1, 2], [2, 3]]))  # node 0 reads it only
    model = nn.Sequential(first, last).eval()
    paths = export_truth_tables(model, tmp_path / "json")
    docs = read_truth_tables(tmp_path / "json")
    v = export_verilog(model, tmp_path / "net.v")
    for doc, inputs in zip(docs, v.node_inputs, strict=True):
        built = [len(n["inputs"]) for n in doc["nodes"] if n["used"]]
        assert built == list(inputs)
    assert len(paths) == 3
    assert [u.tolist() for u in used_nodes(model)] == [
        [n["used"] for n in doc["nodes"]] for doc in docs]
    assert not docs[0]["nodes"][0]["used"] and not docs[1]["nodes"][0]["used"]


def test_sensitivity_follows_the_regularizer_protocol():
    """fit calls a regularizer as reg(model, epoch, n_epochs): the positions after the model
    are the epochs, never the exponent or the sample count."""
    layer = LUTLayer(6, 4, k=3, seed=0)
    want = functional_sensitivity(layer, mode="exact")
    assert functional_sensitivity(layer, 3, 10, mode="exact").item() == want.item()
    for name in ("functional", "functional_l1", "functional_l2", "functional_exact"):
        assert float(registry.get(name)(layer, 3, 10).detach()) >= 0


def test_sensitivity_mode_none_is_one_mode_for_the_model():
    recorded = LUTLayer(6, 4, k=2, seed=0, record_inputs=True)
    plain = LUTLayer(4, 2, k=2, seed=1)
    model = nn.Sequential(recorded, plain).train()
    model(torch.rand(8, 6))
    with pytest.raises(ValueError, match=r"LUT layers \[1\] have not recorded inputs and the "
                                         r"others have: pass mode='exact'"):
        functional_sensitivity(model)
    exact = functional_sensitivity(model, mode="exact")
    assert functional_sensitivity(nn.Sequential(LUTLayer(6, 4, k=2, seed=0),
                                                LUTLayer(4, 2, k=2, seed=1))).item() == \
        pytest.approx(exact.item())
