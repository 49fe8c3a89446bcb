"""A short version of examples/digits_search.py: DUCCIO to 50% params and 50% MACs."""

from __future__ import annotations

import torch

import hwnas
from hwnas.training.config import FitConfig
from hwnas.training.evaluation import evaluate
from hwnas.training.fit import fit, relative_targets
from hwnas.zoo.datasets import digits
from hwnas.zoo.models import digits_cnn


def test_digits_duccio_search_meets_targets_and_keeps_accuracy():
    torch.manual_seed(0)
    data = digits(batch_size=64, seed=0)
    search = hwnas.wrap(digits_cnn(), data.example, costs=("params", "ops"))
    targets = relative_targets(search, {"params": 0.5, "ops": 0.5})
    config = FitConfig(warmup_epochs=4, search_epochs=6, finetune_epochs=0, progress=False,
                       enforce_targets=False)  # DUCCIO alone must get there
    assert data.sizes() == {"train": 1293, "validation": 144, "test": 360}
    result = fit(search, data.train, data.val, targets=targets, config=config)
    costs = search.costs()
    assert costs["params"] <= targets["params"]
    assert costs["ops"] <= targets["ops"]
    exported = hwnas.materialize(search.eval())
    accuracy = evaluate(exported, data.test)["accuracy"]  # the untouched test split
    assert accuracy >= 0.95, accuracy
    assert evaluate(search, data.test)["accuracy"] == accuracy
    assert result.met == {"params": True, "ops": True}
    search_rows = result.history[result.history.phase == "search"]
    assert search_rows["strength_params"].iloc[-1] > search_rows["strength_params"].iloc[0]
