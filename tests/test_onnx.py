"""Tests for hwnas/export/onnx.py: export_onnx.

Contract 2 (DESIGN.md): the ONNX file passes onnx.checker, runs in onnxruntime with a
dynamic batch and matches PyTorch; a non-finite output is a mismatch, never a pass.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ARCH, GATES, build_random, random_gates_, search_of, set_gates_
from hypothesis import HealthCheck, given, settings
from torch import nn
from zoo import build, names

import hwnas
from hwnas.errors import ExportError
from hwnas.export.onnx import export_onnx

LIGHT = names()
FRACTIONS = (0.0, 0.5, 0.9)


@pytest.mark.parametrize("name", LIGHT)
def test_zoo_onnx_parity(name: str, tmp_path: Path) -> None:
    search, x = search_of(name)
    set_gates_(search, 0.5, seed=1)
    path = tmp_path / f"{name}.onnx"
    result = export_onnx(search, path, x)
    assert path.is_file()
    assert result.batch_sizes == (1, 3)
    assert result.max_abs_diff <= 1e-4
    costs = search.costs()
    assert (result.params, result.ops) == (costs["params"], costs["ops"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(arch=ARCH, gates=GATES)
def test_random_architectures_onnx(arch: dict, gates: tuple[float, float, int]) -> None:
    model, x = build_random(arch)
    search = hwnas.wrap(model, x)
    random_gates_(search, gates)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = export_onnx(search, Path(d) / "net.onnx", x)
    assert result.batch_sizes == (1, 3)
    assert result.max_abs_diff <= 1e-4
    assert result.params == search.costs()["params"]


# ---------------------------------------------------------------- failed exports


def _no_leftovers(folder: Path, allowed: set[str]) -> None:
    names_ = {p.name for p in folder.iterdir()}
    assert names_ <= allowed, names_ - allowed
    assert not list(folder.glob("*.part"))


class _Noisy(nn.Module):
    """Adds fresh noise on every call: onnxruntime draws other numbers than PyTorch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_parity_failure_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "net.onnx"
    with pytest.raises(ExportError, match=r"differs from PyTorch by [0-9.e+-]+ at flat index"):
        export_onnx(_Noisy(), path, torch.zeros(1, 64))
    assert not path.exists()
    _no_leftovers(tmp_path, set())


def test_failed_export_keeps_an_older_file(tmp_path: Path) -> None:
    search, x = search_of("digits_cnn")
    path = tmp_path / "net.onnx"
    path.write_bytes(b"older export")
    with pytest.raises(ExportError, match="atol"):
        export_onnx(_Noisy(), path, torch.zeros(1, 64))
    assert path.read_bytes() == b"older export"
    _no_leftovers(tmp_path, {"net.onnx"})
    result = export_onnx(search, path, x)  # a later good export replaces it
    assert path.read_bytes() != b"older export" and result.max_abs_diff <= 1e-4
    _no_leftovers(tmp_path, {"net.onnx"})


class _Unexportable(nn.Module):
    """An op without an ONNX translation: the exporter fails."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.special.bessel_j0(x[:, :2])


class _Untraceable(nn.Module):
    """Leaves torch through numpy: the ONNX exporter copes, torch.fx (the profile) cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.from_numpy(np.ascontiguousarray(x.detach().numpy())))


def test_exporter_failure_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "net.onnx"
    with pytest.raises(ExportError, match="torch.onnx.export failed for _Unexportable"):
        export_onnx(_Unexportable(), path, torch.randn(1, 4))
    assert not path.exists()
    _no_leftovers(tmp_path, set())


def test_model_fx_cannot_trace_is_exported_without_costs(tmp_path: Path) -> None:
    path = tmp_path / "net.onnx"
    with pytest.raises(hwnas.TraceError, match="cannot trace _Untraceable"):
        hwnas.profile(_Untraceable(), torch.randn(1, 4))
    result = export_onnx(_Untraceable(), path, torch.randn(1, 4))
    assert path.exists()
    assert result.max_abs_diff <= 1e-4 and result.batch_sizes == (1, 3)
    assert math.isnan(result.params) and math.isnan(result.ops)
    _no_leftovers(tmp_path, {"net.onnx"})


def test_bad_paths(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_onnx(net, tmp_path / "net.onx", torch.randn(1, 4))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(net, tmp_path / "missing" / "net.onnx", torch.randn(1, 4))
    with pytest.raises(TypeError, match="nn.Module or SearchModel"):
        export_onnx("net", tmp_path / "net.onnx", torch.randn(1, 4))  # type: ignore[arg-type]
    _no_leftovers(tmp_path, set())


def test_export_plain_model_staticbatch_of(tmp_path: Path) -> None:
    model, x = build("digits_cnn")
    model.train()
    result = export_onnx(model, tmp_path / "net.onnx", x, dynamic_batch=False)
    assert result.batch_sizes == (1,)
    assert result.max_abs_diff <= 1e-4
    assert model.training  # the mode is restored
    total = hwnas.profile(model, x).iloc[-1]
    assert (result.params, result.ops) == (float(total["params"]), float(total["ops"]))
    import onnx

    proto = onnx.load(str(tmp_path / "net.onnx"))
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1



# ----------------------------------------------------- non-finite values, tolerance, outputs


class _Constant(nn.Module):
    """Returns ``value`` everywhere (NaN, inf, or a large number)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * 0 + self.value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_output_is_never_verified(value: float, tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"PyTorch output is not finite \(3 of 3 values"):
        export_onnx(_Constant(value), path, torch.randn(1, 4))
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_tolerance_is_relative_as_well_as_absolute(tmp_path: Path) -> None:
    # outputs near 1e6: float32 rounding alone is ~0.06 absolute, far above atol
    big = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        big[2].weight.mul_(1e6)
    x = torch.randn(1, 8)
    result = export_onnx(big, tmp_path / "big.onnx", x, atol=1e-6, rtol=1e-5)
    assert result.max_rel_diff <= 1e-5
    with pytest.raises(ExportError, match=r"allowed \|diff\| <= atol \+ rtol\*\|PyTorch\|"):
        export_onnx(big, tmp_path / "strict.onnx", x, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_tolerances_are_rejected(bad: float, tmp_path: Path) -> None:
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="`atol` must be a finite number >= 0"):
        export_onnx(net, tmp_path / "a.onnx", torch.randn(1, 2), atol=bad)
    with pytest.raises(ValueError, match="`rtol` must be a finite number >= 0"):
        export_onnx(net, tmp_path / "a.onnx", torch.randn(1, 2), rtol=bad)


class _DictOut(nn.Module):
    """Segmentation-style outputs: a dict holding a tensor and a tuple of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 4, 1)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        h = self.c(torch.relu(self.a(x)))
        return {"out": self.b(h), "aux": (h.mean((2, 3)), [h.amax((2, 3))])}


FULL_DICT_PARAMS = (3 * 9 + 1) * 6 + (6 + 1) * 4 + (4 + 1) * 2


def test_nested_dict_outputs_export_and_verify(tmp_path: Path) -> None:
    result = export_onnx(_DictOut(), tmp_path / "seg.onnx", torch.randn(1, 3, 8, 8))
    assert len(result.output_names) == 3 and result.batch_sizes == (1, 3)
    assert result.max_abs_diff <= 1e-4
    assert result.params == FULL_DICT_PARAMS


def test_search_model_with_dict_outputs(tmp_path: Path) -> None:
    x = torch.randn(1, 3, 8, 8)
    search = hwnas.wrap(_DictOut().eval(), x)
    set_gates_(search, 0.5, seed=0)
    result = export_onnx(search, tmp_path / "seg.onnx", x)
    assert result.params == search.costs()["params"] < FULL_DICT_PARAMS
