"""Tests of hwnas/train.py: fit phases, early stopping, checkpoints, history."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hwnas
from hwnas.errors import CheckpointError
from hwnas.train import EarlyStopping, FitConfig, fit, relative_targets


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
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
    prof = hwnas.profile(result.model, torch.randn(1, 6)).iloc[-1]
    assert prof["params"] == result.costs["params"]
    assert result.finished


def test_gates_have_no_weight_decay():
    search, train, val = _search()
    from hwnas.train import _make_optimizer

    opt = _make_optimizer(search.weight_parameters(), search.arch_parameters(),
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


def test_early_stopping_in_finetune_stops_phase():
    search, train, val = _search()
    targets = relative_targets(search, {"params": 0.6})
    cfg = FitConfig(warmup_epochs=1, search_epochs=1, finetune_epochs=30, lr=1e-6,
                    progress=False, early_stopping=EarlyStopping(patience=1, min_delta=0.5))
    result = fit(search, train, val, targets=targets, config=cfg)
    finetune = result.history[result.history.phase == "finetune"]
    assert 1 <= len(finetune) <= 3  # no epoch improves val accuracy by 0.5
    assert result.finished


def test_bad_input():
    search, train, val = _search()
    with pytest.raises(ValueError, match="needs `targets` or a `regularizer`"):
        fit(search, train, config=FitConfig(progress=False))
    with pytest.raises(KeyError, match="unknown cost 'luts'; known: params, ops"):
        fit(search, train, targets={"luts": 10.0})
    with pytest.raises(ValueError, match="target for 'params' must be > 0, but got 0"):
        fit(search, train, targets={"params": 0})
    with pytest.raises(ValueError, match="needs `val_data`"):
        fit(search, train, targets={"params": 10.0},
            config=FitConfig(early_stopping=EarlyStopping(), progress=False))
    with pytest.raises(ValueError, match="`search_epochs` must be an integer >= 0, but got -1"):
        FitConfig(search_epochs=-1)
    with pytest.raises(TypeError, match="must be a SearchModel"):
        fit(nn.Linear(2, 2), train, targets={"params": 1.0})
    with pytest.raises(ValueError, match="target fraction for 'params' must be > 0"):
        relative_targets(search, {"params": 0.0})


def test_corrupt_checkpoint_is_kept(tmp_path):
    search, train, val = _search()
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"not a checkpoint")
    cfg = FitConfig(warmup_epochs=1, search_epochs=1, finetune_epochs=0, progress=False)
    with pytest.raises(CheckpointError, match="corrupt or not a torch file"):
        fit(search, train, targets={"params": 300.0}, config=cfg, checkpoint=ckpt)
    assert ckpt.read_bytes() == b"not a checkpoint"
    torch.save({"something": 1}, ckpt)
    with pytest.raises(CheckpointError, match="not an hwnas fit checkpoint"):
        fit(search, train, targets={"params": 300.0}, config=cfg, checkpoint=ckpt)


def test_mismatched_checkpoint(tmp_path):
    search, train, val = _search()
    ckpt = tmp_path / "ckpt.pt"
    cfg = FitConfig(warmup_epochs=1, search_epochs=1, finetune_epochs=0, progress=False,
                    stop_after=1)
    fit(search, train, targets={"params": 300.0}, config=cfg, checkpoint=ckpt)
    saved = ckpt.read_bytes()
    other = hwnas.wrap(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
                       torch.randn(1, 6))
    with pytest.raises(CheckpointError, match="different model"):
        fit(other, train, targets={"params": 100.0}, config=cfg, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="different configuration"):
        fit(search, train, targets={"params": 300.0},
            config=FitConfig(warmup_epochs=1, search_epochs=2, finetune_epochs=0,
                             progress=False), checkpoint=ckpt)
    assert ckpt.read_bytes() == saved


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
    from hwnas.train import FitConfig, fit
    torch.set_num_threads(1)
    search, train, val = _search()
    stop = None if sys.argv[2] == "all" else int(sys.argv[2])
    cfg = FitConfig(warmup_epochs=1, search_epochs=2, finetune_epochs=1, progress=False,
                    stop_after=stop)
    result = fit(search, train, val, targets={{"params": 200.0, "ops": 200.0}}, config=cfg,
                 checkpoint=sys.argv[1])
    out = {{"search": search.state_dict(), "costs": search.costs(),
           "model": None if result.model is None else result.model.state_dict(),
           "history": result.history.drop(columns=["seconds"]).to_dict("list")}}
    torch.save(out, sys.argv[1] + ".result")
    """
)


def test_resume_in_fresh_process_matches_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    script.write_text(_RESUME_SCRIPT.format(tests=tests_dir))

    def run(ckpt, stop):
        subprocess.run([sys.executable, str(script), str(ckpt), stop], check=True,
                       capture_output=True, text=True)
        return torch.load(str(ckpt) + ".result", weights_only=False)

    whole = run(tmp_path / "a.pt", "all")
    first = run(tmp_path / "b.pt", "2")
    assert first["model"] is None  # stopped after 2 of 4 epochs
    second = run(tmp_path / "b.pt", "all")
    assert second["costs"] == whole["costs"]
    for key, value in whole["search"].items():
        torch.testing.assert_close(second["search"][key], value, atol=1e-6, rtol=0)
    for key, value in whole["model"].items():
        torch.testing.assert_close(second["model"][key], value, atol=1e-6, rtol=0)
    assert second["history"]["loss"] == pytest.approx(whole["history"]["loss"], abs=1e-6)
