"""Tests of hwnas/training/checkpoint.py: validated load, the resume key, atomic writes, modes."""

from __future__ import annotations

import os
import re

import pytest
import torch
from test_train import _cfg, _data, _search
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hwnas
from hwnas.errors import CheckpointError
from hwnas.training.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    data_fingerprint,
    model_fingerprint,
)
from hwnas.training.config import FitConfig
from hwnas.training.fit import fit


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture()
def saved(tmp_path):
    """A checkpoint after 2 of 4 epochs (targets params 300), and its bytes."""
    search, train, val = _search()
    ckpt = tmp_path / "ckpt.pt"
    fit(search, train, val, targets={"params": 300.0}, config=_cfg(stop_after=2),
        checkpoint=ckpt)
    return ckpt, ckpt.read_bytes()


def test_corrupt_checkpoint_is_kept(tmp_path):
    search, train, val = _search()
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a torch file"):
        fit(search, train, targets={"params": 300.0}, config=_cfg(), checkpoint=ckpt)
    assert ckpt.read_bytes() == b"not a checkpoint"
    torch.save({"something": 1}, ckpt)
    with pytest.raises(CheckpointError, match="not an hwnas fit checkpoint"):
        fit(search, train, targets={"params": 300.0}, config=_cfg(), checkpoint=ckpt)
    torch.save({"format": "hwnas-fit", "version": 1}, ckpt)
    with pytest.raises(CheckpointError, match=f"has version 1, but this hwnas reads version "
                                              f"{CHECKPOINT_VERSION}; start over with --fresh"):
        fit(search, train, targets={"params": 300.0}, config=_cfg(), checkpoint=ckpt)


def _refused(ckpt, match, *, search=None, train=None, val=None, targets=None, config=None,
             **kw) -> str:
    s, t, v = _search()
    with pytest.raises(CheckpointError) as info:
        fit(search or s, train or t, val or v, targets=targets or {"params": 300.0},
            config=config or _cfg(), checkpoint=ckpt, **kw)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {str(ckpt)!r} was made by another run: ")
    assert message.endswith("start over with --fresh (hwnas search) or remove the file")
    assert re.search(match, message), message
    return message


def test_changed_cost_targets_are_refused(saved):
    ckpt, data = saved
    _refused(ckpt, r"cost targets differ \(params: 300 in the checkpoint, 250 now\)",
             targets={"params": 250.0})
    _refused(ckpt, r"cost targets differ \(ops: None in the checkpoint, 1,000 now\)",
             targets={"params": 300.0, "ops": 1000.0})
    assert ckpt.read_bytes() == data  # the checkpoint is kept


def test_changed_settings_are_refused(saved):
    ckpt, _ = saved
    _refused(ckpt, r"fit settings differ \(search_epochs: 2 in the checkpoint, 3 now\)",
             config=_cfg(search_epochs=3))
    _refused(ckpt, r"fit settings differ \(lr: 0.001 in the checkpoint, 0.01 now\)",
             config=_cfg(lr=0.01))


def test_changed_model_hardware_or_data_are_refused(saved):
    ckpt, _ = saved
    other_weights, _, _ = _search(seed=1)  # same architecture, other initial weights
    _refused(ckpt, r"^[^;]*: model differs;", search=other_weights)
    torch.manual_seed(0)
    narrow = hwnas.wrap(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
                        torch.randn(1, 6))
    _refused(ckpt, "model differs", search=narrow)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 2))
    lut = hwnas.wrap(net, torch.randn(1, 6), target="xc7-lut6")
    _refused(ckpt, r"hardware target differs \('generic \(\w+\)' in the checkpoint, "
                   r"'xc7-lut6 \(\w+\)' now\)", search=lut)
    other_train, _, _ = _data(seed=3)
    _refused(ckpt, r"train data differ \(content: ", train=other_train)
    x, y = other_train.dataset.tensors
    bigger = DataLoader(TensorDataset(x.repeat(2, 1), y.repeat(2)), batch_size=16)
    _refused(ckpt, r"train data differ \(batches: 4 in the checkpoint, 8 now, content",
             train=bigger)
    _refused(ckpt, r"run differ \(model: None in the checkpoint, 'a:b' now\)",
             resume_key={"run": {"model": "a:b"}})


def test_resumed_run_says_so(saved, capsys):
    ckpt, _ = saved
    search, train, val = _search()
    result = fit(search, train, val, targets={"params": 300.0},
                 config=FitConfig(warmup_epochs=1, search_epochs=2, finetune_epochs=1),
                 checkpoint=ckpt)
    assert result.resumed_from == 2 and result.finished
    assert f"resumed from epoch 2 of 4 ({ckpt})" in capsys.readouterr().out


def test_checkpoint_is_atomic_cleans_stale_parts_and_has_usual_modes(tmp_path):
    stale = tmp_path / ".ckpt.pt.k2j3h4.part"
    stale.write_bytes(b"half a checkpoint")
    search, train, val = _search()
    ckpt = tmp_path / "ckpt.pt"
    fit(search, train, val, targets={"params": 300.0}, config=_cfg(stop_after=1),
        checkpoint=ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert ckpt.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_checkpoint_class_round_trip(tmp_path):
    ckpt = Checkpoint(tmp_path / "sub" / "c.pt")
    assert ckpt.load({"a": 1}) is None
    ckpt.save({"epoch": 5}, {"a": 1})
    assert ckpt.load({"a": 1})["epoch"] == 5
    with pytest.raises(CheckpointError, match=r"a differs \(1 in the checkpoint, 2 now\)"):
        ckpt.load({"a": 2})
    assert Checkpoint(None).load({}) is None


def test_fingerprints_follow_weights_and_data():
    a, train, _ = _search()
    b, _, _ = _search()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        next(b.weight_parameters()).add_(1e-6)
    assert model_fingerprint(a) != model_fingerprint(b)
    fp = data_fingerprint(train)
    assert fp is not None and (fp["batches"], fp["examples"]) == (4, 64)
    assert fp["content"].startswith("sha256:")
    assert data_fingerprint([(1, 2)]) == {"batches": 1}


def test_the_same_search_continues_its_stopped_run(tmp_path):
    """fit(..., stop_after=2) and then the same call on the same (now trained) search object
    resumes the run (the docstring's promise), equal to an uninterrupted run."""
    search, train, val = _search()
    full = fit(search, train, val, targets={"params": 300.0}, config=_cfg())
    search, train, val = _search()
    ckpt = tmp_path / "ckpt.pt"
    first = fit(search, train, val, targets={"params": 300.0}, config=_cfg(stop_after=2),
                checkpoint=ckpt)
    assert not first.finished
    second = fit(search, train, val, targets={"params": 300.0}, config=_cfg(), checkpoint=ckpt)
    assert second.resumed_from == 2 and second.finished
    assert second.history["loss"].tolist() == full.history["loss"].tolist()
    # a new run on that trained object with a fresh file starts from its weights now
    other = tmp_path / "other.pt"
    fit(search, train, val, targets={"params": 300.0}, config=_cfg(stop_after=1),
        checkpoint=other)
    assert search.run_origins[str(other.resolve())] != search.run_origins[str(ckpt.resolve())]


class _RunsCode:
    """What a planted pickle would do on load: create a file (here, harmlessly)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.path),))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    from hwnas.errors import UntrustedFileError

    search, train, val = _search()
    ckpt = tmp_path / "ckpt.pt"
    fit(search, train, val, targets={"params": 300.0}, config=_cfg(stop_after=1),
        checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)  # our own checkpoints are plain data
    planted = tmp_path / "pwned"
    state["history"].append({"epoch": _RunsCode(planted)})
    torch.save(state, ckpt)
    search, train, val = _search()
    with pytest.raises(UntrustedFileError, match=r"checkpoint '.*ckpt.pt' holds more than "
                                                 r"tensors and plain data \(it calls \w+\); .*"
                                                 r"trust=True, or --trust"):
        fit(search, train, val, targets={"params": 300.0}, config=_cfg(), checkpoint=ckpt)
    assert not planted.exists()
    # whoever trusts the file may load it (and here it runs the planted call)
    out = fit(search, train, val, targets={"params": 300.0}, config=_cfg(), checkpoint=ckpt,
              trust_checkpoint=True)
    assert planted.exists() and out.resumed_from == 1
