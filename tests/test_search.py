"""Tests for hwnas/search/: wrap(), SearchModel's gates, costs, summaries and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hwnas
from hwnas.search import ChannelMask, GatedBatchNorm, SearchModel, WeightMasked, surgery

try:  # tests/ as a plain directory on sys.path (pytest rootdir "prepend" import mode)
    from zoo import build, names
except ImportError:  # tests/ imported as a package
    from tests.zoo import build, names

LIGHT = names()
# Zoo models with at least one free group (all of them: LayerNorm over channels is masked).
GATED = LIGHT
METRICS = ["norm_params", "ops", "params"]


def _wrap(name: str, **kwargs) -> tuple[SearchModel, nn.Module, torch.Tensor]:
    model, x = build(name)
    return hwnas.wrap(model, x, **kwargs), model, x


def _close_all_(search: SearchModel) -> None:
    for g in search.free_groups:
        search.gate(g).set_deterministic_(torch.zeros(search.gate(g).n))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize("metric", ["params", "ops"])
def test_cost_gradient_reaches_every_gate_logit(name: str, metric: str) -> None:
    search, _, _ = _wrap(name)
    assert search.free_groups
    cost = search.cost(metric)
    assert cost.requires_grad
    cost.backward()
    for g in search.free_groups:
        grad = search.gates.log_alpha.grad[search.index.group_gates(g)]
        assert grad.shape == (search.gate(g).n,)
        assert bool((grad > 0).all()), (g, grad)  # more channels alive, more cost


@pytest.mark.parametrize("name", ["digits_cnn", "resnet", "grouped", "split_permute",
                                  "shufflenet", "densenet"])
def test_cost_only_loss_drives_free_groups_to_their_minimum(name: str) -> None:
    search, _, _ = _wrap(name, exclude=("features.0",) if name == "digits_cnn" else ())
    floor = copy.deepcopy(search)
    _close_all_(floor)
    minimum = {g: int(m.sum()) for g, m in floor.keep_masks().items()}
    before = search.layer_costs()
    frozen_rows = [
        k for k, info in enumerate(search.layer_infos)
        if all(search.groups[int(g)].frozen is not None
               for slots in (info.in_slots, info.out_slots) if slots is not None
               for g in slots[0])
    ]
    reference = search.reference_costs()["ops"]
    optimizer = torch.optim.Adam(search.arch_parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        (search.cost("ops") / reference).backward()
        optimizer.step()
    kept = {g: int(m.sum()) for g, m in search.keep_masks().items()}
    assert kept == minimum
    assert all(v >= 1 for v in kept.values())
    summary = search.summary(by="group")
    for row in summary.itertuples():
        if row.frozen:
            assert row.kept == row.channels, row
        else:
            assert row.kept == minimum[row.group]
    after = search.layer_costs()
    if name == "digits_cnn":  # excluded conv + BN
        assert len(frozen_rows) >= 2
    for k in frozen_rows:
        assert after.loc[k, METRICS].tolist() == before.loc[k, METRICS].tolist()
    assert search.costs()["ops"] < 0.7 * reference


# ---------------------------------------------------------------------- wrap's copy


def test_wrap_does_not_modify_the_model() -> None:
    model, x = build("resnet")
    before = copy.deepcopy(model.state_dict())
    search = hwnas.wrap(model, x)
    assert search.training and model.training
    optimizer = torch.optim.SGD([*search.weight_parameters(), *search.arch_parameters()], lr=0.5)
    xb = torch.randn(4, *x.shape[1:])
    loss = F.cross_entropy(search(xb), torch.tensor([0, 1, 2, 3])) + search.cost("ops") * 1e-6
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    # the search model did change (weights and BN statistics)
    moved = search.gm.state_dict()
    assert not torch.equal(moved["conv1.weight"], before["conv1.weight"])
    assert not torch.equal(moved["bn1.running_mean"], before["bn1.running_mean"])
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", LIGHT)
def test_fresh_search_model_equals_the_model_in_eval(name: str) -> None:
    model, x = build(name)
    model.eval()
    search = hwnas.wrap(model, x, droprate_init=0.01).eval()
    for g in search.free_groups:
        assert bool((search.gate(g).deterministic() == 1).all())
    xb = torch.cat([x, torch.randn(2, *x.shape[1:])])
    with torch.no_grad():
        assert torch.allclose(search(xb), model(xb), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------ per example


def _mask_values(search: SearchModel, x: torch.Tensor) -> list[torch.Size]:
    """Shapes of the per-channel mask values each mask reads from the gate input."""
    shapes: list[torch.Size] = []
    masks = [m for m in search.modules()
             if isinstance(m, (ChannelMask, WeightMasked, GatedBatchNorm))]
    handles = [m.register_forward_hook(
        lambda mod, inp, out: shapes.append(inp[1].index_select(-1, mod.index).shape))
        for m in masks]
    try:
        search(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def test_per_example_masks() -> None:
    torch.manual_seed(0)
    search, _, x = _wrap("digits_cnn", per_example=True, droprate_init=0.5)
    same = x.expand(2, *x.shape[1:]).clone()
    search.train()
    assert _mask_values(search, same) == [torch.Size([2, 32]), torch.Size([2, 64]),
                                          torch.Size([2, 64])]
    # no mask of this model reads a frozen channel: the vector has no constant-1 entry
    assert search.gate_values("sample", 5).shape == (5, search.index.n_gates)
    y = search(same)
    assert not torch.allclose(y[0], y[1], atol=1e-4)
    # in eval mode one deterministic mask serves the whole batch
    search.eval()
    assert _mask_values(search, same) == [torch.Size([32]), torch.Size([64]), torch.Size([64])]
    with torch.no_grad():
        y = search(same)
    assert torch.allclose(y[0], y[1], atol=1e-6)


def test_per_example_gates_cannot_mask_attention_weights() -> None:
    model, x = build("vit")
    with pytest.raises(ValueError, match="per_example gates cannot mask the "
                                         "MultiheadAttention blocks.0.attn"):
        hwnas.wrap(model, x, per_example=True)


def test_per_example_gates_mask_functional_layers_on_their_inputs() -> None:
    # F.linear / F.conv2d on parameters and q @ k^T take their masks on the activation
    model, x = build("attention")
    search = hwnas.wrap(model.eval(), x, per_example=True)
    masks = [m for m in search.modules() if isinstance(m, ChannelMask)]
    assert len(masks) >= 8
    g = torch.Generator().manual_seed(0)
    for group in search.free_groups:
        values = torch.rand(search.gate(group).n, generator=g)
        values[values < 0.4] = 0.0
        search.gate(group).set_deterministic_(values)
    search.eval()
    pruned = hwnas.materialize(search).eval()
    xb = torch.cat([x, torch.randn(2, *x.shape[1:])])
    with torch.no_grad():
        assert float((pruned(xb) - search(xb)).abs().max()) <= 1e-5


def test_per_batch_masks_are_shared() -> None:
    torch.manual_seed(0)
    search, _, x = _wrap("digits_cnn", droprate_init=0.5)
    same = x.expand(2, *x.shape[1:]).clone()
    search.train()
    assert _mask_values(search, same) == [torch.Size([32]), torch.Size([64]), torch.Size([64])]
    y = search(same)
    assert torch.allclose(y[0], y[1], atol=1e-6)


# ------------------------------------------------------------------------------ costs


@pytest.mark.parametrize("name", LIGHT)
def test_costs_at_init_match_profile(name: str) -> None:
    search, model, x = _wrap(name, costs=METRICS)
    total = hwnas.profile(model, x).iloc[-1]
    costs = search.costs()
    assert sorted(costs) == METRICS
    for metric in METRICS:
        assert costs[metric] == float(total[metric]), metric
    assert search.reference_costs() == costs


def test_straight_through_has_the_deterministic_value_and_gradients() -> None:
    search, _, _ = _wrap("resnet")
    g = torch.Generator().manual_seed(0)
    for k in search.free_groups:
        n = search.gate(k).n
        values = torch.rand(n, generator=g)
        values[values < 0.5] = 0.0
        search.gate(k).set_deterministic_(values)
    costs = search.costs()
    for metric in ("params", "ops"):
        st = search.cost(metric, "straight_through")
        assert float(st.detach()) == costs[metric]
        assert float(search.cost(metric, "expected").detach()) != costs[metric]
        assert not search.cost(metric, "deterministic").requires_grad
        for p in search.arch_parameters():
            p.grad = None
        st.backward()
        for k in search.free_groups:
            grad = search.gates.log_alpha.grad[search.index.group_gates(k)]
            assert bool((grad > 0).all())


def test_parameters_split_into_arch_and_weights() -> None:
    search, model, _ = _wrap("se")
    arch = [id(p) for p in search.arch_parameters()]
    weights = [id(p) for p in search.weight_parameters()]
    assert len(arch) == 1  # one flat vector of gate logits
    assert not set(arch) & set(weights)
    assert set(arch) | set(weights) == {id(p) for p in search.parameters()}
    assert len(weights) == len(list(model.parameters()))
    assert sum(p.numel() for p in search.arch_parameters()) == sum(
        search.groups[g].size for g in search.free_groups)


# ---------------------------------------------------------------------------- summary


def test_summary_by_layer_and_group() -> None:
    search, _, _ = _wrap("digits_cnn")
    search.gate(1).set_deterministic_([0.0, 0.7] * 16)  # 16 of 32 kept
    search.gate(2).set_deterministic_([0.0, 0.0, 0.0, 1.0] * 16)  # 16 of 64 kept
    layer = search.summary()
    assert list(layer.columns) == ["layer", "type", "group", "in_channels", "in_kept",
                                   "out_channels", "out_kept", "bitops", *METRICS,
                                   "weight_memory", "frozen"]
    rows = layer.set_index("layer")
    assert rows.loc["features.0", ["in_kept", "out_kept", "group"]].tolist() == [1, 16, 1]
    assert rows.loc["features.1", ["in_kept", "out_kept", "norm_params"]].tolist() == [16, 16, 32]
    conv = rows.loc["features.3"]
    assert [conv.in_channels, conv.in_kept, conv.out_channels, conv.out_kept] == [32, 16, 64, 16]
    assert conv.params == 16 * (16 * 9 + 1)
    assert conv.ops == 16 * (16 * 9 + 1) * 8 * 8
    assert rows.loc["features.7", "params"] == 64 * (16 * 9 + 1)
    assert rows.loc["fc", "frozen"] == "model output"
    assert rows.loc["features.0", "frozen"] == ""
    costs = search.costs()
    assert sorted(costs) == ["ops", "params"]  # the costs wrap asked for
    for metric in costs:
        assert layer[metric].sum() == costs[metric]
    group = search.summary(by="group")
    assert list(group.columns) == ["group", "channels", "kept", "producers", "frozen"]
    assert group["channels"].tolist() == [1, 32, 64, 64, 10]
    assert group["kept"].tolist() == [1, 16, 16, 64, 10]
    assert group["frozen"].tolist() == ["model input", "", "", "", "model output"]
    assert group.loc[1, "producers"] == "features_0"


# ---------------------------------------------------------------------------- exclude


def test_exclude_freezes_the_layer_output_group() -> None:
    search, _, _ = _wrap("digits_cnn", exclude=("features.0",))
    assert search.free_groups == [2, 3]
    group = search.summary(by="group").set_index("group")
    assert group.loc[1, "frozen"] == "excluded: features.0"
    assert group.loc[1, "kept"] == 32
    layer = search.summary().set_index("layer")
    assert layer.loc["features.0", "frozen"].startswith("excluded")
    assert layer.loc["features.1", "frozen"].startswith("excluded")  # its BN
    assert layer.loc["features.3", "frozen"] == ""
    with pytest.raises(KeyError, match=r"group 1 has no gate \(frozen: excluded"):
        search.gate(1)
    _close_all_(search)
    assert search.summary().set_index("layer").loc["features.0", "out_kept"] == 32
    everything = hwnas.wrap(*build("digits_cnn"), exclude=("features",))
    assert everything.free_groups == []


# -------------------------------------------------------------------------- bad input


def test_bad_input_errors() -> None:
    model, x = build("digits_cnn")
    search = hwnas.wrap(model, x)
    with pytest.raises(KeyError, match=r"unknown cost 'lut'; known: .*luts.*ops.*params"):
        search.cost("lut")
    with pytest.raises(KeyError, match=r"unknown cost 'macs'; known: .*ops"):
        hwnas.wrap(model, x, costs=("macs",))
    with pytest.raises(KeyError, match=r"`exclude` names no layer: \['conv9'\]; layers are"):
        hwnas.wrap(model, x, exclude=("conv9",))
    with pytest.raises(TypeError, match="`exclude` must be a collection"):
        hwnas.wrap(model, x, exclude="features.0")
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"`droprate_init` must be in \(0, 1\)"):
            hwnas.wrap(model, x, droprate_init=bad)
    with pytest.raises(ValueError, match="no LUT model; use one of .*ice40-lut4.*xc7-lut6"):
        hwnas.wrap(model, x, costs=("params", "luts"))
    with pytest.raises(KeyError, match="cost 'luts' was not asked for"):
        search.cost("luts")
    with pytest.raises(TypeError, match="`model` must be an nn.Module, but got function"):
        hwnas.wrap(lambda t: t, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`mode` must be one of .'expected'"):
        search.cost("params", "sampled")
    with pytest.raises(ValueError, match="`by` must be 'layer' or 'group', but got 'node'"):
        search.summary(by="node")
    with pytest.raises(KeyError, match=r"group 0 has no gate \(frozen: model input\)"):
        search.gate(0)
    with pytest.raises(KeyError, match=r"group 99 has no gate; gated groups: \[1, 2, 3\]"):
        search.gate(99)


def test_luts_cost_on_a_lut_target() -> None:
    model, x = build("digits_cnn")
    search = hwnas.wrap(model, x, costs=("params", "luts"), target="xc7-lut6")
    assert "luts" in search.costs()
    assert search.costs()["luts"] > 0
    assert search.cost("luts").requires_grad


def test_channel_multiple_keeps_whole_blocks(tmp_path):
    model, x = build("resnet")
    model.eval()
    search = hwnas.wrap(model, x, channel_multiple=8)
    for g in search.free_groups:
        n = search.gate(g).log_alpha.numel()
        assert n == -(-search.groups[g].size // 8)
        values = torch.ones(n)
        values[n // 2:] = 0.0
        values[0] = 0.6  # folded into the weights on export
        search.gate(g).set_deterministic_(values)
    search.eval()
    kept = search.summary(by="group").set_index("group")["kept"]
    for g in search.free_groups:
        assert kept[g] % 8 == 0 and 0 < kept[g] < search.groups[g].size
    pruned = hwnas.materialize(search).eval()
    with torch.no_grad():
        assert torch.allclose(pruned(x), search(x), atol=1e-5)
    total = hwnas.profile(pruned, x).iloc[-1]
    assert float(total["params"]) == search.costs()["params"]
    assert float(total["ops"]) == search.costs()["ops"]
    with pytest.raises(ValueError, match="`channel_multiple` must be an integer >= 1, but got 0"):
        hwnas.wrap(model, x, channel_multiple=0)


# ------------------------------------------------------- no stale caches, no hidden state


def test_cost_follows_a_changed_target(clean_registry) -> None:
    """A cost that reads the target is recomputed when the target changes (cache key)."""
    from dataclasses import replace

    @clean_registry.register("bit_params", nn.Linear)
    def bit_params(info, alive, target):  # bilinear in (in, out), scaled by the target
        return alive["in"] * alive["out"] * target.weight_bits

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    search = hwnas.wrap(net, torch.randn(1, 4), costs=("bit_params",))
    assert search.cost("bit_params", "expected").item() == pytest.approx(
        float(search.layer_costs("expected")["bit_params"].sum()))
    assert search.costs()["bit_params"] == (4 * 8 + 8 * 2) * 32
    search.target = replace(search.target, weight_bits=4)
    assert search.costs()["bit_params"] == (4 * 8 + 8 * 2) * 4
    assert float(search.cost("bit_params", "deterministic")) == float(
        search.layer_costs()["bit_params"].sum())


def test_the_graph_needs_the_gate_values() -> None:
    """The masks read the gates from an explicit input: no silent unmasked run."""
    search, _, x = _wrap("digits_cnn")
    with pytest.raises(TypeError, match="hwnas_gates"):
        search.gm(x)
    _close_all_(search)
    search.eval()
    with torch.no_grad():
        closed = search(x)
        full = search(x, gates="off")
        assert torch.equal(search.gm(x, None), full)
    assert not torch.allclose(closed, full)


def test_forward_gate_modes() -> None:
    torch.manual_seed(0)
    search, _, x = _wrap("digits_cnn", droprate_init=0.5)
    xb = x.expand(4, *x.shape[1:]).clone()
    with torch.no_grad():
        search.eval()
        det = search(xb)
        assert torch.equal(search(xb, gates="deterministic"), det)
        sampled = [search(xb, gates="sample") for _ in range(2)]
        assert not torch.allclose(sampled[0], sampled[1])
        search.train()
        search.eval()  # modes are plain nn.Module modes: nothing else to restore
        assert torch.equal(search(xb), det)
    with pytest.raises(ValueError, match="`gates` must be one of"):
        search(xb, gates="on")


def test_a_failing_cost_function_is_reported_not_swallowed(clean_registry) -> None:
    @clean_registry.register("broken", nn.Linear)
    def broken(info, alive, target):
        raise ZeroDivisionError("no channels")

    search = hwnas.wrap(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)),
                        torch.randn(1, 2), costs=("broken",))
    with pytest.raises(hwnas.HwnasError, match=r"cost function .*broken.* failed on layer "
                                                r"'0' \(Linear\) .*ZeroDivisionError"):
        search.cost("broken")


def test_a_nonlinear_cost_is_evaluated_as_is(clean_registry) -> None:
    @clean_registry.register("log_cost", nn.Linear)
    def log_cost(info, alive, target):  # not bilinear: layer by layer
        return torch.log2(alive["in"]) * alive["out"]

    search = hwnas.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                        torch.randn(1, 4), costs=("log_cost",))
    assert search.costs()["log_cost"] == 2 * 8 + 3 * 2
    assert search.cost("log_cost").requires_grad


def test_wrapping_a_search_model_is_refused() -> None:
    search, _, x = _wrap("digits_cnn")
    with pytest.raises(TypeError, match="already a SearchModel"):
        hwnas.wrap(search, x)


def test_l0_and_expected_l2_on_a_real_search_model() -> None:
    from hwnas.regularizers import expected_l2_penalty, l0_penalty

    search, _, _ = _wrap("resnet")
    for g in search.free_groups:
        search.gate(g).set_deterministic_(torch.ones(search.gate(g).n))
    open_ = l0_penalty(search).item()
    assert open_ == pytest.approx(search.index.n_gates, rel=1e-3)
    _close_all_(search)
    assert l0_penalty(search).item() < 1e-2 * open_
    l2 = expected_l2_penalty(search)
    l2.backward()
    assert search.gates.log_alpha.grad is not None


def test_projection_on_a_model_with_nothing_to_prune() -> None:
    net = nn.Sequential(nn.Linear(3, 2))  # input and output groups only: both frozen
    search = hwnas.wrap(net, torch.randn(1, 3))
    assert search.free_groups == [] and list(search.arch_parameters()) == []
    assert search.enforce_targets_({"params": 1.0}) == 0
    assert search.costs()["params"] == 8


# ------------------------------------------------------------------- attention, norms


def test_attention_costs_fall_with_the_per_head_dim() -> None:
    search, _, _ = _wrap("attention")
    sdpa = next(k for k, i in enumerate(search.layer_infos)
                if i.target == "scaled_dot_product_attention")
    g = int(search.layer_infos[sdpa].in_slots[0, 0])
    before = search.layer_costs().loc[sdpa]
    # 4 heads x 16 queries x 16 keys x (6 q/k + 6 v channels per head)
    assert before["ops"] == 4 * 16 * 16 * (6 + 6)
    search.gate(g).set_deterministic_(torch.tensor([1.0, 0, 1, 0, 0, 1]))
    after = search.layer_costs().loc[sdpa]
    assert (after["in_kept"], after["out_kept"], after["ops"]) == (3, 3, 4 * 16 * 16 * 6)
    # the q/k/v projection loses 3 of 6 channels in each of the 12 (3 x 4 heads) blocks
    qkv = search.layer_costs().set_index("layer").loc["attns.0.qkv"]
    assert (qkv["out_kept"], qkv["params"]) == (36, 36 * (24 + 1))
    # and the expected cost has a gradient in every one of those gates
    search.cost("ops", "expected").backward()
    assert bool((search.gates.log_alpha.grad[search.index.group_gates(g)] > 0).all())


def test_masked_norms_read_the_keep_flags() -> None:
    search, _, x = _wrap("convnext")
    assert search.needs_keep
    z = search.gate_values("deterministic")
    keep = search.keep_values("deterministic", z)
    assert keep.shape == z.shape and set(keep.unique().tolist()) <= {0.0, 1.0}
    _close_all_(search)  # every group keeps one channel whose gate value is 0
    z = search.gate_values("deterministic")
    keep = search.keep_values("deterministic", z)
    assert float(z[:-1].detach().sum()) == 0.0
    assert int(keep[:-1].sum()) == len(search.free_groups)
    plain, _, _ = _wrap("resnet")
    assert not plain.needs_keep


@pytest.mark.parametrize("name", ["convnext", "vit", "attention", "regnet_se", "shufflenet_v1"])
def test_training_steps_with_sampled_gates(name: str) -> None:
    # masked norms (keep flags from sampled gates), attention and parameter masks train
    search, _, x = _wrap(name, droprate_init=0.5)
    search.train()
    torch.manual_seed(0)
    xb = torch.cat([x, torch.randn(3, *x.shape[1:])])
    optimizer = torch.optim.SGD(search.parameters(), lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.cross_entropy(search(xb), torch.tensor([0, 1, 2, 3])) + 1e-6 * search.cost("ops")
        assert bool(torch.isfinite(loss))
        loss.backward()
        optimizer.step()
    grad = search.gates.log_alpha.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and bool((grad != 0).any())
    assert all(bool(torch.isfinite(p).all()) for p in search.weight_parameters())


# ------------------------------------------------------------------------ folded gates


def _masks_only(monkeypatch, name: str) -> SearchModel:
    """The zoo model wrapped with the plain masks everywhere (no gate folded into a norm)."""
    with monkeypatch.context() as m:
        m.setattr(surgery._Surgery, "_fold_into_norm", lambda self, node, info: False)
        return _wrap(name)[0]


@pytest.mark.parametrize("name", ["digits_cnn", "resnet", "densenet", "grouped", "tcn",
                                  "flatten_linear", "mixed_1d_linear", "shufflenet_v1"])
def test_gates_folded_into_batchnorm_give_the_masked_function(monkeypatch, name: str) -> None:
    folded = _wrap(name)[0]
    reference = _masks_only(monkeypatch, name)
    n_folded = sum(isinstance(m, GatedBatchNorm) for m in folded.modules())
    assert n_folded >= 1
    assert sum(isinstance(m, GatedBatchNorm) for m in reference.modules()) == 0
    # every folded norm replaced a mask the reference has
    n_masks = sum(isinstance(m, (ChannelMask, WeightMasked)) for m in reference.modules())
    assert sum(isinstance(m, (ChannelMask, WeightMasked)) for m in folded.modules()) \
        == n_masks - n_folded
    _, x = build(name)
    xb = torch.cat([x, torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(1))])
    # gate values as the hard-concrete sampler makes them: clamped into [0, 1], so a closed
    # gate (clamped at 0) passes no gradient, and at 1 neither
    g = torch.Generator().manual_seed(0)
    stretched = torch.rand(folded.index.n_gates, generator=g) * 1.6 - 0.3
    for model in (folded, reference):
        model.train()
    outs, grads = [], []
    for model in (folded, reference):
        s = stretched.clone().requires_grad_(True)
        z = torch.nn.functional.pad(s.clamp(0.0, 1.0), (0, 1), value=1.0)
        torch.manual_seed(0)  # the same dropout draws
        y = model.gm(xb, z)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append([s.grad] + [p.grad for p in model.gm.parameters()])
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    for a, b in zip(grads[0], grads[1], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    # the running statistics saw the same batch
    norms = [[m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
             for model in (folded, reference)]
    for a, b in zip(*norms, strict=True):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6, rtol=1e-4)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-6, rtol=1e-4)
        assert torch.equal(a.num_batches_tracked, b.num_batches_tracked)
    # in eval mode (running statistics, deterministic gates) too, and stripped back
    for model in (folded, reference):
        model.eval()
    with torch.no_grad():
        assert torch.allclose(folded(xb), reference(xb), atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, GatedBatchNorm) for m in hwnas.materialize(folded).modules())


def test_gates_fold_only_through_homogeneous_single_reader_paths() -> None:
    # BN -> ReLU6 (not homogeneous), BN -> add (read twice), BN -> sigmoid: masks stay
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c3, self.b3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c4, self.b4 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 16, 4)

        def forward(self, x):
            x = F.relu6(self.b1(self.c1(x)))
            y = self.b2(self.c2(x))
            y = torch.sigmoid(self.b3(self.c3(y + x)))
            y = F.max_pool2d(F.relu(self.b4(self.c4(y))), 2)
            return self.fc(torch.flatten(y, 1))

    search = hwnas.wrap(Net(), torch.randn(1, 3, 8, 8))
    gated = [n for n, m in search.gm.named_modules() if isinstance(m, GatedBatchNorm)]
    assert gated == ["b4"]  # through ReLU, max-pool and flatten into the linear
    assert isinstance(search.gm.c2, WeightMasked) and isinstance(search.gm.c4, WeightMasked)


def test_gated_batchnorm_is_the_batchnorm_at_gate_one() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5)
    for kwargs in ({}, {"momentum": None}, {"affine": False},
                   {"track_running_stats": False}):
        bn = nn.BatchNorm1d(4, **kwargs)
        ref = copy.deepcopy(bn)
        gated = GatedBatchNorm(bn, torch.tensor([0, 1, 2, 4]))
        z = torch.tensor([1.0, 1.0, 1.0, 0.5, 1.0])
        for training in (True, True, False):
            gated.train(training)
            ref.train(training)
            assert torch.allclose(gated(x, z), ref(x), atol=1e-6), kwargs
            assert torch.equal(gated(x, None), ref(x)), kwargs
        for a, b in zip(bn.buffers(), ref.buffers(), strict=True):
            assert torch.equal(a, b)


def test_gated_batchnorm_keeps_a_replaced_norms_own_forward() -> None:
    # e.g. nn.SyncBatchNorm.convert_sync_batchnorm(search) after wrap: its forward must run
    class Shifted(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) + 1.0

    bn = Shifted(3).eval()
    gated = GatedBatchNorm(bn, torch.tensor([0, 1, 2])).eval()
    x = torch.randn(2, 3, 4, 4)
    z = torch.tensor([1.0, 0.0, 0.5, 1.0])
    expected = bn(x) * torch.tensor([1.0, 0.0, 0.5]).reshape(1, 3, 1, 1)
    assert torch.allclose(gated(x, z), expected)


# ------------------------------------------------------------------ the costs wrap asked for
def test_a_search_answers_only_the_costs_wrap_asked_for() -> None:
    model, x = build("digits_cnn")
    search = hwnas.wrap(model, x, costs=("params",), target="xc7-lut6")
    assert list(search.costs()) == ["params"] and list(search.reference_costs()) == ["params"]
    message = (r"cost 'ops' was not asked for: this search was wrapped with costs=\('params'\); "
               r"wrap with costs=\('params', 'ops'\) to use it")
    with pytest.raises(hwnas.HwnasError, match=message):
        search.cost("ops")
    with pytest.raises(KeyError, match=message):
        hwnas.relative_targets(search, {"ops": 0.5})
    with pytest.raises(KeyError, match="cost 'luts' was not asked for"):
        search.costs_of(["params", "luts"])
    with pytest.raises(KeyError, match="unknown cost 'lut'; known: "):
        search.cost("lut")


def test_defaults_agree_across_the_api() -> None:
    import inspect

    from hwnas.search.l0 import L0, L0Mask

    model, x = build("digits_cnn")
    search = hwnas.wrap(model, x)
    assert search.cost_mode == hwnas.FitConfig().cost_mode == "straight_through"
    wrap_default = inspect.signature(hwnas.wrap).parameters["droprate_init"].default
    for cls in (hwnas.HardConcreteGate, L0Mask, L0):
        assert inspect.signature(cls).parameters["droprate_init"].default == wrap_default
