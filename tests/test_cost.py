"""Tests for hwnas/cost: formulas against hand counts and FlopCounterMode, registry, targets."""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from importlib import resources
from pathlib import Path

import pytest
import torch
from torch import nn

from hwnas import cost
from hwnas.cost import Target, load_target
from hwnas.cost.profile import full_alive, profile
from hwnas.graph import layers, trace

try:  # tests/ as a plain directory on sys.path (pytest rootdir "prepend" import mode)
    from flop_reference import reference_counts
    from zoo import build, names
except ImportError:  # tests/ imported as a package
    from tests.flop_reference import reference_counts
    from tests.zoo import build, names

LIGHT = names()
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@functools.lru_cache(maxsize=None)
def _zoo_profile(name: str):
    """Generic-target profile of zoo model ``name`` (computed once per test session)."""
    model, x = build(name)
    return profile(model, x)


def _total(df, column: str):
    row = df[df["layer"] == "total"]
    assert len(row) == 1
    return row[column].item()


# ------------------------------------------------------------------- params and MACs


@pytest.mark.parametrize("name", LIGHT)
def test_params_and_ops_equal_the_reference(name: str) -> None:
    # The reference reads the ops that run (tests/flop_reference.py): FlopCounterMode's
    # 2 FLOPs per multiply-accumulate of convolution / mm / addmm / bmm / attention, halved,
    # plus one MAC per output of an op that adds a bias parameter (hwnas counts one MAC per
    # weight use and one per output for the bias, PLiNIO's convention); params are the
    # parameters that enter those ops. The zoo has them as modules (Conv, Linear,
    # MultiheadAttention) and as functions (F.linear, F.conv2d, matmul, einsum,
    # scaled_dot_product_attention).
    model, x = build(name)
    ref = reference_counts(model, x)
    df = _zoo_profile(name)
    assert (_total(df, "params"), _total(df, "ops")) == (ref.params, ref.ops)


def test_reference_counts_every_mac_and_bias() -> None:
    # the reference itself, by hand: a conv with bias, F.linear, a product of activations
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3)
            self.w = nn.Parameter(torch.randn(3, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x).flatten(2).transpose(1, 2)  # (1, 4 positions, 4 channels)
            y = torch.nn.functional.linear(y, self.w)  # (1, 4, 3), no bias
            return y @ y.transpose(1, 2)  # (1, 4, 4) over 3 channels

    ref = reference_counts(Net(), torch.randn(1, 2, 4, 4))
    assert ref.macs == 4 * 2 * 9 * 4 + 4 * 4 * 3 + 4 * 4 * 3
    assert ref.biased_outputs == 4 * 4
    assert ref.params == 4 * 2 * 9 + 4 + 3 * 4
    df = profile(Net(), torch.randn(1, 2, 4, 4))
    assert (_total(df, "params"), _total(df, "ops")) == (ref.params, ref.ops)


@pytest.mark.parametrize("name", LIGHT)
def test_norm_params_are_affine_parameters(name: str) -> None:
    model, _ = build(name)
    df = _zoo_profile(name)
    expected = sum(
        p.numel() for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()
    )
    assert _total(df, "norm_params") == expected
    # normalisation layers cost no params and no MACs
    norms = df[df["type"].isin(["BatchNorm1d", "BatchNorm2d", "LayerNorm"])]
    assert (norms["params"] == 0).all() and (norms["ops"] == 0).all()


def test_norm_params_of_layernorm_over_spatial_dims() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.LayerNorm([4, 4]), nn.Conv2d(8, 2, 1))
    df = profile(net, torch.randn(1, 3, 4, 4))
    assert df["norm_params"].tolist() == [0, 2 * 4 * 4, 0, 32]
    bn = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8, affine=False), nn.Conv2d(8, 2, 1))
    assert _total(profile(bn, torch.randn(1, 3, 4, 4)), "norm_params") == 0


def test_digits_cnn_by_hand() -> None:
    df = _zoo_profile("digits_cnn").set_index("layer")  # input 1x1x8x8
    convs = {
        "features.0": (32 * (1 * 9 + 1), 32 * (1 * 9 + 1) * 8 * 8),
        "features.3": (64 * (32 * 9 + 1), 64 * (32 * 9 + 1) * 8 * 8),
        "features.7": (64 * (64 * 9 + 1), 64 * (64 * 9 + 1) * 4 * 4),  # after MaxPool2d(2)
        "fc": (10 * (64 + 1), 10 * (64 + 1)),
    }
    for layer, (params, ops) in convs.items():
        assert (df.loc[layer, "params"], df.loc[layer, "ops"]) == (params, ops)
    assert df.loc["total", "params"] == 320 + 18496 + 36928 + 650 == 56394
    assert df.loc["total", "ops"] == 20480 + 1183744 + 590848 + 650 == 1795722
    assert df.loc["total", "norm_params"] == 2 * 32 + 2 * 64 + 2 * 64


def test_resnet_by_hand() -> None:
    # widths (16, 32), blocks (2, 1), input 1x3x32x32, no biases
    df = _zoo_profile("resnet").set_index("layer")
    hw1, hw2 = 32 * 32, 16 * 16
    expected = {
        "conv1": 16 * 3 * 9 * hw1,
        "layers.0.0.conv1": 16 * 16 * 9 * hw1,
        "layers.0.0.conv2": 16 * 16 * 9 * hw1,
        "layers.0.1.conv1": 16 * 16 * 9 * hw1,
        "layers.0.1.conv2": 16 * 16 * 9 * hw1,
        "layers.1.0.conv1": 32 * 16 * 9 * hw2,  # stride 2
        "layers.1.0.conv2": 32 * 32 * 9 * hw2,
        "layers.1.0.downsample.0": 32 * 16 * 1 * hw2,  # 1x1 stride-2 shortcut
        "fc": 10 * (32 + 1),
    }
    for layer, ops in expected.items():
        assert df.loc[layer, "ops"] == ops, layer
    assert df.loc["total", "ops"] == (
        442368 + 4 * 2359296 + 1179648 + 2359296 + 131072 + 330) == 13549898
    assert df.loc["total", "params"] == (
        16 * 27 + 4 * 16 * 144 + 32 * 144 + 32 * 288 + 32 * 16 + 10 * 33) == 24314


def test_depthwise_and_grouped_by_hand() -> None:
    net = nn.Sequential(
        nn.Conv2d(4, 8, 1, bias=False),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise, bias
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),  # grouped
    )
    df = profile(net, torch.randn(1, 4, 5, 5))
    assert df["params"].tolist() == [8 * 4, 8 * (1 * 9 + 1), 8 * (4 * 9), 32 + 80 + 288]
    assert df["ops"].tolist() == [32 * 25, 80 * 25, 288 * 25, (32 + 80 + 288) * 25]


def test_attention_by_hand() -> None:
    # nn.MultiheadAttention(8, 2) over 5 tokens: 4 projections of 8x8 weights + 8 biases for
    # every token (q, k, v of 5 tokens each, output of 5), then q @ k^T and attn @ v: each
    # 5 x 5 positions x 4 channels per head x 2 heads
    mha = nn.MultiheadAttention(8, 2, batch_first=True)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    df = profile(Net(), torch.randn(1, 5, 8))
    assert df.loc[0, "type"] == "MultiheadAttention"
    assert df.loc[0, "params"] == 4 * 8 * 8 + 4 * 8 == 288
    assert df.loc[0, "ops"] == 4 * 5 * (8 * 8 + 8) + 5 * 5 * (8 + 8) == 1840
    # the cost functions in the alive counts: half the per-head dim pruned
    info = layers(trace(Net(), torch.randn(1, 5, 8)))[0]
    alive = {"in": torch.tensor(4.0), "out": torch.tensor(4.0)}
    assert cost.evaluate("params", info, alive, load_target("generic")) == 4 * 16 + 4 * 4
    assert cost.evaluate("ops", info, alive, load_target("generic")) == 20 * 20 + 25 * 8


def test_linear_over_tokens_counts_every_token() -> None:
    df = profile(nn.Sequential(nn.Linear(16, 4)), torch.randn(1, 8, 16))
    assert (df.loc[0, "params"], df.loc[0, "ops"]) == (4 * (16 + 1), 4 * (16 + 1) * 8)


# ------------------------------------------------------------------------------ LUTs


def _layer_luts(module: nn.Module, x: torch.Tensor, target: str) -> float:
    # wrapped: a bare root module is traced into (F.linear), not kept as a layer
    df = profile(nn.Sequential(module), x, target=target)
    return float(df.loc[0, "luts"])


def _array(name: str) -> Target:
    """A shipped target with the multiplier-array MAC model (mac = "multiplier_array"), which
    custom targets may still name; the shipped ones use the fitted model (test_hw_costs.py)."""
    t = load_target(name)
    return replace(t, luts=replace(t.luts, mac="multiplier_array"))


def test_luts_linear_by_hand() -> None:
    # Per output: n = 16 multipliers of W*A partial-product bits, n - 1 + bias = 16 adders
    # of W + A + log2(n) bits. xc7-lut6: W = A = 8; ice40-lut4: W = 4, A = 8.
    x = torch.randn(1, 16)
    lin = nn.Linear(16, 4)
    assert _layer_luts(lin, x, _array("xc7-lut6")) == 4 * (16 * 8 * 8 + 16 * (8 + 8 + 4)) == 5376
    assert _layer_luts(lin, x, _array("ice40-lut4")) == 4 * (16 * 4 * 8 + 16 * (4 + 8 + 4)) == 3072
    no_bias = nn.Linear(16, 4, bias=False)
    assert _layer_luts(no_bias, x, _array("xc7-lut6")) == 4 * (16 * 64 + 15 * 20) == 5296


def test_luts_conv_by_hand() -> None:
    # Conv2d(2, 3, 2): n = 2 * 2 * 2 = 8 weights per output channel; spatial positions
    # reuse the hardware, so the LUT count does not depend on the input size.
    conv = nn.Conv2d(2, 3, 2)
    for size in (3, 9):
        x = torch.randn(1, 2, size, size)
        assert _layer_luts(conv, x, _array("xc7-lut6")) == 3 * (8 * 64 + 8 * (16 + 3)) == 1992
        assert _layer_luts(conv, x, _array("ice40-lut4")) == 3 * (8 * 32 + 8 * (12 + 3)) == 1128
    # a non-power-of-two fan-in keeps log2 continuous (differentiable): n = 3 * 3 * 3 = 27
    conv27 = nn.Conv2d(3, 5, 3, bias=False)
    expected = 5 * (27 * 64 + 26 * (16 + math.log2(27)))
    assert _layer_luts(conv27, torch.randn(1, 3, 4, 4), _array("xc7-lut6")) == pytest.approx(
        expected, rel=1e-6)


def test_lut_column_only_on_lut_targets() -> None:
    net = nn.Sequential(nn.Linear(16, 4))
    x = torch.randn(1, 16)
    assert "luts" not in profile(net, x, target="generic").columns
    assert "luts" in profile(net, x, target="xc7-lut6").columns
    gm = trace(net, x)
    info = layers(gm)[0]
    with pytest.raises(ValueError, match=r"target 'generic' has no LUT model; use one of "
                                         r"ice40-lut4, xc7-lut6"):
        cost.evaluate("luts", info, full_alive(info), load_target("generic"))


def test_costs_are_differentiable_in_alive() -> None:
    gm = trace(nn.Sequential(nn.Conv2d(4, 8, 3)), torch.randn(1, 4, 6, 6))
    info = layers(gm)[0]
    alive = {"in": torch.tensor(2.5, requires_grad=True),
             "out": torch.tensor(3.0, requires_grad=True)}
    ops = cost.evaluate("ops", info, alive, load_target("generic"))
    ops.backward()
    assert ops.item() == pytest.approx(3.0 * (2.5 * 9 + 1) * 16)
    assert alive["in"].grad.item() == pytest.approx(3.0 * 9 * 16)
    assert alive["out"].grad.item() == pytest.approx((2.5 * 9 + 1) * 16)


# -------------------------------------------------------------------------- registry


class Scale(nn.Module):
    """A custom layer with its own cost (multiplies every channel by a learned scalar)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ShiftScale(Scale):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + 1


def test_register_custom_layer_and_subclass(clean_registry) -> None:
    @cost.register("params", Scale)
    def scale_params(info, alive, target):
        return alive["out"] * 1.0

    @cost.register("ops", Scale)
    def scale_ops(info, alive, target):
        return alive["out"] * 7.0

    assert cost.lookup("params", Scale) is scale_params
    assert cost.lookup("params", ShiftScale) is scale_params  # along the class hierarchy
    assert cost.lookup("norm_params", Scale) is None
    assert cost.lookup("params", nn.Conv1d) is cost.lookup("params", nn.Conv2d)

    net = nn.Sequential(nn.Conv2d(3, 8, 1), ShiftScale(8), nn.Conv2d(8, 2, 1))
    gm = trace(net, torch.randn(1, 3, 4, 4), is_leaf=cost.is_costed)
    # the registered module is a leaf (not traced into): one call_module node
    assert [n.op for n in gm.graph.nodes if n.name == "_1"] == ["call_module"]
    assert [i.kind for i in layers(gm)] == ["conv", "layer", "conv"]
    df = profile(net, torch.randn(1, 3, 4, 4))
    assert df["type"].tolist()[:3] == ["Conv2d", "ShiftScale", "Conv2d"]
    assert df["params"].tolist() == [8 * 4, 8, 2 * 9, 32 + 8 + 18]
    assert df["ops"].tolist() == [32 * 16, 8 * 7, 18 * 16, 512 + 56 + 288]
    assert "opaque to channel pruning" in df.loc[1, "frozen"]


def test_register_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`metric` must be a non-empty string, but got ''"):
        cost.register("", Scale)
    with pytest.raises(TypeError, match="`layer_type` must be a class"):
        cost.register("params", Scale(2))  # type: ignore[arg-type]


def test_unknown_metric_lists_known() -> None:
    known = ", ".join(cost.metrics())
    with pytest.raises(KeyError, match=f"unknown cost 'lut'; known: {known}"):
        cost.lookup("lut", nn.Conv2d)
    assert {"luts", "norm_params", "ops", "params"} <= set(cost.metrics())


def test_unknown_target_lists_known() -> None:
    with pytest.raises(KeyError, match=r"unknown target 'xc7'; known: generic, ice40-lut4, "
                                       r"xc7-lut6 \(or a .toml path\)"):
        load_target("xc7")
    with pytest.raises(TypeError, match="`target` must be a target name, a .toml path or a "
                                        "Target, but got int"):
        load_target(7)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_target("missing.toml")


# --------------------------------------------------------------------------- targets

USER_TARGET = """
name = "my-lut6"
description = "a 4-bit LUT6 device"
family = "lut"
lut_inputs = 6
weight_bits = 4
activation_bits = 4

[luts]
table = "logicnets"
luts_per_pp_bit = 0.5
luts_per_adder_bit = 1.0
"""


def test_user_target_by_path(tmp_path: Path) -> None:
    path = tmp_path / "my.toml"
    path.write_text(USER_TARGET)
    for ref in (path, str(path)):
        target = load_target(ref)
        assert (target.name, target.family, target.lut_inputs) == ("my-lut6", "lut", 6)
        assert (target.weight_bits, target.activation_bits) == (4, 4)
        assert target.luts == cost.LutModel(table="logicnets", luts_per_pp_bit=0.5)
    # Linear(16, 4): 4 * (16 * 4 * 4 * 0.5 + 16 * (4 + 4 + 4) * 1.0)
    df = profile(nn.Sequential(nn.Linear(16, 4)), torch.randn(1, 16), target=path)
    assert df.loc[0, "luts"] == 4 * (16 * 4 * 4 * 0.5 + 16 * 12) == 1280
    assert load_target(target) is target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "t"\nclock_mhz = 100\n', r"unknown key\(s\) \['clock_mhz'\]; allowed: "),
        ('name = "t"\nfamily = "lut"\nlut_inputs = 6\n[luts]\nmultiplier = 1\n',
         r"unknown key\(s\) \['multiplier'\] in \[luts\]"),
        ('name = "t"\nfamily = "lut"\nlut_inputs = 6\n', r"a 'lut' target needs a \[luts\] table"),
        ('name = "t"\nfamily = "asic"\n', r"`family` must be one of \('generic', 'lut'\), "
                                           r"but got 'asic'"),
        ('name = "t"\nweight_bits = 0\n', r"`weight_bits` must be an integer in \[1, 64\], "
                                           r"but got 0"),
        ('name = "t"\nfamily = "lut"\nlut_inputs = 2\n[luts]\n',
         r"`lut_inputs` must be an integer in \[3, 8\]"),
        ('name = "t"\nfamily = "lut"\nlut_inputs = 4\n[luts]\ntable = "bdt"\n',
         r"`luts.table` must be one of \('logicnets', 'shannon', 'muxf', 'bdd'\), "
         r"but got 'bdt'"),
        ('name = "t"\nfamily = "lut"\nlut_inputs = 4\n[luts]\nluts_per_pp_bit = -1\n',
         r"`luts.luts_per_pp_bit` must be a number >= 0, but got -1"),
        ('description = "no name"\n', r"`name` is required"),
    ],
)
def test_bad_target_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_target(path)


def test_shipped_targets_from_package_resources() -> None:
    folder = resources.files("hwnas.cost").joinpath("targets")
    assert cost.known_targets() == ["generic", "ice40-lut4", "xc7-lut6"]
    for name in cost.known_targets():
        assert folder.joinpath(f"{name}.toml").is_file()
        target = load_target(name)
        assert isinstance(target, Target) and target.name == name
    assert folder.joinpath("README.md").is_file()  # the formulas travel with the targets
    generic, lut6, lut4 = (load_target(n) for n in ("generic", "xc7-lut6", "ice40-lut4"))
    assert (generic.family, generic.luts, generic.weight_bits) == ("generic", None, 32)
    assert (lut6.lut_inputs, lut6.weight_bits, lut6.activation_bits) == (6, 8, 8)
    assert (lut6.luts.table, lut6.luts.mac) == ("muxf", "fitted")
    assert (lut4.lut_inputs, lut4.weight_bits, lut4.activation_bits) == (4, 4, 8)
    assert (lut4.luts.table, lut4.luts.mac) == ("bdd", "fitted")
