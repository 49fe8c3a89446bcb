"""The search loop: warm-up, search, fine-tune; early stopping; checkpoints; history.

:func:`fit` is the entry point; :class:`~hwnas.training.config.FitConfig` its settings,
:class:`FitResult` what it returns. The state of one run lives in
:mod:`hwnas.training.run`, one epoch and one step in :mod:`hwnas.training.loop`,
checkpoints and the resume key in :mod:`hwnas.training.checkpoint`, evaluation in
:mod:`hwnas.training.evaluation` and the torch.distributed helpers in
:mod:`hwnas.training.distributed`.

What ``fit`` checks for you: the loss and the gradient norm of every step are finite and
the loss does not grow by orders of magnitude (else a :class:`~hwnas.errors.TrainingError`
naming the phase, epoch and step; the last good checkpoint is kept, no model is exported);
empty loaders, unknown costs and an early-stopping column that will not exist are errors
before training; a checkpoint is resumed only by the run that made it; the SearchModel's
train/eval mode, ``cost_mode`` and gate ``requires_grad`` are restored when ``fit`` returns
or raises; unmet cost targets are reported in :attr:`FitResult.met` and by a
:class:`TargetsNotMetWarning`.

Weight decay and gates: the optimizer puts the gate logits (``log_alpha``) in their own
parameter group with no weight decay. Decay pulls every logit toward 0, i.e. every gate
toward P(open) = 0.5, a bias unrelated to the costs or the task that would keep
channels half-open and fight the cost targets.
"""

from __future__ import annotations

import copy
import math
import os
import random
import warnings
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from hwnas._internal.checks import is_number
from hwnas._internal.devices import device_of, resolve_device, to_device
from hwnas._internal.modes import eval_mode
from hwnas.errors import InvalidTypeError, InvalidValueError
from hwnas.search.model import SearchModel
from hwnas.training.checkpoint import Checkpoint, start_fingerprint
from hwnas.training.checkpoint import resume_key as make_resume_key
from hwnas.training.config import EarlyStopping, FitConfig
from hwnas.training.distributed import is_rank0, rank, world_size
from hwnas.training.evaluation import correct_tensor, split_batch
from hwnas.training.loop import train_epoch
from hwnas.training.run import FitRun

__all__ = ["FitResult", "TargetsNotMetWarning", "fit", "relative_targets"]


class TargetsNotMetWarning(UserWarning):
    """:func:`fit` finished, but the exported model does not meet every cost target."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        search: The SearchModel after the search phase.
        model: The exported pruned model (fine-tuned when ``finetune_epochs > 0``), or
            ``None`` when the run stopped early (``stop_after``).
        history: One row per epoch: epoch, phase, losses, accuracies, each cost, target
            and strength.
        costs: Exact costs of the exported architecture.
        targets: The absolute cost targets.
        finished: False when ``stop_after`` ended the call before the last epoch.
        met: For each target, whether the exported cost is at or below it.
        resumed_from: The number of epochs a checkpoint had already done, or None.
        val_accuracy_before / test_accuracy_before: Accuracy of the unpruned model when
            the warm-up ended (what pruning is measured against), on ``val_data`` /
            ``test_data``; None without such data or class-index targets.
        val_accuracy_after / test_accuracy_after: Accuracy of the exported (fine-tuned)
            model. The test data is only ever reported, never chosen on.
    """

    search: SearchModel
    model: nn.Module | None
    history: pd.DataFrame
    costs: dict[str, float]
    targets: dict[str, float]
    finished: bool
    met: dict[str, bool] = field(default_factory=dict)
    resumed_from: int | None = None
    val_accuracy_before: float | None = None
    val_accuracy_after: float | None = None
    test_accuracy_before: float | None = None
    test_accuracy_after: float | None = None

    @property
    def all_met(self) -> bool:
        """True when every cost target is met (and when there is none)."""
        return all(self.met.values())


def relative_targets(search: SearchModel, fractions: Mapping[str, float]) -> dict[str, float]:
    """Absolute targets from fractions of the unpruned model's costs.

    Example:
        >>> import torch, hwnas
        >>> from torch import nn
        >>> s = hwnas.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        ...                torch.randn(1, 4))
        >>> relative_targets(s, {"params": 0.5})
        {'params': 29.0}
        >>> relative_targets(s, {"params": "0.5"})
        Traceback (most recent call last):
        ...
        hwnas.errors.InvalidTypeError: target fraction for 'params' must be a number, but got '0.5'
    """
    if not isinstance(search, SearchModel):
        raise InvalidTypeError(f"`search` must be a SearchModel (hwnas.wrap), but got "
                               f"{type(search).__name__}")
    if not isinstance(fractions, Mapping):
        raise InvalidTypeError(f"`fractions` must be a mapping like {{'params': 0.5}}, but got "
                               f"{fractions!r}")
    reference = search.reference_costs()
    out = {}
    for name, frac in fractions.items():
        search.check_cost(name)
        if not is_number(frac):
            raise InvalidTypeError(f"target fraction for {name!r} must be a number, but got "
                                   f"{frac!r}")
        if not (math.isfinite(frac) and 0 < frac <= 1):
            hint = (f"; {frac:g} looks like a percentage: write {frac / 100:g}"
                    if 1 < frac <= 100 else "")
            raise InvalidValueError(f"target fraction for {name!r} must be in (0, 1] (a "
                                    f"fraction of the unpruned model's {name}), but got "
                                    f"{frac!r}{hint}")
        out[name] = float(frac) * reference[name]
    return out


def _check_targets(search: SearchModel, targets: Mapping[str, float] | None) -> dict[str, float]:
    """Absolute targets, checked: a count of at most 1 for a cost in the hundreds or more
    is a fraction passed where an absolute target belongs."""
    out = {}
    reference = search.reference_costs() if targets else {}
    for name, value in (targets or {}).items():
        search.check_cost(name)
        if not is_number(value):
            raise InvalidTypeError(f"target for {name!r} must be a number, but got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise InvalidValueError(f"target for {name!r} must be a finite number > 0, but got "
                                    f"{value!r}")
        full = reference[name]
        if value <= 1 and full >= 100:
            raise InvalidValueError(
                f"target for {name!r} is {value:g}, an absolute count, but the unpruned model "
                f"has {full:,.0f} {name}: for a fraction, pass "
                f"targets=hwnas.relative_targets(search, {{{name!r}: {value:g}}}) "
                f"(= {value * full:,.0f})")
        out[name] = float(value)
    return out


def _check_loader(name: str, data: Any) -> None:
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise InvalidTypeError(f"`{name}` must be an iterable of (inputs, targets) batches "
                               f"(a DataLoader), but got {type(data).__name__}")
    if isinstance(data, Sized) and len(data) == 0:
        raise InvalidValueError(f"`{name}` is empty (0 batches): nothing to train or "
                                "validate on; check the dataset and the batch size")


#: History columns early stopping can watch; the accuracies need class-index targets.
_MONITORS = ("val_loss", "val_accuracy", "loss", "task_loss", "train_accuracy")


def _check_monitor(monitor: str, search: SearchModel, val_data: Any) -> None:
    """Before any training: the column early stopping watches will exist. An accuracy
    needs class-index targets, which the first validation batch shows."""
    if monitor not in _MONITORS:
        raise InvalidValueError(f"early stopping cannot monitor {monitor!r}; it can monitor "
                                f"{', '.join(map(repr, _MONITORS))}")
    if not monitor.endswith("accuracy"):
        return
    batch = next(iter(val_data), None)
    if batch is None:
        return  # an empty loader is reported by the loop
    inputs, target = split_batch(to_device(batch, device_of(search)))
    with eval_mode(search), torch.no_grad():
        output = search(*inputs, gates="off")
    if correct_tensor(output, target) is None:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise InvalidValueError(
            f"early stopping monitors {monitor!r}, but the validation targets are not class "
            f"indices (targets {shape}, outputs {tuple(getattr(output, 'shape', ()))}): "
            "use EarlyStopping(monitor='val_loss')")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(
    search: SearchModel,
    train_data: Iterable,
    val_data: Iterable | None = None,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    targets: Mapping[str, float] | None = None,
    config: FitConfig | None = None,
    regularizer: Callable[..., torch.Tensor] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume_key: Mapping[str, Any] | None = None,
    test_data: Iterable | None = None,
    trust_checkpoint: bool = False,
) -> FitResult:
    """Warm-up, search and fine-tune ``search`` on any data and loss.

    Args:
        search: From :func:`hwnas.wrap`; trained in place. Its train/eval mode,
            ``cost_mode`` and gate ``requires_grad`` are as before when ``fit`` returns.
        train_data: Iterable of ``(inputs, targets)`` batches (a DataLoader).
        val_data: Optional validation batches (needed by early stopping). Keep a test
            split apart: accuracy on ``val_data`` is what early stopping chose on.
        loss_fn: ``loss_fn(output, targets)``; default cross-entropy.
        targets: Absolute cost targets, e.g. ``relative_targets(search, {"ops": 0.5})``;
            with no ``regularizer``, a :class:`~hwnas.regularizers.DUCCIO` on them is
            built from the task loss at the start of the search.
        config: :class:`FitConfig`.
        regularizer: ``reg(model, epoch, n_epochs) -> Tensor`` used in the search phase
            instead of the DUCCIO built from ``targets``.
        checkpoint: A file to save the whole state to after every epoch, and to resume
            from when it exists. It is resumed only when it was made by the same run: the
            same settings, targets, hardware target, SearchModel (architecture and weights
            at the start), data, loss and regularizer; else a CheckpointError says what
            differs.
        resume_key: More entries the checkpoint must agree on (plain values), e.g. the
            model and data factories that built ``search`` and the loaders.
        test_data: Optional test batches: only evaluated for the accuracies of the result
            (the unpruned model after warm-up and the exported one), never chosen on.
        trust_checkpoint: Load a checkpoint that holds more than tensors and plain data
            (an older hwnas's, or one of unknown origin: it could run code). By default
            such a file is refused with an :class:`~hwnas.errors.UntrustedFileError`.

    A finished run whose checkpoint exists is extended, not repeated, when called again
    with more ``finetune_epochs``: it continues fine-tuning its exported model and says so.

    Returns:
        A :class:`FitResult`; ``result.met`` says which targets the exported model meets
        (a :class:`TargetsNotMetWarning` is issued when one is not).

    Raises:
        TrainingError: a non-finite loss or gradient, or a diverging loss (the message
            names the phase, epoch and step; the last good checkpoint is kept).
        CheckpointError: the checkpoint is unreadable or belongs to another run.
        InvalidValueError / InvalidTypeError / UnknownNameError: bad arguments (empty
            loaders, unknown cost names, ...), before any training.

    Example:
        >>> import torch, hwnas
        >>> from torch import nn
        >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> s = hwnas.wrap(net, x[:1])
        >>> cfg = FitConfig(warmup_epochs=1, search_epochs=2, finetune_epochs=1,
        ...                 progress=False)
        >>> out = fit(s, [(x, y)], targets=relative_targets(s, {"params": 0.5}), config=cfg)
        >>> list(out.history["phase"]), out.met
        (['warmup', 'search', 'search', 'finetune'], {'params': True})
    """
    if not isinstance(search, SearchModel):
        raise InvalidTypeError(f"`search` must be a SearchModel (hwnas.wrap), but got "
                               f"{type(search).__name__}")
    config = config if config is not None else FitConfig()
    if not isinstance(config, FitConfig):
        raise InvalidTypeError(f"`config` must be a FitConfig, but got {type(config).__name__}")
    checked = _check_targets(search, targets)
    _check_loader("train_data", train_data)
    for name, data in (("val_data", val_data), ("test_data", test_data)):
        if data is not None:
            _check_loader(name, data)
    if config.early_stopping is not None and val_data is None:
        raise InvalidValueError("`config.early_stopping` needs `val_data`, but val_data is None")
    if config.search_epochs and regularizer is None and not checked:
        raise InvalidValueError("the search phase needs `targets` or a `regularizer`, but got "
                                "neither")
    if regularizer is not None and not callable(regularizer):
        raise InvalidTypeError(f"`regularizer` must be callable, but got {regularizer!r}")
    loss_fn = loss_fn or F.cross_entropy
    if config.early_stopping is not None:
        _check_monitor(config.early_stopping.monitor, search, val_data)
    was_training, cost_mode = search.training, search.cost_mode
    grads = [p.requires_grad for p in search.arch_parameters()]
    try:
        run, ckpt, key, stopper = _start(
            FitRun(search, train_data, val_data, loss_fn, checked, config, regularizer,
                   resolve_device(config.device, search), None, test_data),
            Checkpoint(checkpoint, trust=bool(trust_checkpoint)), dict(resume_key or {}))
        return _fit(run, ckpt, key, stopper)
    finally:
        search.train(was_training)
        search.cost_mode = cost_mode
        for p, g in zip(search.arch_parameters(), grads, strict=True):
            p.requires_grad_(g)


def _fit(run: FitRun, ckpt: Checkpoint, key: dict[str, Any],
         stopper: EarlyStopping | None) -> FitResult:
    config, schedule = run.config, run.schedule
    resumed_from = run.saved_epoch
    epochs_this_call = 0
    while run.epoch < schedule.total:
        if config.stop_after is not None and epochs_this_call >= config.stop_after:
            break
        phase, e, n = schedule.position(run.epoch)
        if run.phase_done.get(phase):
            run.epoch = schedule.end(phase)
            continue
        run.enter(phase)
        row = train_epoch(run, phase, e, n)
        epochs_this_call += 1
        run.epoch += 1
        if _stops_early(run, stopper, row, phase) or run.epoch == schedule.end(phase):
            run.finish(phase)
            run.epoch = schedule.end(phase)
        if config.lines and is_rank0():
            print(_epoch_line(row, run.absolute_targets(), schedule.total), flush=True)
        if config.on_epoch_end is not None:
            config.on_epoch_end(row, run.search)
        if is_rank0():
            ckpt.save(run.state(stopper), key)
        run.saved_epoch = run.epoch
    return _result(run, resumed_from)


def _start(run: FitRun, ckpt: Checkpoint, extra_key: dict[str, Any]
           ) -> tuple[FitRun, Checkpoint, dict[str, Any], EarlyStopping | None]:
    """The run on its device with its resume key and state: restored from the checkpoint
    when it holds this run (``run.saved_epoch`` then says after which epoch), else seeded."""
    search, config = run.search, run.config
    if run.device.type == "cpu" and config.precision == "fp16":
        warnings.warn("precision 'fp16' on the CPU has no fast kernels (tens of times slower "
                      "than fp32 here); use 'bf16' on the CPU", stacklevel=4)
    search.to(run.device)
    search.cost_mode = config.cost_mode
    run.checkpoint_path = ckpt.path
    key = make_resume_key(settings=config.fingerprint(), targets=run.targets, search=search,
                          train_data=run.train_data, val_data=run.val_data,
                          loss_fn=run.loss_fn, regularizer=run.regularizer,
                          world_size=world_size(), extra=extra_key,
                          model=start_fingerprint(search, ckpt.path))
    stopper = copy.deepcopy(config.early_stopping)
    state = ckpt.load(key)
    if state is not None:
        run.restore(state, stopper)
        if config.lines and is_rank0():
            more = (f"; extending the finished run by {run.extended_by} fine-tune epoch(s)"
                    if run.extended_by else "")
            print(f"resumed from epoch {run.epoch} of {run.schedule.total} "
                  f"({ckpt.path}){more}", flush=True)
    elif config.seed is not None:
        # Under torch.distributed each rank draws its own gate noise (seed + rank);
        # DistributedDataParallel broadcasts rank 0's weights and gates at the start.
        _seed_all(config.seed + rank())
    return run, ckpt, key, stopper


def _stops_early(run: FitRun, stopper: EarlyStopping | None, row: dict[str, Any],
                 phase: str) -> bool:
    """Early stopping of the warm-up and fine-tune phases: True when ``phase`` ends now;
    then the best weights are put back (``restore_best``) and the row says so."""
    if stopper is None or phase not in ("warmup", "finetune"):
        return False
    if stopper.monitor not in row:
        raise InvalidValueError(
            f"early stopping monitors {stopper.monitor!r}, but the history has no such "
            f"column (it has {', '.join(map(str, row))})")
    model = run.current_model(phase)
    early = stopper.step(row[stopper.monitor], model)
    if not (early or run.epoch == run.schedule.end(phase)):
        return False
    stopper.restore(model)
    row["restored_best"] = stopper.best_state is not None and stopper.restore_best
    if early and run.config.lines and is_rank0():
        kept = (f"; the best epoch's weights are restored ({stopper.monitor} "
                f"{stopper.best:.4f})" if row["restored_best"] else "")
        done = row["epoch"] + 1 - run.schedule.bounds()[phase][0]
        print(f"early stopping ends the {phase} after {done} epoch(s): {stopper.monitor} "
              f"did not improve for {stopper.patience}{kept}", flush=True)
    stopper.reset()
    return True


def _result(run: FitRun, resumed_from: int | None) -> FitResult:
    """The FitResult of a run; a TargetsNotMetWarning when the exported model misses one."""
    finished = run.epoch >= run.schedule.total
    before: dict[str, float | None] = {}
    after: dict[str, float | None] = {}
    if finished:
        run.ensure_exported()
        assert run.exported is not None
        if run.baseline is None:  # a warm-up-only fit: the search model is the unpruned one
            run.baseline = run.accuracies(run.search, gates="off")
        before, after = run.baseline, run.accuracies(run.exported)
    costs = run.search.costs()
    absolute = run.absolute_targets()
    met = {name: costs.get(name, math.inf) <= value for name, value in absolute.items()}
    if finished and not all(met.values()):
        missed = ", ".join(f"{k} {costs.get(k, math.nan):,.0f} > target {absolute[k]:,.0f}"
                           for k, ok in met.items() if not ok)
        warnings.warn(f"the exported model does not meet its cost targets: {missed} (see "
                      "search.summary(by='group') for what could not be pruned)",
                      TargetsNotMetWarning, stacklevel=4)
    return FitResult(run.search, run.exported if finished else None,
                     pd.DataFrame(run.history), costs, absolute, finished, met, resumed_from,
                     before.get("val"), after.get("val"), before.get("test"),
                     after.get("test"))


def _epoch_line(row: Mapping[str, Any], targets: Mapping[str, float], total: int) -> str:
    parts = [f"[{row['phase']}] epoch {row['epoch'] + 1}/{total}", f"loss {row['loss']:.4f}"]
    if "val_accuracy" in row:
        parts.append(f"val acc {row['val_accuracy']:.4f}")
    for name, target in targets.items():
        value = row.get(f"cost_{name}")
        if value is not None:
            parts.append(f"{name} {value:,.0f}/{target:,.0f}")
    return "  ".join(parts)
