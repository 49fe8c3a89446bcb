"""Tests for hwnas/export.py: materialize() and export_onnx().

Contract 1 (DESIGN.md): for every zoo model and random gate states, ``materialize(search)``
in eval mode computes what ``search`` computes in eval mode, and its params/MACs equal
``search.costs()`` exactly. Contract 2: the ONNX file runs in onnxruntime with a dynamic
batch and matches PyTorch. Both are checked on the zoo and on random architectures
(hypothesis).
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import hwnas
from hwnas.errors import ExportError
from hwnas.onnx import export_onnx
from hwnas.search import materialize

try:  # tests/ as a plain directory on sys.path (pytest rootdir "prepend" import mode)
    from zoo import build, names
except ImportError:  # tests/ imported as a package
    from tests.zoo import build, names

LIGHT = names()
FRACTIONS = (0.0, 0.5, 0.9)


# --------------------------------------------------------------------------- helpers


def _randomize_norms_(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so that BN shifts matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1.0)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model


def _set_gates_(
    search: hwnas.SearchModel, fraction: float, seed: int, low: float = 0.3
) -> dict[int, torch.Tensor]:
    """Close ``round(fraction * n)`` random gates of every free group; the others get
    values in ``[low, 1]`` (values below 1 exercise folding). Returns the values set."""
    g = torch.Generator().manual_seed(seed)
    values = {}
    for group in search.free_groups:
        gate = search.gate(group)
        v = low + (1.0 - low) * torch.rand(gate.n, generator=g)
        v[torch.randperm(gate.n, generator=g)[: int(round(fraction * gate.n))]] = 0.0
        gate.set_deterministic_(v)
        values[group] = v
    return values


def _batch(x: torch.Tensor, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([x, torch.randn((n - 1, *x.shape[1:]), generator=g)], 0)


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return max(float((a(xb) - b(xb)).abs().max()) for xb in (x, _batch(x, 3)))


def _check_costs(pruned: nn.Module, search: hwnas.SearchModel, x: torch.Tensor) -> None:
    total = hwnas.profile(pruned, x).iloc[-1]
    costs = search.costs()
    assert float(total["params"]) == costs["params"]
    assert float(total["ops"]) == costs["ops"]


def _search(name: str, seed: int = 0) -> tuple[hwnas.SearchModel, torch.Tensor]:
    model, x = build(name, seed)
    _randomize_norms_(model, seed + 100)
    return hwnas.wrap(model.eval(), x), x


# ----------------------------------------------------------------- zoo: contract 1 & 2


@pytest.mark.parametrize("name", LIGHT)
def test_zoo_materialize_matches_search(name: str) -> None:
    search, x = _search(name)
    for k, fraction in enumerate(FRACTIONS):
        _set_gates_(search, fraction, seed=k)
        search.eval()
        pruned = materialize(search).eval()
        assert _max_diff(pruned, search, x) <= 1e-5, (name, fraction)
        _check_costs(pruned, search, x)
        if fraction > 0 and search.free_groups:
            assert search.costs()["params"] < search.reference_costs()["params"]


@pytest.mark.parametrize("name", LIGHT)
def test_zoo_onnx_parity(name: str, tmp_path: Path) -> None:
    search, x = _search(name)
    _set_gates_(search, 0.5, seed=1)
    path = tmp_path / f"{name}.onnx"
    result = export_onnx(search, path, x)
    assert path.is_file()
    assert result.batch_sizes == (1, 3)
    assert result.max_abs_diff <= 1e-4
    costs = search.costs()
    assert (result.params, result.ops) == (costs["params"], costs["ops"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]


# ------------------------------------------------------------ random architectures

ACTS = ("relu", "relu6", "silu", "sigmoid", "none")


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "silu": nn.SiLU(), "sigmoid": nn.Sigmoid(),
            "none": nn.Identity()}[name]


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, bn: bool, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c: int, mid: int, act: str) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(c, mid, 3, True, act), ConvBNAct(mid, c, 1, True,
                                                                             "none"))
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Concat(nn.Module):
    def __init__(self, cin: int, c1: int, c2: int, act: str) -> None:
        super().__init__()
        self.a = ConvBNAct(cin, c1, 1, True, act)
        self.b = ConvBNAct(cin, c2, 3, False, "relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


class Depthwise(nn.Module):
    def __init__(self, c: int, bn: bool, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=not bn)
        self.bn = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ChunkCat(nn.Module):
    """ShuffleNet-style: split the channels in two, transform one half, concatenate."""

    def __init__(self, c: int, act: str, first: bool) -> None:
        super().__init__()
        self.first = first
        c1 = (c + 1) // 2  # torch.chunk puts the larger piece first
        self.conv = ConvBNAct(c1 if first else c - c1, c1 if first else c - c1, 1, True, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        if self.first:
            return torch.cat([self.conv(a), b], 1)
        return torch.cat([a, self.conv(b)], 1)


class ChunkAdd(nn.Module):
    """Split in two halves and add them (couples the halves' channels): GLU-like."""

    def __init__(self, c: int, act: str) -> None:
        super().__init__()
        self.conv = ConvBNAct(c // 2, c // 2, 1, True, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return self.conv(a) + torch.sigmoid(b)


class SE(nn.Module):
    """Squeeze-excitation multiply; conv style (keepdim mean) or linear style (view)."""

    def __init__(self, c: int, hidden: int, linear: bool) -> None:
        super().__init__()
        self.c, self.linear = c, linear
        if linear:
            self.fc1: nn.Module = nn.Linear(c, hidden)
            self.fc2: nn.Module = nn.Linear(hidden, c)
        else:
            self.fc1 = nn.Conv2d(c, hidden, 1)
            self.fc2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            s = x.mean((2, 3))
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).view(x.size(0), self.c, 1, 1)
        else:
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class RandomNet(nn.Module):
    """A fixed list of blocks, then GAP + Linear or (pool) flatten + Linear."""

    def __init__(self, blocks: list[nn.Module], head: str, c: int, classes: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        features = c if head == "gap" else c * (16 if head == "pool_flatten" else 64)
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.head == "gap":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        elif self.head == "pool_flatten":
            x = torch.flatten(F.max_pool2d(x, 2), 1)
        else:
            x = x.reshape(x.size(0), -1)
        return self.fc(x)


WIDTH = st.integers(2, 12)
BLOCK = st.one_of(
    st.tuples(st.just("conv"), WIDTH, st.sampled_from((1, 3)), st.booleans(),
              st.sampled_from(ACTS)),
    st.tuples(st.just("res"), WIDTH, st.sampled_from(ACTS)),
    st.tuples(st.just("cat"), st.integers(1, 6), st.integers(1, 6), st.sampled_from(ACTS)),
    st.tuples(st.just("dw"), st.booleans(), st.sampled_from(ACTS)),
    st.tuples(st.just("chunk"), st.sampled_from(ACTS), st.booleans()),
    st.tuples(st.just("chunk_add"), st.sampled_from(ACTS)),
    st.tuples(st.just("se"), WIDTH, st.booleans()),
)
# The stem is a conv: blocks applied to the (frozen) model input would freeze their groups.
STEM = st.tuples(st.just("conv"), WIDTH, st.sampled_from((1, 3)), st.booleans(),
                 st.sampled_from(ACTS))
ARCH = st.fixed_dictionaries({
    "cin": st.integers(1, 4),
    "blocks": st.tuples(STEM, st.lists(BLOCK, min_size=1, max_size=5)).map(
        lambda t: [t[0], *t[1]]),
    "head": st.sampled_from(("gap", "flatten", "pool_flatten")),
    "classes": st.integers(2, 5),
    "seed": st.integers(0, 2**16),
})
GATES = st.tuples(st.floats(0.0, 0.95), st.floats(0.2, 1.0), st.integers(0, 2**16))


def _build(arch: dict) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(arch["seed"])
    c = arch["cin"]
    blocks: list[nn.Module] = []
    for spec in arch["blocks"]:
        kind = spec[0]
        if kind == "conv":
            blocks.append(ConvBNAct(c, spec[1], spec[2], spec[3], spec[4]))
            c = spec[1]
        elif kind == "res":
            blocks.append(Residual(c, spec[1], spec[2]))
        elif kind == "cat":
            blocks.append(Concat(c, spec[1], spec[2], spec[3]))
            c = spec[1] + spec[2]
        elif kind == "dw":
            blocks.append(Depthwise(c, spec[1], spec[2]))
        elif kind == "chunk" and c >= 2:
            blocks.append(ChunkCat(c, spec[1], spec[2]))
        elif kind == "chunk_add" and c >= 2 and c % 2 == 0:
            blocks.append(ChunkAdd(c, spec[1]))
            c //= 2
        elif kind == "se":
            blocks.append(SE(c, spec[1], spec[2]))
    model = RandomNet(blocks, arch["head"], c, arch["classes"])
    _randomize_norms_(model, arch["seed"])
    x = torch.randn((1, arch["cin"], 8, 8), generator=torch.Generator().manual_seed(arch["seed"]))
    return model.eval(), x


def _random_gates_(search: hwnas.SearchModel, gates: tuple[float, float, int]) -> None:
    fraction, low, seed = gates
    _set_gates_(search, fraction, seed, low=low)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(arch=ARCH, gates=GATES)
def test_random_architectures_materialize(arch: dict, gates: tuple[float, float, int]) -> None:
    model, x = _build(arch)
    search = hwnas.wrap(model, x)
    _random_gates_(search, gates)
    search.eval()
    pruned = materialize(search).eval()
    assert _max_diff(pruned, search, x) <= 1e-5
    _check_costs(pruned, search, x)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(arch=ARCH, gates=GATES)
def test_random_architectures_onnx(arch: dict, gates: tuple[float, float, int]) -> None:
    model, x = _build(arch)
    search = hwnas.wrap(model, x)
    _random_gates_(search, gates)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = export_onnx(search, Path(d) / "net.onnx", x)
    assert result.batch_sizes == (1, 3)
    assert result.max_abs_diff <= 1e-4
    assert result.params == search.costs()["params"]


# ------------------------------------------------------------------- keep-one rule


@pytest.mark.parametrize("name", LIGHT)
def test_all_gates_closed_keeps_one_channel(name: str) -> None:
    search, x = _search(name)
    for group in search.free_groups:
        search.gate(group).set_deterministic_(torch.zeros(search.gate(group).n))
    search.eval()
    kept = search.summary(by="group").set_index("group")["kept"]
    for group in search.free_groups:
        assert kept[group] >= 1
    pruned = materialize(search).eval()
    for m in pruned.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            assert m.in_channels >= 1 and m.out_channels >= 1
        elif isinstance(m, nn.Linear):
            assert m.in_features >= 1 and m.out_features >= 1
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.num_features >= 1
    layer = search.summary(by="layer")
    assert (layer["in_kept"] >= 1).all() and (layer["out_kept"] >= 1).all()
    out = pruned(_batch(x, 3))
    assert out.shape[0] == 3 and bool(torch.isfinite(out).all())
    assert _max_diff(pruned, search, x) <= 1e-5
    _check_costs(pruned, search, x)


def test_all_gates_closed_keeps_exactly_one_per_group() -> None:
    search, x = _search("digits_cnn")
    for group in search.free_groups:
        search.gate(group).set_deterministic_(torch.zeros(search.gate(group).n))
    summary = search.summary(by="group").set_index("group")
    assert [int(summary.loc[g, "kept"]) for g in search.free_groups] == [1, 1, 1]
    pruned = materialize(search.eval())
    assert [pruned.get_submodule(f"features.{i}").out_channels for i in (0, 3, 7)] == [1, 1, 1]
    # the kept channel's gate value is 0: the output does not depend on the input
    with torch.no_grad():
        y = pruned.eval()(_batch(x, 4))
    assert torch.allclose(y, y[:1].expand_as(y), atol=1e-6)


# ------------------------------------------------------- plain torch, running stats


def test_exported_model_carries_no_hwnas_code(tmp_path: Path) -> None:
    search, x = _search("resnet")
    _set_gates_(search, 0.5, seed=3)
    pruned = materialize(search.eval()).eval()
    classes = {type(m) for m in pruned.modules()}
    assert not [c for c in classes if c.__module__.split(".")[0] == "hwnas"]
    assert "hwnas" not in pruned.code
    assert not any("hwnas" in str(key) for n in pruned.graph.nodes for key in n.meta)
    with torch.no_grad():
        expected = pruned(_batch(x, 2))
        clone = copy.deepcopy(pruned)
        assert torch.equal(clone(_batch(x, 2)), expected)
    torch.save(pruned, tmp_path / "model.pt")
    torch.save({"x": _batch(x, 2), "y": expected}, tmp_path / "io.pt")
    script = (
        "import sys, torch\n"
        "m = torch.load(sys.argv[1], weights_only=False)\n"
        "io = torch.load(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    d = float((m.eval()(io['x']) - io['y']).abs().max())\n"
        "assert not [k for k in sys.modules if k.split('.')[0] == 'hwnas'], 'hwnas imported'\n"
        "print(d)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.pt"), str(tmp_path / "io.pt")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) == 0.0


def test_batchnorm_running_stats_are_kept() -> None:
    search, x = _search("digits_cnn")
    values = _set_gates_(search, 0.5, seed=5)
    info = next(i for i in search.layer_infos if i.target == "features.1")
    group = int(info.out_slots[0, 0])
    keep = search.keep_masks()[group][torch.as_tensor(info.out_slots[1])]
    assert int(keep.sum()) == int((values[group] > 0).sum()) == 16
    original = search.gm.get_submodule("features.1")
    pruned = materialize(search.eval()).get_submodule("features.1")
    assert pruned.num_features == 16
    assert torch.equal(pruned.running_mean, original.running_mean[keep])
    assert torch.equal(pruned.running_var, original.running_var[keep])
    assert torch.equal(pruned.weight, original.weight[keep])
    assert torch.equal(pruned.bias, original.bias[keep])
    assert int(pruned.num_batches_tracked) == int(original.num_batches_tracked)


def test_materialize_does_not_change_the_search_model() -> None:
    search, x = _search("resnet")
    _set_gates_(search, 0.5, seed=2)
    search.eval()
    before = {k: v.clone() for k, v in search.state_dict().items()}
    with torch.no_grad():
        y = search(x)
    materialize(search)
    after = search.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(search(x), y)


def test_materialize_rejects_plain_modules() -> None:
    with pytest.raises(TypeError, match="SearchModel"):
        materialize(nn.Linear(2, 2))  # type: ignore[arg-type]


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
    search, x = _search("digits_cnn")
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


def test_export_plain_model_static_batch(tmp_path: Path) -> None:
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
