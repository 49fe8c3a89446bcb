"""Tests for hwnas.regularizers: the registry, BaseRegularizer and DUCCIO."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hwnas import regularizers
from hwnas.regularizers import DUCCIO, BaseRegularizer


class FakeSearch(nn.Module):
    """Costs ``scale * sigmoid(theta)``: ``theta = 0`` gives half the scale."""

    cost_names = ("params", "ops")

    def __init__(self, params: float = 1000.0, ops: float = 300.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(2))
        self.register_buffer("scale", torch.tensor([2 * params, 2 * ops]))

    def cost(self, name: str) -> torch.Tensor:
        if name not in self.cost_names:
            raise KeyError(name)
        i = self.cost_names.index(name)
        return self.scale[i] * torch.sigmoid(self.theta[i])

    def set_cost(self, name: str, value: float) -> None:
        i = self.cost_names.index(name)
        with torch.no_grad():
            self.scale[i] = 2 * value
            self.theta[i] = 0.0


# --------------------------------------------------------------------------- registry


def test_registry_names_and_lookup():
    assert {"base", "duccio", "l0", "expected_l2", "gradient_penalty", "output_magnitude"} <= set(
        regularizers.names()
    )
    assert regularizers.get("base") is BaseRegularizer
    assert regularizers.get("duccio") is DUCCIO
    assert regularizers.get("l0") is regularizers.l0_penalty


def test_registry_is_complete_without_importing_difflut():
    """The built-in names are there whatever was imported before (a fresh interpreter that
    imports only hwnas.regularizers finds DiffLUT's regularizers)."""
    import subprocess
    import sys

    code = ("import sys; from hwnas import regularizers; "
            "print('hwnas.difflut' in sys.modules, regularizers.get('functional').__name__, "
            "'functional_exact' in regularizers.names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "functional_sensitivity", "True"]


def test_registry_refuses_a_name_taken_by_another():
    with pytest.raises(ValueError, match="regularizer name 'duccio' is already registered"):
        regularizers.register("duccio")(lambda model, epoch=None, n_epochs=None: 0.0)
    assert regularizers.get("duccio") is DUCCIO


def test_registry_miss_lists_known_names():
    with pytest.raises(KeyError, match=r"unknown regularizer 'nope'; known: .*duccio"):
        regularizers.get("nope")


# --------------------------------------------------------------------------- BaseRegularizer


def test_base_value_and_gradient():
    model = FakeSearch(params=1000.0)
    reg = BaseRegularizer("params", strength=1e-3)
    out = reg(model, epoch=3, n_epochs=10)
    assert out.item() == pytest.approx(1.0)
    out.backward()
    # d/dtheta of 1e-3 * 2000 * sigmoid(theta) at 0 = 1e-3 * 2000 * 0.25
    assert model.theta.grad.tolist() == pytest.approx([0.5, 0.0])


def test_base_zero_strength():
    assert BaseRegularizer("ops", 0)(FakeSearch()).item() == 0.0


def test_base_rejects_negative_strength():
    with pytest.raises(ValueError, match=r"`strength` must be >= 0, but got -1$"):
        BaseRegularizer("params", -1)


def test_base_rejects_non_numeric_strength():
    with pytest.raises(TypeError, match=r"`strength` must be a real number, but got str"):
        BaseRegularizer("params", "1")  # type: ignore[arg-type]


def test_base_unknown_cost():
    reg = BaseRegularizer("lut", 1.0)
    with pytest.raises(KeyError, match=re.escape("unknown cost 'lut'; known: params, ops")):
        reg(FakeSearch())


# --------------------------------------------------------------------------- DUCCIO


# E = 20, task_loss = 2, C0 = 1000, T = 500 -> lambda = 2 / 500 = 0.004
# Eq. 14: lambda(e) = min(0.004 / 100 + e * 0.99 * 0.004 / 10, 0.004)
#   e = 0:  0.00004                      term = 0.00004 * 500 = 0.02
#   e = 5:  0.00004 + 0.00198 = 0.00202  term = 1.01
#   e = 10: 0.00004 + 0.00396 = 0.004    term = 2.0
#   e = 20: min(0.00796, 0.004) = 0.004  term = 2.0
@pytest.mark.parametrize(
    ("epoch", "strength", "term"),
    [(0, 0.00004, 0.02), (5, 0.00202, 1.01), (10, 0.004, 2.0), (20, 0.004, 2.0)],
)
def test_duccio_task_loss_schedule(epoch, strength, term):
    model = FakeSearch(params=1000.0)
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    out = reg(model, epoch=epoch, n_epochs=20)
    assert reg.strengths == {"params": pytest.approx(0.004)}
    assert reg.current_strengths(epoch, 20) == {"params": pytest.approx(strength)}
    assert out.item() == pytest.approx(term, rel=1e-6)


# final_strengths = 0.01, C = 1000, T = 500, E = 20:
#   e = 0:  0.0001                      term = 0.05
#   e = 5:  0.0001 + 0.00495 = 0.00505  term = 2.525
#   e = 10: 0.01                        term = 5.0
#   e = 20: 0.01                        term = 5.0
@pytest.mark.parametrize(
    ("epoch", "strength", "term"),
    [(0, 0.0001, 0.05), (5, 0.00505, 2.525), (10, 0.01, 5.0), (20, 0.01, 5.0)],
)
def test_duccio_final_strengths_schedule(epoch, strength, term):
    reg = DUCCIO({"params": 500.0}, final_strengths={"params": 0.01})
    out = reg(FakeSearch(params=1000.0), epoch=epoch, n_epochs=20)
    assert reg.strengths == {"params": 0.01}
    assert reg.current_strengths(epoch, 20) == {"params": pytest.approx(strength)}
    assert out.item() == pytest.approx(term, rel=1e-6)


def test_duccio_without_epochs_uses_full_strength():
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    assert reg(FakeSearch(params=1000.0)).item() == pytest.approx(2.0)
    assert reg.current_strengths() == {"params": pytest.approx(0.004)}


def test_duccio_strength_fixed_at_first_call_and_gradient():
    model = FakeSearch(params=1000.0)
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    reg(model)
    model.set_cost("params", 750.0)
    out = reg(model)  # lambda stays 0.004: 0.004 * 250
    assert reg.strengths == {"params": pytest.approx(0.004)}
    assert out.item() == pytest.approx(1.0)
    out.backward()
    # d/dtheta of 0.004 * (1500 * sigmoid(theta) - 500) at 0 = 0.004 * 1500 * 0.25
    assert model.theta.grad.tolist() == pytest.approx([1.5, 0.0])


def test_duccio_multiple_costs_summed():
    # params: lambda = 2 / (1000 - 500) = 0.004; ops: lambda = 2 / (300 - 200) = 0.02
    reg = DUCCIO({"params": 500.0, "ops": 200.0}, task_loss=2.0)
    model = FakeSearch(params=1000.0, ops=300.0)
    assert reg(model).item() == pytest.approx(0.004 * 500 + 0.02 * 100)  # 4.0
    assert reg.strengths == {"params": pytest.approx(0.004), "ops": pytest.approx(0.02)}
    assert reg(model, epoch=0, n_epochs=20).item() == pytest.approx(0.04)
    assert reg.violations(model) == {"params": pytest.approx(500.0), "ops": pytest.approx(100.0)}


@pytest.mark.parametrize("c0", [400.0, 500.0, 502.0])
def test_duccio_cost_already_met_gets_finite_strength(c0):
    # denominator floored at 0.01 * T = 5: lambda = 2 / 5 = 0.4
    model = FakeSearch(params=c0)
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    out = reg(model, epoch=3, n_epochs=20)
    assert math.isfinite(reg.strengths["params"])
    assert reg.strengths == {"params": pytest.approx(0.4)}
    expected = 0.4 * max(0.0, c0 - 500.0) * (0.01 + 3 * 0.99 / 10)
    assert out.item() == pytest.approx(expected, abs=1e-7)
    # the constraint becomes active later: 0.4 * (600 - 500) at full strength
    model.set_cost("params", 600.0)
    assert reg(model).item() == pytest.approx(40.0, rel=1e-6)


def test_duccio_met_cost_term_is_zero_and_violation_zero():
    model = FakeSearch(params=400.0)
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    assert reg(model).item() == 0.0
    assert reg.violations(model) == {"params": 0.0}


def test_duccio_gap_above_floor_is_exact_eq13():
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    reg(FakeSearch(params=510.0))  # gap 10 > floor 5: 2 / 10
    assert reg.strengths == {"params": pytest.approx(0.2)}


def test_duccio_zero_task_loss_gives_zero_strength():
    reg = DUCCIO({"params": 500.0}, task_loss=0.0)
    assert reg(FakeSearch(params=1000.0)).item() == 0.0
    assert reg.strengths == {"params": 0.0}


def test_duccio_accepts_tensor_task_loss():
    reg = DUCCIO({"params": 500.0}, task_loss=torch.tensor(2.0))  # type: ignore[arg-type]
    reg(FakeSearch(params=1000.0))
    assert reg.strengths == {"params": pytest.approx(0.004)}


def test_duccio_sees_a_changed_strength_or_target_on_a_real_model():
    """The strength and target tensors are reused between steps, but never stale."""
    from zoo import build

    import hwnas

    model, x = build("digits_cnn")
    search = hwnas.wrap(model, x)
    params = search.cost("params").item()  # the expected cost DUCCIO reads
    reg = DUCCIO({"params": params / 2}, final_strengths={"params": 1.0})

    def expected(epoch: int) -> float:
        gap = params - reg.targets["params"]
        return reg.current_strengths(epoch, 20)["params"] * gap

    for epoch in (0, 5, 5, 19):
        assert reg(search, epoch, 20).item() == pytest.approx(expected(epoch))
    reg.targets["params"] = params / 4
    assert reg(search, 19, 20).item() == pytest.approx(expected(19))
    assert expected(19) == pytest.approx(0.75 * params)


def test_duccio_requires_both_or_neither():
    with pytest.raises(
        ValueError,
        match=r"exactly one of `task_loss` and `final_strengths` must be given, but got both",
    ):
        DUCCIO({"params": 500.0}, task_loss=1.0, final_strengths={"params": 1.0})
    with pytest.raises(
        ValueError,
        match=r"exactly one of `task_loss` and `final_strengths` must be given, but got neither",
    ):
        DUCCIO({"params": 500.0})


@pytest.mark.parametrize("bad", [0, -3.0])
def test_duccio_rejects_non_positive_target(bad):
    with pytest.raises(ValueError, match=rf"target for 'params' must be > 0, but got {bad:g}"):
        DUCCIO({"params": bad}, task_loss=1.0)


def test_duccio_rejects_empty_targets():
    with pytest.raises(ValueError, match=r"`targets` must be a non-empty mapping, but got \{\}"):
        DUCCIO({}, task_loss=1.0)


def test_duccio_rejects_negative_task_loss():
    with pytest.raises(ValueError, match=r"`task_loss` must be >= 0, but got -1"):
        DUCCIO({"params": 1.0}, task_loss=-1.0)


def test_duccio_final_strengths_keys_and_values():
    with pytest.raises(
        ValueError,
        match=r"`final_strengths` keys must equal the `targets` keys \(params, ops\), "
        r"but got params",
    ):
        DUCCIO({"params": 1.0, "ops": 1.0}, final_strengths={"params": 1.0})
    with pytest.raises(ValueError, match=r"`final_strengths\['params'\]` must be >= 0, but got -1"):
        DUCCIO({"params": 1.0}, final_strengths={"params": -1.0})


def test_duccio_unknown_cost():
    reg = DUCCIO({"params": 500.0, "lut": 10.0}, task_loss=1.0)
    with pytest.raises(KeyError, match=re.escape("unknown cost 'lut'; known: params, ops")):
        reg(FakeSearch())
    assert reg.strengths is None
    with pytest.raises(KeyError, match=re.escape("unknown cost 'lut'; known: params, ops")):
        reg.violations(FakeSearch())


def test_duccio_epoch_arguments_validated():
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    model = FakeSearch()
    with pytest.raises(ValueError, match=r"`epoch` and `n_epochs` must both be given or both"):
        reg(model, epoch=3)
    assert reg.strengths is None  # a rejected call sets nothing
    with pytest.raises(ValueError, match=r"`n_epochs` must be >= 1, but got 0"):
        reg(model, epoch=0, n_epochs=0)
    with pytest.raises(ValueError, match=r"`epoch` must be >= 0, but got -1"):
        reg(model, epoch=-1, n_epochs=10)


def test_duccio_current_strengths_before_first_call():
    reg = DUCCIO({"params": 500.0}, final_strengths={"params": 0.1})
    assert reg.strengths is None
    with pytest.raises(RuntimeError, match=r"strengths are set at the first call"):
        reg.current_strengths(0, 10)


def test_duccio_state_dict_round_trip():
    reg = DUCCIO({"params": 500.0, "ops": 200.0}, task_loss=2.0)
    model = FakeSearch(params=1000.0, ops=300.0)
    reg(model)
    state = json.loads(json.dumps(reg.state_dict()))  # plain, serialisable
    assert state == {"strengths": {"params": pytest.approx(0.004), "ops": pytest.approx(0.02)}}

    # a resumed search with another first-call cost continues with the saved strengths
    resumed = DUCCIO({"params": 500.0, "ops": 200.0}, task_loss=2.0)
    resumed.load_state_dict(state)
    model.set_cost("params", 600.0)
    assert resumed(model, epoch=5, n_epochs=20).item() == pytest.approx(
        reg(model, epoch=5, n_epochs=20).item()
    )
    # 0.00202 * 100 + 0.0101 * 100
    assert resumed(model, epoch=5, n_epochs=20).item() == pytest.approx(1.212, rel=1e-6)

    fresh = DUCCIO({"params": 500.0}, task_loss=2.0)
    assert fresh.state_dict() == {"strengths": None}
    fresh.load_state_dict({"strengths": None})
    assert fresh.strengths is None


def test_duccio_load_state_dict_rejects_mismatch():
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    with pytest.raises(ValueError, match=r"`strengths` keys must equal the `targets` keys"):
        reg.load_state_dict({"strengths": {"ops": 1.0}})
    with pytest.raises(ValueError, match=r"`state` must be a dict with the key 'strengths'"):
        reg.load_state_dict({"lambdas": {"params": 1.0}})


def test_duccio_reset_recomputes():
    reg = DUCCIO({"params": 500.0}, task_loss=2.0)
    model = FakeSearch(params=1000.0)
    reg(model)
    reg.reset()
    assert reg.strengths is None
    model.set_cost("params", 700.0)
    reg(model)  # 2 / (700 - 500)
    assert reg.strengths == {"params": pytest.approx(0.01)}


# --------------------------------------------------------------------------- distributed


def _duccio_rank(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # each rank sees a different task loss; all must use rank 0's strengths (2 / 500)
        reg = DUCCIO({"params": 500.0}, task_loss=2.0 * (rank + 1))
        reg(FakeSearch(params=1000.0))
        results[rank] = reg.strengths["params"]
    finally:
        dist.destroy_process_group()


def test_duccio_strengths_agree_across_ranks(tmp_path):
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(
            _duccio_rank, args=(world, str(tmp_path / "init"), results), nprocs=world, join=True
        )
        got = dict(results)
    assert got == {0: pytest.approx(0.004), 1: pytest.approx(0.004)}


# ------------------------------------------- every registered regularizer, on real models


def _zoo_searches() -> list[tuple[str, object, torch.Tensor]]:
    from zoo import build

    import hwnas

    out = []
    for name in ("digits_cnn", "resnet", "se", "densenet"):
        model, x = build(name)
        out.append((name, hwnas.wrap(model, x), torch.cat([x, torch.randn(3, *x.shape[1:])])))
    return out


def _lut_search():
    import hwnas
    from hwnas.difflut import GroupSum, LUTLayer, ThermometerEncoder

    torch.manual_seed(0)
    x = torch.rand(16, 6)
    net = nn.Sequential(ThermometerEncoder(3).fit(x),
                        LUTLayer(18, 20, k=4, seed=0, record_inputs=True),
                        LUTLayer(20, 10, k=4, seed=1, record_inputs=True), GroupSum(2))
    search = hwnas.wrap(net, x[:1])
    search.train()(x)  # records the bits each LUT node saw (input-based sensitivity)
    return search


def _grads(model: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)


def test_every_registered_regularizer_on_real_wrapped_models() -> None:
    """Each name in the registry is called on real ``hwnas.wrap`` models (four zoo models,
    or a wrapped LUT network for the LUT penalties) and gives a finite positive scalar
    whose gradient reaches the model; a newly registered name without a case fails."""
    import hwnas
    import hwnas.difflut  # noqa: F401  (registers the functional-sensitivity penalties)
    from hwnas.regularizers import get

    cases = {
        "base": lambda search, x: BaseRegularizer("ops", 1e-3)(search, 1, 4),
        "duccio": lambda search, x: DUCCIO(
            hwnas.relative_targets(search, {"params": 0.5, "ops": 0.5}), task_loss=1.0)(
            search, 1, 4),
        "l0": lambda search, x: get("l0")(search, 1, 4),
        "expected_l2": lambda search, x: get("expected_l2")(search, 1, 4),
        "gradient_penalty": lambda search, x: get("gradient_penalty")(search.eval(), x),
        "output_magnitude": lambda search, x: get("output_magnitude")(search(x), target=0.1),
    }
    lut_cases = ("functional", "functional_l1", "functional_l2", "functional_input",
                 "functional_exact")
    assert set(cases) | set(lut_cases) == set(regularizers.names())
    searches = _zoo_searches()
    for reg_name, call in cases.items():
        for model_name, search, x in searches:
            search.train()
            search.zero_grad()
            value = call(search, x)
            assert value.dim() == 0 and math.isfinite(value.item()), (reg_name, model_name)
            assert value.item() > 0, (reg_name, model_name)
            value.backward()
            assert _grads(search) > 0, (reg_name, model_name)
    for reg_name in lut_cases:
        search = _lut_search()
        value = get(reg_name)(search, epoch=1, n_epochs=4)
        assert value.dim() == 0 and 0 < value.item() < 1, reg_name
        value.backward()
        assert _grads(search) > 0, reg_name
