"""Tests for hwnas/cost/profile.py: the per-layer cost table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import hwnas
from hwnas.cost import load_target
from hwnas.cost.profile import metrics_for, profile
from hwnas.graph import layers, trace

try:  # tests/ as a plain directory on sys.path (pytest rootdir "prepend" import mode)
    from zoo import build, names
except ImportError:  # tests/ imported as a package
    from tests.zoo import build, names

LIGHT = names()
INFO_COLUMNS = ["layer", "type", "in_channels", "out_channels", "kernel", "groups", "out_shape"]


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def test_columns_and_rows() -> None:
    df = profile(_net(), torch.randn(1, 3, 4, 4))
    assert list(df.columns) == INFO_COLUMNS + ["bitops", "norm_params", "ops", "params",
                                               "weight_memory", "group", "frozen"]
    assert df["layer"].tolist() == ["0", "1", "4", "total"]
    assert df["type"].tolist() == ["Conv2d", "BatchNorm2d", "Linear", ""]
    assert df["kernel"].tolist() == ["3x3", "", "", ""]
    assert df["out_shape"].tolist() == ["1x8x4x4", "1x8x4x4", "1x10", ""]
    assert df["in_channels"].tolist()[:3] == [3, 8, 128]
    assert df["out_channels"].tolist()[:3] == [8, 8, 10]
    assert df["params"].tolist() == [8 * 28, 0, 10 * 129, 224 + 1290]
    assert df["ops"].tolist() == [8 * 28 * 16, 0, 10 * 129, 3584 + 1290]
    assert df["norm_params"].tolist() == [0, 16, 0, 16]
    # generic: 32-bit weights and activations (hwnas/cost/bits.py)
    assert df["bitops"].tolist() == [v * 32 * 32
                                     for v in (8 * 28 * 16, 0, 1290, 3584 + 1290)]
    assert df["weight_memory"].tolist() == [8 * 27 * 32, 0, 10 * 128 * 32,
                                            (216 + 1280) * 32]
    # the reason of the group a layer writes (the first conv reads the frozen input)
    assert df["frozen"].tolist() == ["", "", "model output", ""]


def test_lut_column_on_lut_targets_only() -> None:
    x = torch.randn(1, 3, 4, 4)
    assert "luts" not in profile(_net(), x, target="generic").columns
    for target in ("xc7-lut6", "ice40-lut4"):
        df = profile(_net(), x, target=target)
        assert "luts" in df.columns
        assert df["luts"].iloc[1] == 0.0  # BatchNorm: no LUT cost registered
        assert df["luts"].iloc[-1] == pytest.approx(df["luts"].iloc[:-1].sum())
        assert metrics_for(load_target(target)) == ["bitops", "luts", "norm_params", "ops",
                                                    "params", "weight_memory"]
    assert metrics_for(load_target("generic")) == ["bitops", "norm_params", "ops", "params",
                                                   "weight_memory"]


@pytest.mark.parametrize("name", LIGHT)
def test_zoo_rows_totals_and_frozen_outputs(name: str) -> None:
    model, x = build(name)
    df = profile(model, x, target="xc7-lut6")
    assert model.training  # profile() restores the train/eval mode
    model.eval()
    gm = trace(model, x)
    # one row per layer, in graph order, plus the total row
    assert df["layer"].tolist() == [i.label for i in layers(gm)] + ["total"]
    body, total = df.iloc[:-1], df.iloc[-1]
    for metric in ("params", "ops", "norm_params"):
        assert total[metric] == body[metric].sum()
        assert (body[metric] >= 0).all()
    assert total["luts"] == pytest.approx(body["luts"].sum(), rel=1e-12)
    # the last layer writes the model output: frozen, with the reason in the table
    assert body.iloc[-1]["layer"] == layers(gm)[-1].label
    assert body.iloc[-1]["frozen"] == "model output"
    assert body["frozen"].map(type).eq(str).all()


def test_csv_round_trip(tmp_path: Path) -> None:
    model, x = build("mobilenetv2")
    df = profile(model, x, target="ice40-lut4")
    path = tmp_path / "profile.csv"
    df.to_csv(path, index=False)
    back = pd.read_csv(path, keep_default_na=False, dtype={"layer": str, "kernel": str})
    assert list(back.columns) == list(df.columns)
    assert back["layer"].tolist() == df["layer"].tolist()
    for metric in ("params", "ops", "norm_params"):
        assert back[metric].tolist() == df[metric].tolist()
    pd.testing.assert_series_equal(back["luts"].astype(float), df["luts"].astype(float),
                                   rtol=1e-12)  # whole LUTs since costs are calibrated
    assert back["frozen"].tolist() == df["frozen"].tolist()


def test_profile_does_not_modify_the_model() -> None:
    model, x = build("resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile(model, x)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training


def test_bad_target() -> None:
    with pytest.raises(KeyError, match="unknown target 'fpga'; known: generic"):
        profile(_net(), torch.randn(1, 3, 4, 4), target="fpga")


def test_counts_above_2_to_the_24_stay_exact() -> None:
    # 6013 x 6015 = 36,168,195 weights: a float32 holds integers exactly only up to 2^24
    # (16,777,216) and would store this count as 36,168,196
    assert int(np.float32(36_168_195)) == 36_168_196
    net = nn.Sequential(nn.Linear(6013, 6015, bias=False))
    x = torch.randn(1, 6013)
    df = profile(net, x)
    assert df["params"].dtype == np.int64
    assert int(df.iloc[-1]["params"]) == 36_168_195
    assert int(df.iloc[-1]["ops"]) == 36_168_195
    search = hwnas.wrap(net, x)
    assert search.costs()["params"] == 36_168_195.0
    assert float(search.cost("params", "deterministic")) == 36_168_195.0


def test_function_layers_are_rows() -> None:
    model, x = build("attention")
    df = profile(model, x).set_index("layer")
    assert df.loc["scaled_dot_product_attention", "type"] == "scaled_dot_product_attention"
    assert df.loc["matmul_1", "type"] == "matmul"
    assert df.loc["einsum", "ops"] == 4 * 16 * 16 * 6  # q k^T over 6 channels per head
    assert df.loc["linear", "type"] == "linear"
