"""Tests of hwnas/training/fit.py (and hwnas/training/loop.py): fit phases, early stopping, modes,
non-finite and diverging training, unmet targets, empty data, argument checks."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hwnas
from hwnas.errors import (
    CheckpointError,
    InvalidTypeError,
    InvalidValueError,
    TrainingError,
    UnknownNameError,
)
from hwnas.training.config import EarlyStopping, FitConfig
from hwnas.training.evaluation import evaluate, metrics
from hwnas.training.fit import TargetsNotMetWarning, fit, relative_targets
from hwnas.training.run import make_optimizer


def _data(seed: int = 0, nan: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    if nan:
        x[3, 2] = float("nan")
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32)
    return train, val, x[:1]


def _search(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 2))
    train, val, example = _data(seed)
    return hwnas.wrap(net, example), train, val


def _cfg(**kw) -> FitConfig:
    kw.setdefault("progress", False)
    for name, value in (("warmup_epochs", 1), ("search_epochs", 2), ("finetune_epochs", 1)):
        kw.setdefault(name, value)
    return FitConfig(**kw)


def test_phases_history_and_targets():
    search, train, val = _search()
    targets = relative_targets(search, {"params": 0.5, "ops": 0.5})
    cfg = FitConfig(warmup_epochs=2, search_epochs=3, finetune_epochs=2, progress=False)
    result = fit(search, train, val, targets=targets, config=cfg)
    h = result.history
    assert list(h["phase"]) == ["warmup"] * 2 + ["search"] * 3 + ["finetune"] * 2
    assert list(h["epoch"]) == list(range(7))
    for col in ("loss", "task_loss", "reg_loss", "train_accuracy", "val_accuracy", "val_loss",
                "cost_params", "cost_ops", "target_params", "target_ops",
                "strength_params", "strength_ops", "seconds"):
        assert col in h.columns, col
    assert h.loc[h.phase == "warmup", "reg_loss"].eq(0).all()
    # the exported model meets the targets (projection at the end of the search phase)
    assert result.costs["params"] <= targets["params"]
    assert result.costs["ops"] <= targets["ops"]
    assert result.met == {"params": True, "ops": True} and result.all_met
    prof = hwnas.profile(result.model, torch.randn(1, 6)).iloc[-1]
    assert prof["params"] == result.costs["params"]
    assert result.finished and result.resumed_from is None


def test_gates_have_no_weight_decay():
    search, train, val = _search()
    opt = make_optimizer(search.weight_parameters(), search.arch_parameters(),
                         FitConfig(weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[1]["weight_decay"] == 0.0
    gate_ids = {id(p) for p in search.arch_parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == gate_ids


def test_early_stopping_logic_and_restore():
    stop = EarlyStopping(patience=2, min_delta=0.01)
    model = nn.Linear(2, 1)
    assert stop.step(0.5, model) is False
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    assert stop.step(0.505, model) is False  # below min_delta: not an improvement
    assert stop.bad_epochs == 1
    assert stop.step(0.4, model) is True
    stop.restore(model)
    assert torch.equal(model.weight, best["weight"])
    lower = EarlyStopping(patience=1, monitor="val_loss")
    assert lower.step(1.0, None) is False and lower.step(0.5, None) is False
    assert lower.step(0.7, None) is True
    with pytest.raises(ValueError, match="`patience` must be an integer >= 1, but got 0"):
        EarlyStopping(patience=0)
    with pytest.raises(InvalidTypeError, match="`patience` must be an integer >= 1, but got True"):
        EarlyStopping(patience=True)
    with pytest.raises(InvalidValueError, match="`min_delta` must be a finite number >= 0"):
        EarlyStopping(min_delta=float("nan"))


def test_early_stopping_in_finetune_stops_phase():
    search, train, val = _search()
    targets = relative_targets(search, {"params": 0.6})
    cfg = FitConfig(warmup_epochs=1, search_epochs=1, finetune_epochs=30, lr=1e-6,
                    progress=False, early_stopping=EarlyStopping(patience=1, min_delta=0.5))
    result = fit(search, train, val, targets=targets, config=cfg)
    finetune = result.history[result.history.phase == "finetune"]
    assert 1 <= len(finetune) <= 3  # no epoch improves val accuracy by 0.5
    assert result.finished


def test_early_stopping_on_a_missing_column_is_named():
    search, train, val = _search()
    cfg = _cfg(early_stopping=EarlyStopping(monitor="val_f1"))
    epochs = []
    cfg = _cfg(early_stopping=EarlyStopping(monitor="val_f1"),
               on_epoch_end=lambda row, s: epochs.append(row))
    with pytest.raises(InvalidValueError, match="early stopping cannot monitor 'val_f1'; it can "
                                                "monitor 'val_loss', 'val_accuracy'"):
        fit(search, train, val, targets={"params": 300.0}, config=cfg)
    assert epochs == []  # before any training


def test_bad_input():
    search, train, val = _search()
    with pytest.raises(ValueError, match="needs `targets` or a `regularizer`"):
        fit(search, train, config=FitConfig(progress=False))
    with pytest.raises(KeyError, match="cost 'luts' was not asked for"):
        fit(search, train, targets={"luts": 10.0})
    with pytest.raises(ValueError, match="target for 'params' must be a finite number > 0, "
                                         "but got 0"):
        fit(search, train, targets={"params": 0})
    with pytest.raises(ValueError, match="needs `val_data`"):
        fit(search, train, targets={"params": 10.0},
            config=FitConfig(early_stopping=EarlyStopping(), progress=False))
    with pytest.raises(ValueError, match="`search_epochs` must be an integer >= 0, but got -1"):
        FitConfig(search_epochs=-1)
    with pytest.raises(TypeError, match="must be a SearchModel"):
        fit(nn.Linear(2, 2), train, targets={"params": 1.0})
    with pytest.raises(ValueError, match=r"target fraction for 'params' must be in \(0, 1\]"):
        relative_targets(search, {"params": 0.0})


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"seed": 1.5}, InvalidTypeError, "`seed` must be an integer or None, but got 1.5"),
    ({"seed": True}, InvalidTypeError, "`seed` must be an integer or None, but got True"),
    ({"weight_decay": float("inf")}, InvalidValueError,
     "`weight_decay` must be a finite number >= 0, but got inf"),
    ({"lr": "1e-3"}, InvalidTypeError, "`lr` must be a number, but got '1e-3'"),
    ({"warmup_epochs": 2.0}, InvalidTypeError, "`warmup_epochs` must be an integer >= 0, "
                                               "but got 2.0"),
    ({"progress": "no"}, InvalidTypeError,
     "`progress` must be True, False or 'lines', but got 'no'"),
    ({"divergence_factor": 0.5}, InvalidValueError,
     "`divergence_factor` must be a finite number > 1, but got 0.5"),
    ({"early_stopping": 3}, InvalidTypeError, "`early_stopping` must be an EarlyStopping"),
])
def test_fit_config_type_errors_name_their_key(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        FitConfig(**kwargs)


def test_relative_targets_type_error_names_the_key():
    search, _, _ = _search()
    with pytest.raises(InvalidTypeError,
                       match="target fraction for 'params' must be a number, but got '0.5'"):
        relative_targets(search, {"params": "0.5"})
    with pytest.raises(UnknownNameError, match=r"unknown cost 'lut'; known: .*params"):
        relative_targets(search, {"lut": 0.5})


def test_wrapping_a_search_model_says_so():
    search, _, _ = _search()
    with pytest.raises(InvalidTypeError, match="`model` is already a SearchModel"):
        hwnas.wrap(search, torch.randn(1, 6))


# ----------------------------------------------------------------- modes (issue 11, item 3)
@pytest.mark.parametrize("training", [True, False])
def test_fit_leaves_modes_as_it_found_them(training):
    search, train, val = _search()
    search.train(training)
    search.cost_mode = "deterministic"
    fit(search, train, val, targets={"params": 300.0}, config=_cfg(cost_mode="straight_through"))
    assert search.training is training
    assert search.cost_mode == "deterministic"
    assert all(p.requires_grad for p in search.arch_parameters())


def test_warmup_only_fit_leaves_the_gates_on():
    search, train, val = _search()
    fit(search, train, val, config=_cfg(search_epochs=0, finetune_epochs=0))
    assert search.training and all(p.requires_grad for p in search.arch_parameters())
    x = torch.randn(8, 6)
    torch.manual_seed(1)
    a = search(x)
    b = search(x)
    assert not torch.equal(a, b)  # train mode samples the gates: two draws differ
    assert torch.equal(search(x, gates="off"), search(x, gates="off"))
    search.eval()
    assert not torch.equal(search(x), search(x, gates="off"))  # gates are applied


def test_modes_are_restored_when_fit_raises():
    search, train, val = _search()
    search.cost_mode = "expected"
    with pytest.raises(TrainingError):
        fit(search, train, val, targets={"params": 300.0}, config=_cfg(lr=1e6))
    assert search.training and search.cost_mode == "expected"
    assert all(p.requires_grad for p in search.arch_parameters())


# ------------------------------------------------------------ DUCCIO strengths (item 8)
def test_duccio_strength_comes_from_the_loss_at_the_start_of_the_search(tmp_path):
    doc = " ".join(FitConfig.__doc__.split())
    assert "set from the task loss at the start of the search" in doc
    assert "last epoch's mean task loss sets DUCCIO" not in doc
    search, train, val = _search()
    reference = search.reference_costs()["params"]
    seen = {}

    def at_end_of_warmup(row, model):  # the state the search phase starts from
        if row["phase"] == "warmup":
            seen.update(model=copy.deepcopy(model), rng=torch.get_rng_state(),
                        loader=train.generator.get_state())

    ckpt = tmp_path / "c.pt"
    result = fit(search, train, val, targets={"params": 300.0}, checkpoint=ckpt,
                 config=_cfg(warmup_epochs=3, finetune_epochs=0, lr=0.05,
                             on_epoch_end=at_end_of_warmup))
    state = torch.load(ckpt, weights_only=False)
    assert "warmup_loss" not in state
    # the loss over the training data with sampled gates, BatchNorm in eval mode
    torch.set_rng_state(seen["rng"])
    train.generator.set_state(seen["loader"])
    start = metrics(partial(seen["model"].eval(), gates="sample"), train, F.cross_entropy,
                    torch.device("cpu"))["loss"]
    assert state["start_loss"] == start
    strength = state["regularizer"]["strengths"]["params"]
    assert strength == pytest.approx(start / (reference - 300.0), rel=1e-12)
    warm = float(result.history.loc[result.history.phase == "warmup", "task_loss"].iloc[-1])
    assert strength != pytest.approx(warm / (reference - 300.0), rel=1e-3)


# --------------------------------------------------------- non-finite training (issue 12)
def test_nan_in_the_data_stops_the_warmup_with_a_clear_error(tmp_path):
    search, _, val = _search()
    train, _, _ = _data(nan=True)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(TrainingError) as info:
        fit(search, train, val, config=_cfg(search_epochs=0, finetune_epochs=0),
            checkpoint=ckpt)
    message = str(info.value)
    assert message.startswith("training stopped in the warmup phase, epoch 1 of 1 "
                              "(warmup epoch 1 of 1), step ")
    assert ": the loss is nan; check the training data for NaN or infinite values" in message
    assert "no checkpoint was written by this call" in message
    assert message.endswith("no model was exported")
    assert not ckpt.exists()


class _NanAfter:
    """Cross-entropy that returns NaN from its ``n``-th call on."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, output, target):
        self.calls += 1
        loss = F.cross_entropy(output, target)
        return loss * float("nan") if self.calls >= self.n else loss


@pytest.mark.parametrize(("phase", "calls", "saved"), [("search", 4 + 1 + 4 + 3, 1),
                                                      ("finetune", 20 + 2, 3)])
def test_nan_loss_later_keeps_the_last_good_checkpoint(tmp_path, phase, calls, saved):
    # loss calls: warm-up 4 steps + 1 validation batch, the DUCCIO start loss over the 4
    # training batches, 2 search epochs of 4 + 1, validation after recalibration (1)
    search, train, val = _search()
    ckpt = tmp_path / "c.pt"
    with pytest.raises(TrainingError, match=f"training stopped in the {phase} phase") as info:
        fit(search, train, val, loss_fn=_NanAfter(calls), targets={"params": 300.0},
            config=_cfg(), checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert f"the last good checkpoint (after epoch {saved}) is kept" in str(info.value)
    assert state["epoch"] == saved
    assert torch.isfinite(torch.cat([v.flatten().float() for v in
                                     state["search"].values()])).all()


class _NanGradLoss:
    """A finite loss whose gradient is NaN (0 * d sqrt(x)/dx at x = 0)."""

    def __call__(self, output, target):
        zero = output - output.detach()
        return F.cross_entropy(output, target) + 0.0 * torch.sqrt(zero.abs()).sum()


def test_nan_gradient_with_a_finite_loss_is_caught():
    search, train, val = _search()
    with pytest.raises(TrainingError, match=r"warmup epoch 1 of 1\), step 1: the gradient norm "
                                            r"is nan \(the loss was"):
        fit(search, train, val, loss_fn=_NanGradLoss(), targets={"params": 300.0},
            config=_cfg())


def test_a_huge_learning_rate_is_reported_as_divergence():
    search, train, val = _search()
    with pytest.raises(TrainingError, match=r"the training diverged: the loss is .*, more than "
                                            r"1000x the loss at the start .*lower the learning "
                                            r"rate \(lr=1e\+06"):
        fit(search, train, val, targets={"params": 300.0}, config=_cfg(lr=1e6))


def test_non_finite_validation_loss_is_caught():
    search, train, _ = _search()
    _, val, _ = _data(nan=True)
    x, y = val.dataset.tensors
    x[0, 0] = float("inf")
    with pytest.raises(TrainingError, match="the validation loss is nan"):
        fit(search, train, val, targets={"params": 300.0}, config=_cfg())


def test_data_that_does_not_fit_the_model_names_the_step():
    search, _, val = _search()
    wide = DataLoader(TensorDataset(torch.randn(32, 7), torch.zeros(32, dtype=torch.long)),
                      batch_size=16)
    with pytest.raises(TrainingError, match=r"warmup epoch 1 of 1\), step 1: the forward pass "
                                            r"or the loss raised RuntimeError: .*check that the "
                                            r"data fit the model and the loss"):
        fit(search, wide, val, targets={"params": 300.0}, config=_cfg())


# ----------------------------------------------------------------- unmet targets, empty data
def test_unreachable_targets_are_reported_and_warned():
    torch.manual_seed(0)
    search = hwnas.wrap(nn.Sequential(nn.Linear(6, 2)), torch.randn(1, 6))  # nothing prunable
    train, val, _ = _data()
    with pytest.warns(TargetsNotMetWarning, match=r"does not meet its cost targets: params 14 > "
                                                   r"target 7"):
        result = fit(search, train, val, targets=relative_targets(search, {"params": 0.5}),
                     config=_cfg())
    assert result.finished and result.met == {"params": False} and not result.all_met
    assert result.costs["params"] == 14.0


def test_met_targets_give_no_warning():
    search, train, val = _search()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TargetsNotMetWarning)
        result = fit(search, train, val, targets={"params": 300.0}, config=_cfg())
    assert result.met == {"params": True}


def test_empty_loaders_are_errors_before_training(tmp_path):
    search, train, val = _search()
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)),
                       batch_size=4)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(InvalidValueError, match=r"`train_data` is empty \(0 batches\)"):
        fit(search, empty, val, targets={"params": 300.0}, config=_cfg(), checkpoint=ckpt)
    with pytest.raises(InvalidValueError, match=r"`val_data` is empty \(0 batches\)"):
        fit(search, train, empty, targets={"params": 300.0},
            config=_cfg(early_stopping=EarlyStopping()), checkpoint=ckpt)
    assert not ckpt.exists()
    with pytest.raises(InvalidValueError, match="`train_data` is empty: it yielded no batch"):
        fit(search, iter([]), targets={"params": 300.0}, config=_cfg())
    with pytest.raises(InvalidTypeError, match="`train_data` must be an iterable"):
        fit(search, 3, targets={"params": 300.0}, config=_cfg())


# --------------------------------------------------------------------- regularizer protocols
class _CountingPenalty:
    """A user regularizer with state (Stateful): it counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, epoch=None, n_epochs=None):
        self.calls += 1
        return 1e-4 * model.cost("params")

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_a_stateful_user_regularizer_is_checkpointed_and_restored(tmp_path):
    ckpt = tmp_path / "c.pt"
    search, train, val = _search()
    reg = _CountingPenalty()
    fit(search, train, val, regularizer=reg, config=_cfg(stop_after=2), checkpoint=ckpt)
    assert reg.calls == 4 and torch.load(ckpt, weights_only=False)["regularizer"] == {"calls": 4}
    search, train, val = _search()
    again = _CountingPenalty()
    result = fit(search, train, val, regularizer=again, config=_cfg(), checkpoint=ckpt)
    assert result.resumed_from == 2
    assert again.calls == 8  # 4 restored + 4 of the second search epoch
    assert "strength_params" not in result.history.columns  # not Scheduled


def test_search_state_dict_round_trip():
    search, train, val = _search()
    for g in search.free_groups:
        with torch.no_grad():
            search.gate(g).log_alpha.normal_()
    state = search.state_dict()
    fresh, _, _ = _search(seed=1)
    fresh.load_state_dict(state)
    for g in search.free_groups:
        assert torch.equal(fresh.gate(g).log_alpha, search.gate(g).log_alpha)
    assert fresh.costs() == search.costs()
    x = torch.randn(4, 6)
    assert torch.equal(fresh.eval()(x), search.eval()(x))


_RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import _search
    from hwnas.training.fit import FitConfig, fit
    torch.set_num_threads(1)
    search, train, val = _search()
    stop = None if sys.argv[2] == "all" else int(sys.argv[2])
    cfg = FitConfig(warmup_epochs=1, search_epochs=2, finetune_epochs=1, progress=False,
                    stop_after=stop)
    result = fit(search, train, val, targets={{"params": 200.0, "ops": 200.0}}, config=cfg,
                 checkpoint=sys.argv[1])
    out = {{"search": search.state_dict(), "costs": search.costs(),
           "model": None if result.model is None else result.model.state_dict(),
           "resumed_from": result.resumed_from,
           "history": result.history.drop(columns=["seconds"]).to_dict("list")}}
    torch.save(out, sys.argv[1] + ".result")
    """
)


def test_resume_in_fresh_process_matches_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_RESUME_SCRIPT.format(tests=str(Path(__file__).parent)))

    def run(ckpt, stop):
        subprocess.run([sys.executable, str(script), str(ckpt), stop], check=True,
                       capture_output=True, text=True)
        return torch.load(str(ckpt) + ".result", weights_only=False)

    whole = run(tmp_path / "a.pt", "all")
    first = run(tmp_path / "b.pt", "2")
    assert first["model"] is None  # stopped after 2 of 4 epochs
    second = run(tmp_path / "b.pt", "all")
    assert second["resumed_from"] == 2 and whole["resumed_from"] is None
    assert second["costs"] == whole["costs"]
    for key, value in whole["search"].items():
        torch.testing.assert_close(second["search"][key], value, atol=1e-6, rtol=0)
    for key, value in whole["model"].items():
        torch.testing.assert_close(second["model"][key], value, atol=1e-6, rtol=0)
    assert second["history"]["loss"] == pytest.approx(whole["history"]["loss"], abs=1e-6)


def test_early_stopping_on_accuracy_with_a_regression_loss_fails_before_training():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(64, 6)
    data = [(x[i:i + 16], x[i:i + 16, :1] * 2) for i in range(0, 64, 16)]
    search = hwnas.wrap(net, x[:1])
    epochs = []
    cfg = _cfg(early_stopping=EarlyStopping(patience=2),
               on_epoch_end=lambda row, s: epochs.append(row["epoch"]))
    with pytest.raises(ValueError, match=r"early stopping monitors 'val_accuracy', but the "
                                         r"validation targets are not class indices \(targets "
                                         r"\(16, 1\), outputs \(16, 1\)\): use "
                                         r"EarlyStopping\(monitor='val_loss'\)"):
        fit(search, data, data, loss_fn=nn.functional.mse_loss, targets={"params": 100.0},
            config=cfg)
    assert epochs == []
    with pytest.raises(ValueError, match="early stopping cannot monitor 'val_acc'; it can"):
        fit(search, data, data, targets={"params": 100.0},
            config=_cfg(early_stopping=EarlyStopping(monitor="val_acc")))
    out = fit(search, data, data, loss_fn=nn.functional.mse_loss, targets={"params": 100.0},
              config=_cfg(early_stopping=EarlyStopping(patience=2, monitor="val_loss")))
    assert out.finished


# ------------------------------------------------------------- first-hour traps (issue 23)
def test_a_fraction_passed_as_an_absolute_target_is_refused_before_training():
    search, train, val = _search()
    full = search.reference_costs()["params"]
    epochs = []
    with pytest.raises(ValueError, match=(
            r"target for 'params' is 0.5, an absolute count, but the unpruned model has "
            rf"{full:,.0f} params: for a fraction, pass targets=hwnas.relative_targets\(search, "
            rf"\{{'params': 0.5\}}\) \(= {0.5 * full:,.0f}\)")):
        fit(search, train, val, targets={"params": 0.5},
            config=_cfg(on_epoch_end=lambda row, s: epochs.append(row)))
    assert epochs == []
    with pytest.raises(ValueError, match=r"must be in \(0, 1\] .*, but got 50; 50 looks like a "
                                         r"percentage: write 0.5"):
        relative_targets(search, {"params": 50})
    assert relative_targets(search, {"params": 1.0}) == {"params": full}


def test_fit_result_carries_the_accuracy_before_and_after():
    search, train, val = _search()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(48, 6, generator=g)
    test = [(x[i:i + 16], (x[i:i + 16, 0] + x[i:i + 16, 1] > 0).long()) for i in range(0, 48, 16)]
    seen = {}

    def spy(row, s):
        if row["phase"] == "warmup":  # the unpruned model at the end of the warm-up
            seen["val"] = evaluate(s, val, gates="off")["accuracy"]
            seen["test"] = evaluate(s, test, gates="off")["accuracy"]

    out = fit(search, train, val, targets={"params": 300.0}, test_data=test,
              config=_cfg(on_epoch_end=spy))
    assert out.val_accuracy_before == seen["val"]
    assert out.test_accuracy_before == seen["test"]
    assert out.val_accuracy_after == evaluate(out.model, val)["accuracy"]
    assert out.test_accuracy_after == evaluate(out.model, test)["accuracy"]
    no_val = fit(*_search()[:2], targets={"params": 300.0}, config=_cfg())
    assert no_val.val_accuracy_before is None and no_val.test_accuracy_after is None


def test_a_finished_run_is_extended_by_more_finetune_epochs(tmp_path, capsys):
    ckpt = tmp_path / "run.pt"
    search, train, val = _search()
    first = fit(search, train, val, targets={"params": 300.0}, checkpoint=ckpt,
                config=_cfg(progress="lines"))
    assert first.finished and len(first.history) == 4
    search, train, val = _search()
    more = fit(search, train, val, targets={"params": 300.0}, checkpoint=ckpt,
               config=_cfg(progress="lines", finetune_epochs=3))
    out = capsys.readouterr().out
    assert "resumed from epoch 4 of 6" in out and "extending the finished run by 2 fine-tune" \
        in out
    assert more.resumed_from == 4 and more.finished
    assert more.history["phase"].tolist() == ["warmup", "search", "search", "finetune",
                                              "finetune", "finetune"]
    assert more.history["loss"].tolist()[:4] == first.history["loss"].tolist()
    search, train, val = _search()
    with pytest.raises(CheckpointError, match="holds a run of 3 fine-tune epochs; this call "
                                              "asks for 1: a run can be extended, not shortened"):
        fit(search, train, val, targets={"params": 300.0}, checkpoint=ckpt, config=_cfg())


def test_data_that_does_not_fit_is_a_training_error_everywhere_in_fit():
    """A loader whose inputs do not fit the model fails with a TrainingError naming where
    (here: the task loss DUCCIO measures at the start of the search), not a bare
    RuntimeError of the model."""
    search, train, val = _search()
    bad = [(torch.randn(8, 5), torch.randint(0, 2, (8,)))]  # 5 features, the model takes 6
    with pytest.raises(TrainingError, match=r"training stopped in the search phase.*: "
                                            r"measuring the task loss at the start of the "
                                            r"search raised RuntimeError: .*; check that the "
                                            r"data fit the model and the loss"):
        fit(search, bad, targets={"params": 300.0}, config=_cfg(warmup_epochs=0))
