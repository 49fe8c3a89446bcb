"""Tests for hwnas/pruning/prune.py and hwnas.materialize: physical channel removal.

Contract 1 (DESIGN.md): for every zoo model and random gate states, ``materialize(search)``
in eval mode computes what ``search`` computes in eval mode, and its params/MACs equal
``search.costs()`` exactly; checked on the zoo and on random architectures (hypothesis).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    ARCH,
    GATES,
    batch_of,
    build_random,
    check_costs,
    max_diff,
    random_gates_,
    search_of,
    set_gates_,
)
from hypothesis import HealthCheck, given, settings
from torch import nn
from zoo import names

import hwnas
from hwnas.search import GatedBatchNorm, materialize

LIGHT = names()
FRACTIONS = (0.0, 0.5, 0.9)


# ----------------------------------------------------------------- zoo: contract 1 & 2


@pytest.mark.parametrize("name", LIGHT)
def test_zoo_materialize_matchessearch_of(name: str) -> None:
    search, x = search_of(name)
    for k, fraction in enumerate(FRACTIONS):
        set_gates_(search, fraction, seed=k)
        search.eval()
        pruned = materialize(search).eval()
        assert max_diff(pruned, search, x) <= 1e-5, (name, fraction)
        check_costs(pruned, search, x)
        if fraction > 0 and search.free_groups:
            assert search.costs()["params"] < search.reference_costs()["params"]


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(arch=ARCH, gates=GATES)
def test_random_architectures_materialize(arch: dict, gates: tuple[float, float, int]) -> None:
    model, x = build_random(arch)
    search = hwnas.wrap(model, x)
    random_gates_(search, gates)
    search.eval()
    pruned = materialize(search).eval()
    assert max_diff(pruned, search, x) <= 1e-5
    check_costs(pruned, search, x)


# ------------------------------------------------------------------- keep-one rule


@pytest.mark.parametrize("name", LIGHT)
def test_all_gates_closed_keeps_one_channel(name: str) -> None:
    search, x = search_of(name)
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
    out = pruned(batch_of(x, 3))
    assert out.shape[0] == 3 and bool(torch.isfinite(out).all())
    assert max_diff(pruned, search, x) <= 1e-5
    check_costs(pruned, search, x)


def test_all_gates_closed_keeps_exactly_one_per_group() -> None:
    search, x = search_of("digits_cnn")
    for group in search.free_groups:
        search.gate(group).set_deterministic_(torch.zeros(search.gate(group).n))
    summary = search.summary(by="group").set_index("group")
    assert [int(summary.loc[g, "kept"]) for g in search.free_groups] == [1, 1, 1]
    pruned = materialize(search.eval())
    assert [pruned.get_submodule(f"features.{i}").out_channels for i in (0, 3, 7)] == [1, 1, 1]
    # the kept channel's gate value is 0: the output does not depend on the input
    with torch.no_grad():
        y = pruned.eval()(batch_of(x, 4))
    assert torch.allclose(y, y[:1].expand_as(y), atol=1e-6)


# ------------------------------------------------------- plain torch, running stats


def test_exported_model_carries_no_hwnas_code(tmp_path: Path) -> None:
    search, x = search_of("resnet")
    set_gates_(search, 0.5, seed=3)
    pruned = materialize(search.eval()).eval()
    classes = {type(m) for m in pruned.modules()}
    assert not [c for c in classes if c.__module__.split(".")[0] == "hwnas"]
    assert "hwnas" not in pruned.code
    assert not any("hwnas" in str(key) for n in pruned.graph.nodes for key in n.meta)
    with torch.no_grad():
        expected = pruned(batch_of(x, 2))
        clone = copy.deepcopy(pruned)
        assert torch.equal(clone(batch_of(x, 2)), expected)
    torch.save(pruned, tmp_path / "model.pt")
    torch.save({"x": batch_of(x, 2), "y": expected}, tmp_path / "io.pt")
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
    search, x = search_of("digits_cnn")
    values = set_gates_(search, 0.5, seed=5)
    info = next(i for i in search.layer_infos if i.target == "features.1")
    group = int(info.out_slots[0, 0])
    keep = search.keep_masks()[group][torch.as_tensor(info.out_slots[1])]
    assert int(keep.sum()) == int((values[group] > 0).sum()) == 16
    gated = search.gm.get_submodule("features.1")  # the gates fold into this BatchNorm
    assert isinstance(gated, GatedBatchNorm)
    original = gated.layer
    pruned = materialize(search.eval()).get_submodule("features.1")
    assert pruned.num_features == 16
    assert torch.equal(pruned.running_mean, original.running_mean[keep])
    assert torch.equal(pruned.running_var, original.running_var[keep])
    assert torch.equal(pruned.weight, original.weight[keep])
    assert torch.equal(pruned.bias, original.bias[keep])
    assert int(pruned.num_batches_tracked) == int(original.num_batches_tracked)


def test_materialize_does_not_change_the_search_model() -> None:
    search, x = search_of("resnet")
    set_gates_(search, 0.5, seed=2)
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




# --------------------------------------------------------------- the slicer table


class _ChannelScale(nn.Module):
    """A learned per-channel scale (NCHW): the user's own layer type."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


def _scale_rule(prop, node, module, out):
    ids = prop.along(node, node.args[0], 1, module.weight.numel(), "channel scale")
    prop.layer(node, "norm", ids, ids)
    return hwnas.graph.Chan(1, ids)


def _scale_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 6, 3), _ChannelScale(6), nn.ReLU(), nn.Conv2d(6, 3, 3))
    return net.eval(), torch.randn(1, 2, 8, 8)


def test_a_layer_without_a_slicer_is_an_error_not_skipped() -> None:
    from hwnas.graph.rules.base import MODULE_RULES

    saved = MODULE_RULES.copy()
    try:
        hwnas.register_channel_rule(_ChannelScale, _scale_rule)
        net, x = _scale_net()
        search = hwnas.wrap(net, x, leaf_modules=(_ChannelScale,))
        (group,) = search.free_groups
        search.gate(group).set_deterministic_([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
        with pytest.raises(KeyError, match=r"no slicer registered for _ChannelScale; known: "
                                           r".*Linear.*hwnas.register_slicer"):
            materialize(search)
    finally:
        MODULE_RULES._table = saved._table


def test_a_registered_slicer_makes_the_layer_prunable() -> None:
    from hwnas.graph.rules.base import MODULE_RULES
    from hwnas.pruning import SLICERS

    def scale_out(m, keep):
        m.weight = nn.Parameter(m.weight.detach()[keep])

    saved_rules, saved_slicers = MODULE_RULES.copy(), SLICERS.copy()
    try:
        hwnas.register_channel_rule(_ChannelScale, _scale_rule)
        hwnas.register_slicer(_ChannelScale, scale_out, lambda m, keep, scale: None)
        net, x = _scale_net()
        search = hwnas.wrap(net, x, leaf_modules=(_ChannelScale,)).eval()
        (group,) = search.free_groups
        search.gate(group).set_deterministic_([1.0, 0.0, 0.7, 0.0, 1.0, 1.0])
        pruned = materialize(search).eval()
        assert pruned.get_submodule("1").weight.shape == (4,)
        assert pruned.get_submodule("0").out_channels == 4
        assert max_diff(pruned, search, x) <= 1e-5
    finally:
        MODULE_RULES._table, SLICERS._table = saved_rules._table, saved_slicers._table


class ScaleShift(nn.Module):
    """FrozenBatchNorm2d-like: a per-channel scale and shift computed from parameters and
    buffers (fx bakes the buffer arithmetic into tensor constants)."""

    def __init__(self, c: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(c, generator=g))
        self.bias = nn.Parameter(torch.randn(c, generator=g))
        self.register_buffer("running_mean", torch.randn(c, generator=g))
        self.register_buffer("running_var", torch.rand(c, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def test_parameters_combined_into_a_per_channel_scale_are_sliced() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), ScaleShift(8, 0), nn.ReLU(), nn.Conv2d(8, 4, 1),
                        nn.Flatten(), nn.Linear(4 * 36, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    search = hwnas.wrap(net, x)
    assert search.summary(by="group")["frozen"].tolist()[1:3] == ["", ""]
    values = set_gates_(search, 0.5, seed=1)
    pruned = materialize(search.eval()).eval()
    assert max_diff(pruned, search, x) <= 1e-5
    check_costs(pruned, search, x)
    kept = int((values[search.free_groups[0]] > 0).sum())
    read = {str(n.target): tuple(pruned.get_submodule(str(n.target).rpartition(".")[0])
                                 .__getattr__(str(n.target).rpartition(".")[2]).shape)
            for n in pruned.graph.nodes if n.op == "get_attr"}
    # the parameters, the buffer and what fx computed from buffers while tracing (a tensor
    # constant) are all sliced with the channels
    assert read == {"1.weight": (kept,), "1.bias": (kept,), "1.running_mean": (kept,),
                    "_tensor_constant0": (kept,)}


# ------------------------------------------------------------ timm patterns (issue 25)


class _GhostLike(nn.Module):
    """GhostNet / DPN: a cat of two convs' outputs, then a slice of the channels; SKNet: a
    stack of branches; a layer scale reshaped with a stored shape (PoolFormer); a depthwise
    conv with a channel multiplier (FastViT); reshape_as (LeViT)."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Conv2d(3, 6, 1)
        self.cheap = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.mult = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.branch = nn.Conv2d(16, 16, 1)
        self.scale = nn.Parameter(torch.rand(16))
        self.shape = (16, 1, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        y = torch.cat([a, self.cheap(a)], dim=1)[:, :8]  # 12 channels, the first 8 kept
        y = self.mult(y)
        z = torch.stack([y, self.branch(y)], dim=1).sum(1)
        z = z * self.scale.view(self.shape)
        return self.head(z.reshape(z.shape[0], -1).reshape_as(z))


def test_timm_patterns_are_pruned_exactly() -> None:
    import hwnas

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    search = hwnas.wrap(_GhostLike(), x)
    # the cheap depthwise conv, the slice, the multiplier conv's outputs, the stacked
    # branch and the layer scale all carry primary's 6 channels: one group
    assert [(g.size, g.frozen) for g in search.groups] == [
        (3, "model input"), (6, None), (4, "model output")]
    search.gate(1).set_deterministic_([1.0, 0.5, 0.0, 1.0, 0.0, 0.7])
    search.eval()
    pruned = hwnas.materialize(search).eval()
    with torch.no_grad():
        assert float((pruned(x) - search(x)).abs().max()) < 1e-5
    # primary keeps 4 of 6; the slice keeps the first 8 of the 12: primary's 4 kept and
    # cheap's channels 0 and 1 (kept too); the multiplier conv 2 outputs per input
    assert pruned.get_submodule("primary").out_channels == 4
    mult = pruned.get_submodule("mult")
    assert (mult.in_channels, mult.groups, mult.out_channels) == (6, 6, 12)
    assert pruned.get_parameter("scale").shape == (12,)
    costs = search.costs()
    total = hwnas.profile(pruned, x).iloc[-1]
    assert (costs["params"], costs["ops"]) == (float(total["params"]), float(total["ops"]))
