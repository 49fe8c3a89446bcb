"""Tests for hwnas/search/gates.py: hard-concrete gates and the L0 parametrization wrapper."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from hwnas.search.gates import (
    LIMIT_A,
    LIMIT_B,
    TEMPERATURE,
    HardConcreteGate,
    hard_concrete_deterministic,
    prob_nonzero,
)
from hwnas.search.l0 import L0, L0Mask


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _p_nonzero(log_alpha: float) -> float:
    """P(z != 0) computed by hand with math."""
    return _sigmoid(log_alpha - TEMPERATURE * math.log(-LIMIT_A / LIMIT_B))


def _conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 2, 1),
        nn.Flatten(),
        nn.Linear(2 * 5 * 5, 3),
    )


# ----------------------------------------------------------------------------- gate init


def test_constants() -> None:
    assert (LIMIT_A, LIMIT_B) == (-0.1, 1.1)
    assert TEMPERATURE == pytest.approx(2.0 / 3.0)


def test_init_log_alpha_mean_and_std() -> None:
    p, std, n = 0.3, 0.01, 10_000
    gate = HardConcreteGate(n, droprate_init=p, init_std=std)
    la = gate.log_alpha.detach()
    assert la.shape == (n,)
    expected = math.log(1 - p) - math.log(p)
    assert la.mean().item() == pytest.approx(expected, abs=5 * std / math.sqrt(n))
    assert la.std().item() == pytest.approx(std, rel=0.05)


def test_init_without_noise_is_exact() -> None:
    gate = HardConcreteGate(3, droprate_init=0.2, init_std=0.0)
    assert gate.log_alpha.tolist() == pytest.approx([math.log(0.8 / 0.2)] * 3, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": 0}, ValueError, r"`n` must be an integer >= 1, but got 0"),
        ({"n": 2.5}, TypeError, r"`n` must be an integer >= 1, but got 2.5"),
        ({"n": 3, "droprate_init": 1.5}, ValueError, r"`droprate_init` .* \(0, 1\), but got 1.5"),
        ({"n": 3, "droprate_init": 0.0}, ValueError, r"`droprate_init` .* \(0, 1\), but got 0.0"),
        ({"n": 3, "init_std": -1.0}, ValueError,
         r"`init_std` must be a finite number >= 0, but got -1.0"),
    ],
)
def test_gate_bad_input(kwargs: dict, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        HardConcreteGate(**kwargs)


def test_prob_nonzero_matches_hand_formula() -> None:
    values = [-2.0, 0.0, 1.5]
    gate = HardConcreteGate(3)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor(values))
    got = gate.prob_nonzero().tolist()
    assert got == pytest.approx([_p_nonzero(v) for v in values], abs=1e-6)
    # log_alpha = 0: sigmoid(T * log(11)) = 1 / (1 + 11**(-2/3))
    assert got[1] == pytest.approx(1.0 / (1.0 + 11 ** (-2.0 / 3.0)), abs=1e-6)
    assert gate.expected_l0().item() == pytest.approx(sum(_p_nonzero(v) for v in values), abs=1e-5)


def test_deterministic_by_hand() -> None:
    gate = HardConcreteGate(3).eval()
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-10.0, 0.0, 10.0]))
    assert gate.deterministic().tolist() == [0.0, pytest.approx(0.5, abs=1e-7), 1.0]
    assert gate().tolist() == gate.deterministic().tolist()
    assert gate.keep_mask().tolist() == [False, True, True]
    # an interior value by hand: clamp(sigmoid(0.7) * 1.2 - 0.1, 0, 1)
    la = torch.tensor([0.7])
    assert hard_concrete_deterministic(la).item() == pytest.approx(
        _sigmoid(0.7) * 1.2 - 0.1, abs=1e-6
    )


def test_extra_repr() -> None:
    assert repr(HardConcreteGate(4, per_example=True)) == (
        "HardConcreteGate(n=4, droprate_init=0.3, per_example=True)"
    )


# -------------------------------------------------------------------------------- sample


def test_sample_range_and_exact_endpoints() -> None:
    gate = HardConcreteGate(1)
    with torch.no_grad():
        gate.log_alpha.zero_()
    z = gate.sample(20_000)
    assert z.shape == (20_000, 1)
    assert z.min().item() == 0.0 and z.max().item() == 1.0
    n_zero = int((z == 0).sum())
    n_one = int((z == 1).sum())
    # symmetric at log_alpha = 0: P(z = 0) = P(z = 1) = 1 - P(z != 0) ~ 0.168
    p_zero = 1.0 - _p_nonzero(0.0)
    assert n_zero / 20_000 == pytest.approx(p_zero, abs=0.01)
    assert n_one / 20_000 == pytest.approx(p_zero, abs=0.01)
    interior = z[(z > 0) & (z < 1)]
    assert interior.numel() == 20_000 - n_zero - n_one > 0


def test_sample_frequency_matches_prob_nonzero() -> None:
    values = [-1.5, 0.0, 1.0, 3.0]
    gate = HardConcreteGate(len(values))
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor(values))
    z = gate.sample(20_000)
    freq = (z != 0).float().mean(0)
    assert torch.allclose(freq, gate.prob_nonzero().detach(), atol=0.01)


def test_sample_shapes() -> None:
    gate = HardConcreteGate(6)
    assert gate.sample().shape == (6,)
    assert gate(batch_size=8).shape == (6,)  # not per_example: one gate for the batch
    per = HardConcreteGate(6, per_example=True)
    z = per(batch_size=8)
    assert z.shape == (8, 6)
    assert not torch.equal(z[0], z[1])
    assert per().shape == (6,)
    assert per.eval()(batch_size=8).shape == (6,)  # eval: deterministic gate
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1, but got 0"):
        per.sample(0)


def test_training_samples_differ_eval_is_fixed() -> None:
    gate = HardConcreteGate(16)
    assert not torch.equal(gate(), gate())
    gate.eval()
    assert torch.equal(gate(), gate())


# ----------------------------------------------------------------------------- gradients


def test_expected_l0_gradients_nonzero() -> None:
    gate = HardConcreteGate(10, droprate_init=0.3)
    gate.expected_l0().backward()
    grad = gate.log_alpha.grad
    assert grad is not None
    # d/dx sigmoid(x - c) = p * (1 - p)
    p = gate.prob_nonzero().detach()
    assert torch.allclose(grad, p * (1 - p), atol=1e-7)
    assert bool((grad > 0).all())


def test_sampled_gate_gradients() -> None:
    gate = HardConcreteGate(50)
    x = torch.randn(50)
    z = gate.sample()
    (z * x).sum().backward()
    grad = gate.log_alpha.grad
    assert grad is not None
    interior = (z > 0) & (z < 1)
    assert 0 < int(interior.sum()) < 50
    # the clamp passes gradient only where the gate is strictly inside (0, 1)
    assert torch.equal(grad != 0, interior)


# ---------------------------------------------------------------------- set_deterministic_


def test_set_deterministic_round_trip() -> None:
    gate = HardConcreteGate(4).eval()
    gate.set_deterministic_(torch.tensor([0.0, 0.25, 0.5, 1.0]))
    det = gate.deterministic()
    assert torch.allclose(det, torch.tensor([0.0, 0.25, 0.5, 1.0]), atol=1e-5)
    assert det[0].item() == 0.0 and det[3].item() == 1.0
    assert gate.keep_mask().tolist() == [False, True, True, True]
    gate.set_deterministic_([1.0, 1.0, 0.0, 0.75])  # a list works too
    assert gate.deterministic().tolist() == [1.0, 1.0, 0.0, pytest.approx(0.75, abs=1e-5)]


def test_set_deterministic_bad_input() -> None:
    gate = HardConcreteGate(3)
    with pytest.raises(ValueError, match=r"gate values must be in \[0, 1\], but got \[1.5\]"):
        gate.set_deterministic_(torch.tensor([0.0, 1.5, 1.0]))
    with pytest.raises(ValueError, match=r"`values` must have shape \(3,\), but got \(2,\)"):
        gate.set_deterministic_(torch.tensor([0.0, 1.0]))


def test_random_pruned_states() -> None:
    gate = HardConcreteGate(32).eval()
    keep = torch.rand(32) < 0.5
    gate.set_deterministic_(keep.float())
    assert torch.equal(gate.keep_mask(), keep)
    assert torch.equal(gate(), keep.float())


# ------------------------------------------------------------------------------ L0 wrapper


@pytest.mark.parametrize("make", [lambda: nn.Linear(5, 3), _conv_net], ids=["linear", "conv"])
def test_l0_keeps_weights_and_leaves_source_alone(make) -> None:
    src = make()
    before = {k: v.clone() for k, v in src.state_dict().items()}
    wrapped = L0(src, lam=0.1)
    # the user's module is untouched
    assert not any(parametrize.is_parametrized(m) for m in src.modules())
    assert set(src.state_dict()) == set(before)
    assert all(torch.equal(src.state_dict()[k], v) for k, v in before.items())
    # every weight is masked, biases are not, and originals equal the source weights
    names = [name for name, _ in wrapped.masks()]
    assert names and all(n.endswith("weight") for n in names)
    src_params = dict(src.named_parameters())
    assert len(names) == sum(1 for k in src_params if k.endswith("weight"))
    for path, _ in wrapped.masks():
        mod_path, _, pname = path.rpartition(".")
        sub = wrapped.module.get_submodule(mod_path)
        original = getattr(sub.parametrizations, pname).original
        assert original is not src_params[path]
        assert torch.equal(original, src_params[path])
        assert not parametrize.is_parametrized(sub, "bias")
    # with every mask forced open, eval output equals the original module's
    for _, mask in wrapped.masks():
        mask.set_deterministic_(torch.ones_like(mask.log_alpha))
    x = torch.randn(2, 5) if isinstance(src, nn.Linear) else torch.randn(2, 3, 5, 5)
    wrapped.eval()
    src.eval()
    assert torch.allclose(wrapped(x), src(x), atol=1e-6)


def test_l0_linear_exact_original_attribute() -> None:
    src = nn.Linear(5, 3)
    wrapped = L0(src, lam=0.1)
    assert torch.equal(wrapped.module.parametrizations.weight.original, src.weight)
    assert torch.equal(wrapped.module.bias, src.bias)


def test_l0_pruned_entries_give_zero_weights() -> None:
    wrapped = L0(nn.Linear(5, 3), lam=0.1).eval()
    keep = torch.rand(3, 5) < 0.5
    ((_, mask),) = list(wrapped.masks())
    mask.set_deterministic_(keep.float())
    w = wrapped.module.weight
    original = wrapped.module.parametrizations.weight.original
    assert torch.equal(w, torch.where(keep, original, torch.zeros(())))


def test_l0_regularization_hand_computed() -> None:
    lam, wd = 0.05, 0.3
    wrapped = L0(nn.Linear(5, 3), lam=lam, weight_decay=wd)
    ((_, mask),) = list(wrapped.masks())
    la = torch.linspace(-2.0, 2.0, 15).reshape(3, 5)
    with torch.no_grad():
        mask.log_alpha.copy_(la)
    w = wrapped.module.parametrizations.weight.original.detach()
    expected = 0.0
    l0 = 0.0
    l2 = 0.0
    for a_j, w_j in zip(la.flatten().tolist(), w.flatten().tolist(), strict=True):
        p = _p_nonzero(a_j)
        expected += p * (lam + 0.5 * wd * w_j**2)
        l0 += p
        l2 += p * w_j**2
    assert wrapped.regularization().item() == pytest.approx(expected, rel=1e-5)
    assert wrapped.count_l0().item() == pytest.approx(l0, rel=1e-5)
    assert wrapped.count_l2().item() == pytest.approx(l2, rel=1e-5)
    assert wrapped.regularization().item() == pytest.approx(lam * l0 + 0.5 * wd * l2, rel=1e-5)


def test_l0_counts_at_log_alpha_zero() -> None:
    wrapped = L0(_conv_net(), lam=1.0)
    total, sq = 0, 0.0
    for path, mask in wrapped.masks():
        with torch.no_grad():
            mask.log_alpha.zero_()
        total += mask.log_alpha.numel()
        mod_path, _, pname = path.rpartition(".")
        original = getattr(wrapped.module.get_submodule(mod_path).parametrizations, pname).original
        sq += float(original.detach().pow(2).sum())
    # conv 4*3*3*3 + conv 2*4*1*1 + linear 3*50 weights
    assert total == 108 + 8 + 150
    p0 = _p_nonzero(0.0)
    assert wrapped.count_l0().item() == pytest.approx(total * p0, rel=1e-5)
    assert wrapped.count_l2().item() == pytest.approx(p0 * sq, rel=1e-5)
    assert wrapped.regularization().item() == pytest.approx(total * p0, rel=1e-5)


def test_l0_exclude_and_parameter_groups() -> None:
    default = L0(nn.Linear(5, 3), lam=0.1)
    assert [n for n, _ in default.masks()] == ["weight"]
    assert [tuple(p.shape) for p in default.mask_parameters()] == [(3, 5)]
    assert sorted(tuple(p.shape) for p in default.weight_parameters()) == [(3,), (3, 5)]
    everything = L0(nn.Linear(5, 3), lam=0.1, exclude=())
    assert [n for n, _ in everything.masks()] == ["weight", "bias"]
    assert len(everything.mask_parameters()) == 2
    assert len(everything.weight_parameters()) == 2
    n_all = sum(1 for _ in everything.parameters())
    assert n_all == 4


def test_l0_training_samples_masks_and_gradients_flow() -> None:
    wrapped = L0(nn.Linear(5, 3), lam=0.1, weight_decay=1e-2)
    x = torch.randn(4, 5)
    y1, y2 = wrapped(x), wrapped(x)
    assert not torch.allclose(y1, y2)
    (y1.pow(2).sum() + wrapped.regularization()).backward()
    for p in wrapped.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    wrapped.eval()
    assert torch.equal(wrapped(x), wrapped(x))


def test_l0_mask_parametrization_standalone() -> None:
    lin = nn.Linear(3, 2)
    mask = L0Mask(lin.weight.shape).eval()
    mask.set_deterministic_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    original = lin.weight.detach().clone()
    parametrize.register_parametrization(lin, "weight", mask)
    assert torch.equal(lin.weight, original * torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    assert torch.allclose(mask.prob_nonzero(), prob_nonzero(mask.log_alpha))
    with pytest.raises(ValueError,
                       match=r"`droprate_init` must be a finite number in \(0, 1\), but got 1.5"):
        L0Mask((2, 2), droprate_init=1.5)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"lam": -1.0}, ValueError, r"`lam` must be a finite number >= 0, but got -1.0"),
        ({"lam": 0.1, "weight_decay": -0.5}, ValueError,
         r"`weight_decay` must be a finite number >= 0"),
        ({"lam": 0.1, "exclude": "bias"}, TypeError, r"`exclude` must be a tuple of str"),
        ({"lam": 0.1, "droprate_init": 1.5}, ValueError,
         r"`droprate_init` must be a finite number in \(0, 1\)"),
        (
            {"lam": 0.1, "exclude": ("weight", "bias")},
            ValueError,
            r"`exclude`=\('weight', 'bias'\) leaves no parameter to mask in Linear; "
            r"parameters found: weight, bias",
        ),
    ],
)
def test_l0_bad_input(kwargs: dict, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        L0(nn.Linear(5, 3), **kwargs)


def test_l0_bad_module() -> None:
    match = r"leaves no parameter to mask in ReLU; parameters found: none"
    with pytest.raises(ValueError, match=match):
        L0(nn.ReLU(), lam=0.1)
    with pytest.raises(TypeError, match=r"`module` must be an nn.Module, but got int"):
        L0(3, lam=0.1)  # type: ignore[arg-type]
    lin = nn.Linear(2, 2)
    parametrize.register_parametrization(lin, "weight", L0Mask(lin.weight.shape))
    with pytest.raises(ValueError, match=r"`module` already has parametrizations"):
        L0(lin, lam=0.1)
