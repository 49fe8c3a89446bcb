"""Tests for the precision search: hwnas/search/precision.py, precision_costs.py, quant.py,
quant_layers.py, quant_graph.py and the bit costs of hwnas/cost/bits.py."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_devices import CpuTensors
from torch import nn

import hwnas
from hwnas.cost.bits import mac_luts_grid
from hwnas.cost.luts import mac_luts
from hwnas.errors import InvalidTypeError, InvalidValueError
from hwnas.search.precision import PrecisionSpace, mixing
from hwnas.search.quant import fake_quant, mixed_fake_quant
from hwnas.search.quant_layers import QuantConv2d, QuantLinear, quantize_layer
from hwnas.zoo.models import digits_cnn

ALL = ("params", "ops", "bitops", "weight_memory", "luts")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                         nn.Linear(24, 10))


def _random_gates(search, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for group in search.free_groups:
        gate = search.gate(group)
        values = (torch.rand(gate.n, generator=g) > 0.4).float()
        values[0] = 1.0
        gate.set_deterministic_(values)


def _random_bits(search, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in search.precision.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3)


# ----------------------------------------------------------------------------- the space
def test_space_is_checked_and_sorted():
    assert PrecisionSpace(weight_bits=[8, 2, 4]).weight_bits == (2, 4, 8)
    with pytest.raises(InvalidValueError, match="0 bits is a pruned channel"):
        PrecisionSpace(activation_bits=(0, 4))
    with pytest.raises(InvalidValueError, match=r"`weight_bits` must be distinct integers in "
                                                r"\[2, 16\], but got \(1, 4\)"):
        PrecisionSpace(weight_bits=(1, 4))
    with pytest.raises(InvalidValueError, match="`scale` must be one of"):
        PrecisionSpace(scale="log")
    # the default scale is the target's setting: power-of-two on the FPGA targets
    for target, scale in (("xc7-lut6", "pow2"), ("ice40-lut4", "pow2"), ("generic", "lsq")):
        s = hwnas.wrap(_mlp(), torch.randn(1, 16), target=target, precision=True)
        assert s.precision.space.scale == scale
    with pytest.raises(InvalidValueError, match="`quant_scales` must be 'lsq' or 'pow2'"):
        hwnas.Target("t", quant_scales="int")
    with pytest.raises(InvalidTypeError, match="`precision` must be a PrecisionSpace"):
        hwnas.wrap(_mlp(), torch.randn(1, 16), precision="8")
    with pytest.raises(InvalidValueError, match="needs a conv or linear module"):
        hwnas.wrap(nn.Sequential(nn.ReLU()), torch.randn(1, 16), precision=True)


def test_mixing_weights_of_both_relaxations():
    v = torch.tensor([2.0, 3.0, 4.0, 6.0, 8.0])
    b = torch.tensor([[5.0], [8.0], [1.0]], requires_grad=True)
    soft = mixing(b, v, "ste", 1.0, "soft")
    assert soft.tolist()[0] == [0.0, 0.0, 0.5, 0.5, 0.0]
    assert soft.tolist()[1] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert soft.tolist()[2] == [1.0, 0.0, 0.0, 0.0, 0.0]  # clamped to the smallest
    st = mixing(b, v, "ste", 1.0, "straight_through")
    assert (st.detach() @ v).tolist() == [4.0, 8.0, 2.0]  # nearest (a tie: the lower one)
    (st @ v)[0].backward()
    assert b.grad.tolist()[0] == [1.0]  # d(bits)/db of the interpolation: 1 between 4 and 6
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 2.0]])
    p = mixing(logits, v, "softmax", 1.0, "soft")
    assert float(p[0, -1]) == pytest.approx(7.389 / 11.389, abs=1e-4)
    assert mixing(logits, v, "softmax", 1.0, "hard").tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]
    s = hwnas.wrap(_mlp(), torch.randn(1, 16),
                   precision=PrecisionSpace(relaxation="hard_softmax"))
    sample = s.precision.values("sample")  # the forward: the argmax alone, soft gradient
    assert sample.detach().tolist() == s.precision.values("deterministic").tolist()
    assert sample.requires_grad


def test_mixed_fake_quant_equals_the_autograd_of_each_candidate():
    torch.manual_seed(0)
    x = (torch.randn(200) * 3).requires_grad_()
    s = torch.tensor([0.3, 0.1, 0.05], requires_grad=True)
    lo, hi = torch.tensor([-2.0, -8.0, 0.0]), torch.tensor([1.0, 7.0, 15.0])
    p = torch.tensor([0.2, 0.5, 0.3], requires_grad=True)
    g = torch.randn(200)
    fused = mixed_fake_quant(x, s, lo, hi, p)
    plain = sum(p[k] * fake_quant(x, s[k], lo[k], hi[k]) for k in range(3))
    assert torch.allclose(fused, plain, atol=1e-6)
    for a, b in zip(torch.autograd.grad(fused, (x, s, p), g),
                    torch.autograd.grad(plain, (x, s, p), g), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- costs
def test_uniform_bits_cost_what_the_registry_costs_at_the_targets_bits():
    """One candidate, the target's 8 bits, no BatchNorm to fold: the searched costs equal
    the registered ones, exactly, for any pruned architecture."""
    x = torch.randn(1, 16)
    plain = hwnas.wrap(_mlp(), x, costs=ALL, target="xc7-lut6")
    space = PrecisionSpace(weight_bits=(8,), activation_bits=(8,))
    quant = hwnas.wrap(_mlp(), x, costs=ALL, target="xc7-lut6", precision=space)
    for seed in range(3):
        _random_gates(plain, seed)
        _random_gates(quant, seed)
        assert quant.costs() == plain.costs()
        for mode in ("expected", "straight_through"):
            a, b = quant.costs_of(ALL, mode), plain.costs_of(ALL, mode)
            assert torch.allclose(a, b, rtol=1e-6)


def test_expected_costs_by_hand():
    """Linear(4, 3) with a bias, one gate per output group: the formulas of the docstring."""
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    space = PrecisionSpace(weight_bits=(2, 8), activation_bits=(4, 8))
    s = hwnas.wrap(net, torch.rand(1, 4), costs=("bitops", "weight_memory", "luts"),
                   target="xc7-lut6", precision=space)
    with torch.no_grad():
        s.precision.weight_arch.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        s.precision.act_arch.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
    s.gate(s.free_groups[0]).set_deterministic_(torch.ones(3))
    p = torch.sigmoid(s.gates.log_alpha.detach().double() - 2 / 3 * torch.log(
        torch.tensor(0.1 / 1.1, dtype=torch.float64)))
    alive = float(p.sum())
    e1 = 5.0                             # E[W] of layer 0: 2 and 8 at 1/2 each
    e2 = (2 * torch.e + 8) / (1 + torch.e)  # layer 1: softmax(1, 0)
    bitops = alive * (4 + 1) * e1 * 6.0 + 2 * alive * e2 * 6.0  # layer 0's outputs are gated
    memory = alive * 4 * e1 + 2 * alive * e2
    got = s.costs_of(["bitops", "weight_memory"], "expected")
    assert got.tolist() == pytest.approx([bitops, memory], rel=1e-6)
    t = hwnas.load_target("xc7-lut6")
    pw = torch.tensor([[0.5, 0.5], [torch.e / (1 + torch.e), 1 / (1 + torch.e)]],
                      dtype=torch.float64)
    luts = 0.0
    for j, (n, out) in enumerate(((4.0, alive), (alive, 2.0))):
        grid = mac_luts_grid(torch.tensor(n, dtype=torch.float64), [2, 8], [4, 8], t)
        luts += out * float(pw[j] @ grid @ torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert float(s.cost("luts", "expected").detach()) == pytest.approx(luts, rel=1e-6)
    assert float(mac_luts_grid(torch.tensor(16.0), [8], [8], t)[0, 0]) == pytest.approx(
        float(mac_luts(16.0, t)), rel=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_exported_choice_costs_exactly_what_the_search_says(per_channel):
    """Random gates and bits (per layer or per channel): search.costs() equals the profile
    of the exported quantised model, metric by metric and layer by layer; params and MACs
    differ by the bias of each folded BatchNorm (one per kept output channel)."""
    x = torch.rand(1, 1, 8, 8)
    space = PrecisionSpace(per_channel=per_channel, scale="pow2")
    s = hwnas.wrap(digits_cnn(), x, costs=ALL, target="xc7-lut6", precision=space)
    _random_gates(s, 1)
    _random_bits(s, 1)
    exported = s.eval().export()
    table = hwnas.profile(exported, x, "xc7-lut6")
    costs = s.costs()
    for name in ("bitops", "weight_memory", "luts"):
        assert costs[name] == float(table[name].iloc[-1]), name
    bits = s.precision.table(s)
    assert bits["luts"].tolist() == table["luts"].iloc[:-1].tolist()
    assert bits["weight_bits"].tolist() == table["weight_bits"].iloc[:-1].tolist()
    folded = sum(int(r) for r in bits["out_kept"][:3])  # the three convs with a BatchNorm
    assert float(table["params"].iloc[-1]) == costs["params"] + folded
    assert isinstance(exported.get_submodule("0"), QuantConv2d)
    assert isinstance(exported.get_submodule("12"), QuantLinear)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in exported.modules())


def test_a_closed_gate_is_a_channel_at_zero_bits():
    x = torch.randn(1, 16)
    s = hwnas.wrap(_mlp(), x, costs=("bitops", "weight_memory"), precision=True)
    group = s.free_groups[0]
    s.gate(group).set_deterministic_(torch.ones(32))
    full = s.costs()
    values = torch.ones(32)
    values[5] = 0.0
    s.gate(group).set_deterministic_(values)
    cut = s.costs()
    w_bits, a_bits = 8, 8
    # channel 5 of layer 0 (16 weights + bias) and its column in layer 2 (24 weights)
    assert full["weight_memory"] - cut["weight_memory"] == (16 + 24) * w_bits
    assert full["bitops"] - cut["bitops"] == (17 + 24) * w_bits * a_bits


def test_costs_are_differentiable_in_bits_and_gates():
    s = hwnas.wrap(digits_cnn(), torch.rand(1, 1, 8, 8), costs=("luts", "bitops"),
                   target="ice40-lut4", precision=True)
    for mode in ("expected", "straight_through"):
        s.zero_grad()
        s.cost("luts", mode).backward()
        assert float(s.precision.weight_arch.grad.abs().sum()) > 0
        assert float(s.precision.act_arch.grad.abs().sum()) > 0
        assert float(s.gates.log_alpha.grad.abs().sum()) > 0
    # the exported choice's value (LUTs rounded per layer only without a gradient)
    assert abs(s.cost("luts", "straight_through").item() - s.costs()["luts"]) <= 0.5 * 4


# ----------------------------------------------------------------------------- forward
def _no_bias_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 12, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(12, 16, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 9, 10, bias=False))


@pytest.mark.parametrize("scale", ["lsq", "pow2"])
def test_search_in_eval_mode_equals_the_exported_model(scale):
    """Binary gates, random per-channel bits: the searched graph (eval) and the exported
    one (pruned, quantised layers) compute the same function. (Without biases: the export
    rounds a bias to its int32 grid, which the search does not.)"""
    data = torch.rand(32, 1, 8, 8)
    s = hwnas.wrap(_no_bias_cnn(), data[:1],
                   precision=PrecisionSpace(per_channel=True, scale=scale))
    s.precision.calibrate(s, [(data, None)])
    _random_gates(s, 2)
    _random_bits(s, 2)
    s.eval()
    exported = s.export()
    with torch.no_grad():
        a, b = s(data), exported(data)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    kept = s.precision.table(s)["out_kept"].tolist()
    assert exported.get_submodule("0").out_channels == kept[0] < 12


def test_per_channel_quantisation_commutes_with_the_batchnorm_fold():
    """What export relies on: Q(w * k; s * |k|) = k * Q(w; s) per output channel."""
    from hwnas.search.quant_graph import fold_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2)
        net[1].running_mean.uniform_(-1, 1)
        net[1].weight.uniform_(-2, 2)
    gm = torch.fx.symbolic_trace(net)
    factor = net[1].weight / torch.sqrt(net[1].running_var + net[1].eps)
    log2 = torch.tensor([-3.0, -4.0, -2.5, -5.0])
    before = quantize_layer(net[0], torch.tensor([3, 4, 6, 8]), log2, 8, torch.tensor(-4.0),
                            False, pow2=False).quant_params()
    factors = fold_batchnorm(gm, ["0"])
    assert torch.allclose(factors["0"], factor.detach())
    folded = quantize_layer(gm.get_submodule("0"), torch.tensor([3, 4, 6, 8]),
                            log2 + torch.log2(factor.abs().detach()), 8, torch.tensor(-4.0),
                            False, pow2=False).quant_params()
    assert torch.equal(folded.w_int, before.w_int * torch.sign(factor.detach()).long()
                       .reshape(-1, 1, 1, 1))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())


def test_off_runs_the_largest_bits_and_none_the_float_layers():
    s = hwnas.wrap(_mlp(), torch.randn(1, 16), precision=PrecisionSpace(weight_bits=(2, 8)))
    x = torch.randn(8, 16)
    off = s.precision.values("off")
    w, a = s.precision.mixes("hard")
    assert off.tolist() == torch.cat([w.flatten(), a.flatten()]).tolist()  # init: the largest
    plain = s.gm(x, None, None).detach()
    quantised = s.eval()(x, gates="off").detach()
    assert 0 < float((plain - quantised).abs().max()) < 0.1


# ----------------------------------------------------------------------------- device policy
@pytest.mark.parametrize("relaxation", ["softmax", "ste"])
def test_search_step_on_meta_reads_nothing_back(relaxation):
    x = torch.rand(1, 1, 8, 8)
    space = PrecisionSpace(per_channel=True, relaxation=relaxation, scale="pow2")
    s = hwnas.wrap(digits_cnn(), x, costs=("luts", "bitops", "params"), target="xc7-lut6",
                   precision=space)
    reference = s.reference_costs()
    reg = hwnas.DUCCIO({k: 0.3 * reference[k] for k in ("luts", "bitops")}, task_loss=1.0)
    reg(s, 0, 4)
    s.to("meta").train()

    def step():
        out = s(torch.rand(4, 1, 8, 8, device="meta"))
        (out.sum() + reg(s, 1, 4)).backward()

    step()
    with CpuTensors() as cpu:
        step()
    assert cpu.found == []
    assert s.precision.weight_arch.grad.device.type == "meta"
    assert s.precision.weight_arch.dtype == torch.float32


def test_bit_parameters_and_scales_stay_float32_in_bf16():
    s = hwnas.wrap(digits_cnn(), torch.rand(1, 1, 8, 8), precision=True).to(torch.bfloat16)
    assert s.precision.weight_arch.dtype == torch.float32
    assert {p.dtype for n, p in s.named_parameters() if "scale_param" in n} == {torch.float32}
    out = s.train()(torch.rand(4, 1, 8, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out.float()).all())


def test_quantize_layer_shares_parameters_and_quantises_to_its_grid():
    layer = nn.Linear(6, 3)
    q = quantize_layer(layer, torch.tensor([2, 4, 8]), torch.tensor([-2.0, -3.0, -5.0]), 4,
                       torch.tensor(-2.0), False, pow2=True)
    assert q.weight is layer.weight and q.bias is layer.bias
    qp = q.quant_params()
    assert qp.w_int.abs().amax(1).tolist() <= [1, 7, 127]
    assert qp.w_scale.tolist() == [0.25, 0.125, 0.03125] and float(qp.a_scale) == 0.25
    x = torch.rand(5, 6) * 8
    xq = torch.clamp(torch.round(x / 0.25), 0, 15) * 0.25
    expected = xq @ (qp.w_int * qp.w_scale[:, None]).T + qp.b_int * qp.b_scale
    assert torch.equal(q(x).detach(), expected)


# ----------------------------------------------------------------------------- fit
def _data(n: int = 96, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def _fit(checkpoint=None, stop_after=None, search=None):
    torch.manual_seed(0)
    s = search or hwnas.wrap(digits_cnn(2), torch.rand(1, 1, 8, 8), costs=("luts",),
                             target="xc7-lut6", precision=PrecisionSpace(scale="pow2"))
    targets = hwnas.relative_targets(s, {"luts": 0.2})
    cfg = hwnas.FitConfig(warmup_epochs=1, search_epochs=2, finetune_epochs=1, progress=False,
                          stop_after=stop_after)
    return s, hwnas.fit(s, _data(), _data(32, 1), targets=targets, config=cfg,
                        checkpoint=checkpoint)


def test_fit_calibrates_searches_bits_and_resumes_bit_for_bit(tmp_path):
    s, whole = _fit()
    assert int(s.precision.calibrated_phase) == 2
    assert isinstance(whole.model.get_submodule("12"), QuantLinear)
    table = hwnas.profile(whole.model, torch.rand(1, 1, 8, 8), "xc7-lut6")
    assert float(table["luts"].iloc[-1]) == whole.costs["luts"]
    assert whole.met == {"luts": True}
    ckpt = tmp_path / "run.pt"
    s2, first = _fit(ckpt, stop_after=2)
    assert first.model is None
    _, resumed = _fit(ckpt, search=s2)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.costs == whole.costs


def _ddp(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from hwnas.training.distributed import shard_loader

    data = _data(128)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.cat([x for x, _ in data]),
                                       torch.cat([y for _, y in data])), batch_size=32)
    torch.manual_seed(0)
    s = hwnas.wrap(digits_cnn(2), torch.rand(1, 1, 8, 8), costs=("luts",), target="xc7-lut6",
                   precision=PrecisionSpace(per_channel=True))
    cfg = hwnas.FitConfig(warmup_epochs=1, search_epochs=1, finetune_epochs=1, progress=False)
    hwnas.fit(s, shard_loader(loader), targets=hwnas.relative_targets(s, {"luts": 0.3}),
              config=cfg)
    torch.save({k: v.detach().clone() for k, v in s.state_dict().items()},
               os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_hold_the_same_bits_and_scales():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp, args=(2, f"file://{d}/rendezvous", d), nprocs=2, join=True)
        a = torch.load(os.path.join(d, "rank0.pt"))
        b = torch.load(os.path.join(d, "rank1.pt"))
    assert {k for k in a if "precision" in k or "scale_param" in k}
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_synthesize_a_quantised_layer_at_its_bits(tmp_path):
    """hwnas.hw.synthesize writes a quantised layer at its own bits (its integer weights,
    its activation bits), and yosys's LUTs are near the estimate from those integers."""
    from hwnas.cost.bits import layer_lut_estimates
    from hwnas.hw import synthesize
    from hwnas.hw.macs import layer_verilog

    torch.manual_seed(0)
    q = quantize_layer(nn.Linear(8, 3), torch.tensor([3, 4, 6]), torch.full((3,), -5.0), 3,
                       torch.tensor(-3.0), False, pow2=False)
    path, top = layer_verilog(q, "xc7-lut6", tmp_path / "q.v")
    assert f"input wire [{8 * 3 - 1}:0] x" in path.read_text()  # 8 inputs of 3 bits
    qp = q.quant_params()
    assert qp.w_int.abs().amax(1).tolist() <= [3, 7, 31]
    result = synthesize(q, "xc7-lut6")
    exact, smooth = layer_lut_estimates(qp, hwnas.load_target("xc7-lut6"))
    assert result.luts > 0 and abs(exact - result.luts) <= 0.3 * result.luts
    assert smooth > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_search_on_the_device(device, precision):
    """wrap -> fit -> export on the device (cpu, and cuda where present; bf16 autocast too):
    every parameter and buffer of the search lives there, the search step never waits on the
    GPU (CUDA's sync debug mode raises on a host read), and the quantised exports verify a
    float32 CPU copy bit for bit."""
    from hwnas.export.qdq import export_qdq

    torch.manual_seed(0)
    s = hwnas.wrap(digits_cnn(2).to(device), torch.rand(1, 1, 8, 8), costs=("luts",),
                   target="xc7-lut6", precision=PrecisionSpace(scale="pow2", per_channel=True))
    assert {t.device.type for t in (*s.parameters(), *s.buffers())} == {device}
    cfg = hwnas.FitConfig(warmup_epochs=1, search_epochs=1, finetune_epochs=1, progress=False,
                          device=device, precision=precision)
    result = hwnas.fit(s, _data(64), targets=hwnas.relative_targets(s, {"luts": 0.3}),
                       config=cfg)
    reg = hwnas.DUCCIO({"luts": 1000.0}, task_loss=1.0)
    reg(s, 1, 2)  # the first call of an epoch may read the costs and build its constants
    x = torch.rand(8, 1, 8, 8, device=device)
    s.train()
    s(x).float().sum().backward()  # the first step on a device builds its cost constants
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        (s(x).float().sum() + reg(s, 1, 2)).backward()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert s.precision.weight_arch.grad.device.type == device
    table = hwnas.profile(result.model.cpu(), torch.rand(1, 1, 8, 8), "xc7-lut6")
    assert float(table["luts"].iloc[-1]) == result.costs["luts"]
    assert export_qdq(result.model, tempfile.mkdtemp() + "/m.onnx", x.cpu()).bit_exact


@pytest.mark.slow
def test_readme_precision_example_runs(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("## Bits as a searched dimension\n")
    block = re.findall(r"^```python\n(.*?)^```$", text[start:text.find("\n## ", start + 5)],
                       flags=re.M | re.S)[0]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip().splitlines()[-1] == "True True True"
    assert (tmp_path / "digits.qonnx.onnx").is_file() and (tmp_path / "digits.qdq.onnx").is_file()
