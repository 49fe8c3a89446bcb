"""Tests for hwnas/cost/luts.py and hwnas/hw/calibrate.py: the LUT cost formulas, the fit
that produced the shipped coefficients, and the target-file round trip. No tool runs here."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from hwnas import cost
from hwnas.cost import load_target
from hwnas.cost.luts import (
    bdd_nodes,
    mac_features_exact,
    mac_features_expected,
    mac_luts,
    min_bdd_nodes,
    node_luts,
    quantize_weights,
    weight_luts,
)
from hwnas.cost.profile import full_alive
from hwnas.errors import ConfigError
from hwnas.graph import layers, trace
from hwnas.hw.calibrate import (
    MAC_FIT,
    MAC_HELD_OUT,
    calibration_block,
    fit,
    readme_section,
    write_calibration,
)

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ROOT / "hwnas" / "cost" / "targets"


def _bdd_brute(bits: list[int], top: int) -> set:
    """ROBDD nodes by recursion on the top variable (MSB first), shared by structure."""
    nodes: set = set()

    def go(sub: tuple[int, ...], var: int):
        if len(set(sub)) == 1:
            return sub[0]
        half = len(sub) // 2
        lo, hi = go(sub[:half], var - 1), go(sub[half:], var - 1)
        if lo == hi:
            return lo
        key = (var, lo, hi)
        nodes.add(key)
        return key

    go(tuple(bits), top)
    return nodes


def test_bdd_nodes_equal_a_recursive_robdd():
    rng = random.Random(0)
    for x in (1, 2, 3, 5, 7):
        for _ in range(20):
            table = rng.getrandbits(2**x)
            bits = [(table >> a) & 1 for a in range(2**x)]
            assert bdd_nodes(table, x) == len(_bdd_brute(bits, x - 1))
    parity = sum(1 << a for a in range(64) if bin(a).count("1") % 2)
    assert bdd_nodes(parity, 6) == 11  # 2x - 1 nodes for the parity of x inputs


def _permuted(table: int, x: int, order: tuple[int, ...]) -> int:
    """The table with its address bits reordered (``order`` over axes, MSB first)."""
    cube = torch.tensor([(table >> a) & 1 for a in range(2**x)]).reshape((2,) * x)
    flat = cube.permute(order).reshape(-1).tolist()
    return sum(b << a for a, b in enumerate(flat))


def test_min_bdd_nodes_is_the_best_order_of_all():
    rng = random.Random(1)
    for x in (1, 2, 3, 4, 5):
        for _ in range(15):
            table = rng.getrandbits(2**x) & rng.getrandbits(2**x)  # some structure
            brute = min(bdd_nodes(_permuted(table, x, p), x)
                        for p in itertools.permutations(range(x)))
            assert min_bdd_nodes(table, x) == brute
    # (a5 & a0) | (a4 & a1) | (a3 & a2): 14 nodes in address order, 6 with the pairs adjacent
    pairs = sum(1 << a for a in range(64)
                if any((a >> i) & (a >> (5 - i)) & 1 for i in range(3)))
    assert (bdd_nodes(pairs, 6), min_bdd_nodes(pairs, 6)) == (14, 6)
    parity = sum(1 << a for a in range(64) if bin(a).count("1") % 2)
    assert min_bdd_nodes(parity, 6) == bdd_nodes(parity, 6) == 11  # symmetric: any order
    with pytest.raises(ValueError, match="<= 10"):
        min_bdd_nodes(0, 11)


def test_ice40_tables_that_decompose_cost_their_decomposition():
    c = load_target("ice40-lut4").luts.calibration.table
    and6 = 1 << 63  # and4(a0..a3) feeds and3(g, a4, a5)
    assert node_luts(6, and6, "ice40-lut4") == 2
    and8 = 1 << 255  # and4 -> h = and5(g, a4..a7), at most 1 + 2
    assert 2.5 < node_luts(8, and8, "ice40-lut4") <= 3  # and5 below: its BDD estimate
    rng = random.Random(3)
    for x in (5, 6, 7):  # random tables do not split: the calibrated BDD estimate
        table = rng.getrandbits(2**x)
        assert node_luts(x, table, "ice40-lut4") == pytest.approx(
            c[x - 5] * min_bdd_nodes(table, x))
    # a table that ignores an address bit is costed on the bits it reads
    and5_of_6 = sum(1 << a for a in range(64) if a & 0b011111 == 0b011111)
    assert node_luts(6, and5_of_6, "ice40-lut4") == node_luts(5, (1 << 31), "ice40-lut4")


def test_node_luts_on_the_shipped_targets():
    assert [node_luts(x, None, "xc7-lut6") for x in range(0, 11)] == [
        0, 1, 1, 1, 1, 1, 1, 2, 4, 9, 17]
    assert node_luts(1, 0b10, "xc7-lut6") == 0  # a wire
    assert node_luts(1, 0b01, "xc7-lut6") == 1  # an inverter
    xor5 = sum(1 << a for a in range(32) if bin(a).count("1") % 2)
    # xor5 = xor4(a0..a3) ^ a4 splits as h(g(A), B): 2 LUT4, not c_5 * 9 BDD nodes
    assert node_luts(5, xor5, "ice40-lut4") == 2
    assert node_luts(4, xor5 & 0xFFFF, "ice40-lut4") == 1


def test_mac_features_expected_are_the_mean_over_all_weights():
    for w_bits, a_bits in ((2, 3), (4, 2), (5, 4)):
        top = 2 ** (w_bits - 1) - 1
        values = range(-top, top + 1)
        exact = [mac_features_exact([v], a_bits) for v in values]
        expected = [float(f) for f in mac_features_expected(1.0, w_bits, a_bits)]
        mean = [sum(col) / len(values) for col in zip(*exact, strict=True)]
        assert expected[0] == pytest.approx(mean[0])  # A * R is linear in the weights' bits


def test_mac_luts_is_smooth_and_grows_with_alive_inputs():
    target = load_target("xc7-lut6")
    gm = trace(nn.Sequential(nn.Conv2d(8, 4, 3)), torch.randn(1, 8, 6, 6))
    info = layers(gm)[0]
    values = []
    for cin in (1.0, 2.5, 4.0, 8.0):
        alive = {"in": torch.tensor(cin, requires_grad=True),
                 "out": torch.tensor(3.0, requires_grad=True)}
        luts = cost.evaluate("luts", info, alive, target)
        luts.backward()
        assert alive["in"].grad.item() > 0 and alive["out"].grad.item() > 0
        values.append(luts.item())
    assert values == sorted(values)
    assert values[-1] == pytest.approx(3 * float(mac_luts(72.0, target)))  # smooth: unrounded
    full = cost.evaluate("luts", info, full_alive(info), target).item()
    assert full == round(4 * float(mac_luts(72.0, target)))  # no gradient: whole LUTs


def test_other_bit_widths_by_dataclasses_replace():
    base = load_target("xc7-lut6")
    small = dataclasses.replace(base, weight_bits=4, activation_bits=4)
    assert (small.weight_bits, small.activation_bits, small.luts) == (4, 4, base.luts)
    assert float(mac_luts(32.0, small)) < float(mac_luts(32.0, base)) / 2
    binary = dataclasses.replace(base, weight_bits=1, activation_bits=1)
    assert 0 < float(mac_luts(32.0, binary)) < float(mac_luts(32.0, small))


def test_real_weights_zero_and_powers_of_two_are_cheaper():
    target = dataclasses.replace(load_target("xc7-lut6"), weight_bits=4, activation_bits=4)
    assert quantize_weights(torch.tensor([[0.7, -0.35, 0.1, 0.0]]), 4).tolist() == [[7, -4, 1, 0]]
    # rows whose largest |weight| is 7 quantise to themselves (scale 1)
    dense = torch.tensor([[7.0, -5.0, 3.0, 7.0, -7.0, 5.0, 6.0, -3.0]])
    powers = torch.tensor([[7.0, -4.0, 2.0, 4.0, -4.0, 1.0, 4.0, -2.0]])
    assert torch.equal(quantize_weights(powers, 4), powers.long())
    sparse = dense.clone()
    sparse[0, ::2] = 0.0
    assert weight_luts(powers, target) < weight_luts(dense, target)
    assert weight_luts(sparse, target) < weight_luts(dense, target)
    assert weight_luts(torch.zeros(2, 8), target) == 0.0


def test_shipped_coefficients_are_the_fit_of_the_shipped_measurements():
    """`hwnas calibrate` wrote them; refitting the committed yosys runs gives them back."""
    for name in ("xc7-lut6", "ice40-lut4"):
        target = load_target(name)
        records = json.loads((TARGETS / "calibration" / f"{name}.json").read_text())
        cal = fit(records, target)
        shipped = target.luts.calibration
        for key in ("mac", "table", "table_random", "comparator", "popcount"):
            assert list(getattr(shipped, key)) == pytest.approx(cal.values[key], abs=1e-6)
        held = cal.errors["mac_held_out"]
        assert held["median"] <= 0.15 and held["worst"] <= 0.30, (name, held)
        assert hash(target) and list(shipped.error("mac_held_out")) == pytest.approx(
            [held["median"], held["worst"]], abs=1e-6)
        assert {r["yosys"] for r in records.values()} == {shipped.yosys}


def test_held_out_shapes_share_nothing_with_the_fitted_grid():
    for n, w, a in MAC_HELD_OUT:
        assert n not in MAC_FIT["n"] and w not in MAC_FIT["w"] and a not in MAC_FIT["a"]
    assert len(list(itertools.product(*MAC_FIT.values()))) == 63


def test_calibration_block_round_trip(tmp_path):
    path = tmp_path / "mine.toml"
    shutil.copyfile(TARGETS / "xc7-lut6.toml", path)
    target = load_target(path)
    records = json.loads((TARGETS / "calibration" / "xc7-lut6.json").read_text())
    cal = fit(records, target)
    cal.values["mac"] = [2 * c for c in cal.values["mac"]]
    write_calibration(path, calibration_block(cal, target, "yosys X", "hwnas calibrate mine"))
    again = load_target(path)
    assert list(again.luts.calibration.mac) == pytest.approx(cal.values["mac"])
    assert again.luts.calibration.yosys == "yosys X"
    assert path.read_text().count("# BEGIN hwnas calibrate") == 1
    section = readme_section(again, "hwnas calibrate mine")
    assert section.startswith("<!-- BEGIN calibration xc7-lut6 -->\n### `xc7-lut6`: fitted with "
                              "`hwnas calibrate mine`")


@pytest.mark.parametrize("edit,message", [
    ("mac = [0.1, -0.2, 0.3]", r"`luts.calibration.mac` must be a list of finite numbers >= 0"),
    ("mac = [0.1, 0.2]", r"`luts.calibration.mac` must have one coefficient per feature"),
    ("colour = 1", r"unknown key\(s\) \['colour'\] in \[luts.calibration\]"),
])
def test_bad_calibration_tables(tmp_path, edit, message):
    text = (TARGETS / "xc7-lut6.toml").read_text()
    key = edit.split(" = ")[0]
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} = ")]
    at = lines.index("[luts.calibration]") + 1
    lines.insert(at, edit)
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_target(path)


def test_fitted_model_needs_a_calibration(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\nfamily = "lut"\nlut_inputs = 6\n[luts]\nmac = "fitted"\n')
    with pytest.raises(ConfigError, match=r'`luts.mac = "fitted"` needs \[luts.calibration\] '
                                          r"coefficients; run `hwnas calibrate TARGET`"):
        load_target(path)
    assert math.isfinite(float(mac_luts(4.0, "ice40-lut4")))
