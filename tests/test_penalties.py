"""Tests for hwnas.regularizers.penalties."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from hwnas import regularizers
from hwnas.regularizers import (
    Every,
    expected_l2_penalty,
    gradient_penalty,
    l0_penalty,
    output_magnitude_penalty,
)


class FakeGate(nn.Module):
    """Stands in for a hard-concrete gate: P(z != 0) = sigmoid(log_alpha)."""

    def __init__(self, log_alpha: list[float]) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(log_alpha))

    def prob_nonzero(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha)

    def expected_l0(self) -> torch.Tensor:
        return self.prob_nonzero().sum()


class FakeSearch(nn.Module):
    cost_names = ("params",)

    def __init__(self) -> None:
        super().__init__()
        # sigmoid(0) = 0.5, sigmoid(log 3) = 0.75, sigmoid(-log 3) = 0.25
        self.g1 = FakeGate([0.0, math.log(3.0)])
        self.g2 = FakeGate([-math.log(3.0), 0.0, 0.0])
        self.w1 = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # out 2, in 2
        self.w2 = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]).reshape(3, 1, 1, 1))  # conv

    def cost(self, name: str) -> torch.Tensor:
        return self.w1.sum()

    def expected_l0(self):
        return self.g1.expected_l0() + self.g2.expected_l0()

    def gated_weights(self):
        yield self.w1, self.g1.prob_nonzero()[:, None]
        yield self.w2, self.g2.prob_nonzero().reshape(3, 1, 1, 1)


class NoGates:
    def expected_l0(self):
        return torch.zeros(())

    def gated_weights(self):
        return []


# --------------------------------------------------------------------------- l0 / expected_l2


def test_l0_penalty_hand_sum():
    model = FakeSearch()
    out = l0_penalty(model, epoch=1, n_epochs=5)
    # (0.5 + 0.75) + (0.25 + 0.5 + 0.5)
    assert out.item() == pytest.approx(2.5)
    out.backward()
    # d sigmoid / d log_alpha = p (1 - p)
    assert model.g1.log_alpha.grad.tolist() == pytest.approx([0.25, 0.1875])


def test_expected_l2_penalty_hand_sum():
    model = FakeSearch()
    out = expected_l2_penalty(model)
    # w1: 0.5 * (1 + 4) + 0.75 * (9 + 16) = 21.25; w2: 0.25 * 1 + 0.5 * 4 + 0.5 * 0.25 = 2.375
    assert out.item() == pytest.approx(23.625)
    out.backward()
    # d/dw of p * w**2 = 2 p w
    assert model.w1.grad.flatten().tolist() == pytest.approx([1.0, 2.0, 4.5, 6.0])
    assert model.w2.grad.flatten().tolist() == pytest.approx([0.5, -2.0, 0.5])


def test_penalties_without_gates_are_zero():
    assert l0_penalty(NoGates()).item() == 0.0
    assert expected_l2_penalty(NoGates()).item() == 0.0


def test_penalties_registered():
    assert regularizers.get("l0") is l0_penalty
    assert regularizers.get("expected_l2") is expected_l2_penalty
    assert regularizers.get("gradient_penalty") is gradient_penalty
    assert regularizers.get("output_magnitude") is output_magnitude_penalty


# --------------------------------------------------------------------------- gradient_penalty


def _linear(weight: list[list[float]]) -> nn.Linear:
    lin = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
    return lin


def test_gradient_penalty_linear_is_weight_norm():
    lin = _linear([[3.0, 4.0]])
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    assert gradient_penalty(lin, x, target_norm=1.0).item() == pytest.approx(16.0)  # (5 - 1)^2
    assert gradient_penalty(lin, x, target_norm=5.0).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_random_linear():
    torch.manual_seed(0)
    lin = nn.Linear(7, 1)
    x = torch.randn(5, 7)
    expected = (lin.weight.norm().item() - 0.3) ** 2
    assert gradient_penalty(lin, x, target_norm=0.3).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_penalty_sums_outputs():
    # gradient of the summed outputs is the column sum of W: [1 + 2, 2 + 2] = [3, 4]
    lin = _linear([[1.0, 2.0], [2.0, 2.0]])
    assert gradient_penalty(lin, torch.ones(3, 2), target_norm=0.0).item() == pytest.approx(25.0)


def test_gradient_penalty_norm_over_all_non_batch_dims():
    x = torch.tensor([[[1.0, 2.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.5]]])  # norms 3 and 0.5
    # gradient of (x**2).sum() per example is 2x: norms 6 and 1 -> ((6 - 2)^2 + (1 - 2)^2) / 2
    out = gradient_penalty(lambda t: t.square().sum(dim=(1, 2)), x, target_norm=2.0)
    assert out.item() == pytest.approx(8.5)


def test_gradient_penalty_matches_finite_differences():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    h = 1e-6
    norms = []
    with torch.no_grad():
        for xb in x:
            grad = []
            for i in range(3):
                step = torch.zeros(3, dtype=torch.float64)
                step[i] = h
                diff = mlp(xb + step).sum() - mlp(xb - step).sum()
                grad.append(diff.item() / (2 * h))
            norms.append(math.sqrt(sum(g * g for g in grad)))
    expected = sum((n - 0.7) ** 2 for n in norms) / len(norms)
    out = gradient_penalty(mlp, x, target_norm=0.7)
    assert out.dtype == torch.float64
    assert out.item() == pytest.approx(expected, abs=1e-5)


def test_gradient_penalty_flows_into_parameters():
    lin = _linear([[3.0, 4.0]])
    out = gradient_penalty(lin, torch.randn(4, 2), target_norm=1.0)
    assert out.requires_grad
    out.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = 8 * [0.6, 0.8]
    assert lin.weight.grad.flatten().tolist() == pytest.approx([4.8, 6.4])
    assert lin.bias.grad is None or lin.bias.grad.abs().max().item() == 0.0


def test_gradient_penalty_no_graph_under_no_grad():
    lin = _linear([[3.0, 4.0]])
    with torch.no_grad():
        out = gradient_penalty(lin, torch.randn(4, 2), target_norm=1.0)
    assert not out.requires_grad
    assert out.item() == pytest.approx(16.0)


def test_gradient_penalty_input_without_dependence():
    # fn ignores its input: gradient 0 everywhere, penalty target^2
    out = gradient_penalty(lambda t: torch.ones(t.shape[0]), torch.randn(3, 2), target_norm=2.0)
    assert out.item() == pytest.approx(4.0)


def _cube(t: torch.Tensor) -> torch.Tensor:
    return t.pow(3).sum(dim=1)  # per-example gradient 3 x^2


def test_gradient_penalty_interpolated_formula():
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 3.0]])
    ref = torch.tensor([[0.0, 1.0], [2.0, 2.0], [1.0, -1.0]])
    eps = torch.rand((3, 1), generator=torch.Generator().manual_seed(7))
    x_hat = eps * x + (1 - eps) * ref
    expected = ((3 * x_hat.square()).norm(dim=1) - 1.0).square().mean().item()
    out = gradient_penalty(
        _cube, x, mode="interpolated", reference=ref, generator=torch.Generator().manual_seed(7)
    )
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_penalty_interpolated_reproducible():
    x = torch.randn(8, 3, 2, generator=torch.Generator().manual_seed(0))
    ref = torch.randn(8, 3, 2, generator=torch.Generator().manual_seed(1))

    def run(seed: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        fn = lambda t: _cube(t.flatten(1))  # noqa: E731
        return gradient_penalty(fn, x, mode="interpolated", reference=ref, generator=gen).item()

    assert run(3) == run(3)
    assert abs(run(3) - run(4)) > 1e-3


def test_gradient_penalty_interpolated_flows_into_parameters():
    lin = _linear([[3.0, 4.0]])
    out = gradient_penalty(lin, torch.randn(4, 2), mode="interpolated", reference=torch.randn(4, 2))
    out.backward()
    assert lin.weight.grad.flatten().tolist() == pytest.approx([4.8, 6.4])


def test_gradient_penalty_errors():
    lin = _linear([[3.0, 4.0]])
    x = torch.randn(4, 2)
    with pytest.raises(
        ValueError, match=r"`mode` must be one of 'output', 'interpolated', but got 'wgan'"
    ):
        gradient_penalty(lin, x, mode="wgan")
    with pytest.raises(ValueError, match=r"`reference` is required for mode='interpolated'"):
        gradient_penalty(lin, x, mode="interpolated")
    with pytest.raises(
        ValueError,
        match=re.escape("`reference` must have the shape of `x` (4, 2), but got (3, 2)"),
    ):
        gradient_penalty(lin, x, mode="interpolated", reference=torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"`reference` is only used with mode='interpolated'"):
        gradient_penalty(lin, x, reference=x)
    with pytest.raises(ValueError, match=r"`target_norm` must be >= 0, but got -1"):
        gradient_penalty(lin, x, target_norm=-1.0)
    with pytest.raises(TypeError, match=r"`x` must be a floating-point tensor with a batch dim"):
        gradient_penalty(lin, torch.ones(4, 2, dtype=torch.long))


# --------------------------------------------------------------------------- output magnitude


def test_output_magnitude_mean_and_sum():
    out = torch.tensor([[3.0, 4.0], [0.0, 0.5], [6.0, 8.0]])  # norms 5, 0.5, 10
    # relu(norm - 1)^2 = 16, 0, 81
    assert output_magnitude_penalty(out, target=1.0, reduction="sum").item() == pytest.approx(97.0)
    assert output_magnitude_penalty(out, target=1.0).item() == pytest.approx(97.0 / 3)
    assert output_magnitude_penalty(out, target=10.0).item() == 0.0


def test_output_magnitude_multi_dim_and_gradient():
    out = torch.tensor([[[2.0], [0.0]], [[0.0], [0.1]]], requires_grad=True)  # norms 2, 0.1
    pen = output_magnitude_penalty(out, target=1.0, reduction="sum")  # (2 - 1)^2
    assert pen.item() == pytest.approx(1.0)
    pen.backward()
    # d/dout of (||o|| - 1)^2 = 2 (||o|| - 1) o / ||o||; zero inside the ball
    assert out.grad.flatten().tolist() == pytest.approx([2.0, 0.0, 0.0, 0.0])


def test_output_magnitude_one_dim_output():
    assert output_magnitude_penalty(torch.tensor([-3.0, 0.5]), target=1.0).item() == 2.0


def test_output_magnitude_errors():
    with pytest.raises(
        ValueError, match=r"`reduction` must be one of 'mean', 'sum', but got 'max'"
    ):
        output_magnitude_penalty(torch.ones(2, 2), reduction="max")
    with pytest.raises(ValueError, match=r"`target` must be >= 0, but got -0.5"):
        output_magnitude_penalty(torch.ones(2, 2), target=-0.5)
    with pytest.raises(TypeError, match=r"`output` must be a floating-point tensor"):
        output_magnitude_penalty(torch.tensor(1.0))


# --------------------------------------------------------------------------- Every


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.calls += 1
        return t.sum() * scale


def test_every_applies_on_multiples_only():
    pen = Counting()
    lazy = Every(pen, every=3, weight=2.0)
    values = [lazy(torch.ones(2), scale=0.5).item() for _ in range(8)]
    assert values == [2.0, 0.0, 0.0, 2.0, 0.0, 0.0, 2.0, 0.0]
    assert pen.calls == 3
    assert lazy.state_dict() == {"step": 8}


def test_every_zero_has_no_graph_and_applied_has_graph():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    lazy = Every(lambda t: t.square().sum(), every=2)
    applied = lazy(w)
    skipped = lazy(w)
    assert applied.item() == 5.0 and applied.requires_grad
    assert skipped.item() == 0.0 and not skipped.requires_grad


def test_every_one_applies_always():
    lazy = Every(lambda: torch.tensor(1.5), every=1)
    assert [lazy().item() for _ in range(3)] == [1.5, 1.5, 1.5]


def test_every_state_dict_round_trip():
    lazy = Every(Counting(), every=3)
    for _ in range(5):
        lazy(torch.ones(1))
    resumed = Every(Counting(), every=3)
    resumed.load_state_dict(lazy.state_dict())
    assert resumed.step == 5
    assert [resumed(torch.ones(1)).item() for _ in range(3)] == [0.0, 1.0, 0.0]  # steps 5, 6, 7


def test_every_errors():
    with pytest.raises(ValueError, match=r"`every` must be >= 1, but got 0"):
        Every(Counting(), every=0)
    with pytest.raises(TypeError, match=r"`every` must be an int, but got float"):
        Every(Counting(), every=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`weight` must be >= 0, but got -1"):
        Every(Counting(), every=2, weight=-1.0)
    with pytest.raises(TypeError, match=r"`penalty` must be callable, but got int"):
        Every(3, every=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`state` must be \{'step': int >= 0\}"):
        Every(Counting(), every=2).load_state_dict({"step": -1})
