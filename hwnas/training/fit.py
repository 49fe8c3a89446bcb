"""The search loop: warm-up, search, fine-tune; early stopping; checkpoints; history.

:func:`fit` is the entry point; :class:`FitConfig` its settings, :class:`FitResult` what it
returns. The state of one run and one epoch live in :mod:`hwnas.training.loop`, checkpoints and
the resume key in :mod:`hwnas.training.checkpoint`, evaluation in :mod:`hwnas.training.evaluation` and the
torch.distributed helpers in :mod:`hwnas.training.distributed` (``evaluate``,
``recalibrate_batchnorm_`` and ``shard_loader`` are re-exported here). DESIGN.md puts all
of these in ``train.py``; they are split by job so that each module stays small (under
about 600 lines) and ``FitRun``, the state of one run, under about 300.

What ``fit`` checks for you: the loss and the gradient norm of every step are finite and
the loss does not grow by orders of magnitude (else a :class:`~hwnas.errors.TrainingError`
naming the phase, epoch and step; the last good checkpoint is kept, no model is exported);
empty loaders are errors before training; a checkpoint is resumed only by the run that made
it; the SearchModel's train/eval mode, ``cost_mode`` and gate ``requires_grad`` are
restored when ``fit`` returns or raises; unmet cost targets are reported in
:attr:`FitResult.met` and by a :class:`TargetsNotMetWarning`.

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
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from hwnas._internal.devices import check_device, check_precision, resolve_device
from hwnas.training.checkpoint import Checkpoint
from hwnas.training.checkpoint import resume_key as make_resume_key
from hwnas.training.distributed import is_rank0, rank, shard_loader, world_size
from hwnas.errors import (
    CheckpointError,
    InvalidTypeError,
    InvalidValueError,
    UnknownNameError,
)
from hwnas.training.evaluation import evaluate, recalibrate_batchnorm_
from hwnas.training.loop import FitRun, PhaseSchedule
from hwnas.search import SearchModel

__all__ = [
    "CheckpointError",
    "EarlyStopping",
    "FitConfig",
    "FitResult",
    "PhaseSchedule",
    "TargetsNotMetWarning",
    "evaluate",
    "fit",
    "recalibrate_batchnorm_",
    "relative_targets",
    "shard_loader",
]


class TargetsNotMetWarning(UserWarning):
    """:func:`fit` finished, but the exported model does not meet every cost target."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int) -> None:
    message = f"`{name}` must be an integer >= {low}, but got {value!r}"
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise InvalidTypeError(message)
    if value < low:
        raise InvalidValueError(message)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidTypeError(f"`{name}` must be True or False, but got {value!r}")


def _check_number(name: str, value: Any, low: float, inclusive: bool) -> None:
    if not _is_number(value):
        raise InvalidTypeError(f"`{name}` must be a number, but got {value!r}")
    ok = value >= low if inclusive else value > low
    if not (math.isfinite(value) and ok):
        raise InvalidValueError(f"`{name}` must be a finite number {'>=' if inclusive else '>'} "
                                f"{low:g}, but got {value!r}")


@dataclass
class EarlyStopping:
    """Stop a phase when a validation metric stops improving.

    Args:
        patience: Epochs without improvement before stopping (an integer >= 1).
        min_delta: Smallest change that counts as an improvement (>= 0).
        restore_best: Put back the weights of the best epoch when the phase ends.
        monitor: History column to watch: ``"val_accuracy"`` (higher is better) or
            ``"val_loss"`` (lower is better); any column, "loss" in its name means lower.

    Example:
        >>> stop = EarlyStopping(patience=2)
        >>> [stop.step(v, None) for v in (0.5, 0.6, 0.6, 0.59)]
        [False, False, False, True]
    """

    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True
    monitor: str = "val_accuracy"
    best: float | None = field(default=None, init=False)
    bad_epochs: int = field(default=0, init=False)
    best_state: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_int("patience", self.patience, 1)
        _check_number("min_delta", self.min_delta, 0.0, inclusive=True)
        _check_bool("restore_best", self.restore_best)
        if not isinstance(self.monitor, str) or not self.monitor:
            raise InvalidTypeError(f"`monitor` must be a history column name, but got "
                                   f"{self.monitor!r}")

    @property
    def lower_is_better(self) -> bool:
        return "loss" in self.monitor

    def reset(self) -> None:
        self.best, self.bad_epochs, self.best_state = None, 0, None

    def step(self, value: float, model: nn.Module | None) -> bool:
        """Record this epoch's ``value``; True when the phase should stop."""
        sign = -1.0 if self.lower_is_better else 1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_epochs = value, 0
            if self.restore_best and model is not None:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "best_state": self.best_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.best_state = state["best_state"]


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit`.

    Attributes:
        warmup_epochs: Plain training of the full model (gates bypassed).
        search_epochs: Training with gates and the regularizer. DUCCIO's strengths are
            set from the task loss at the start of the search, measured over the training
            data with the gates on and sampled (see ``FitRun.task_loss_reference``), not
            from the warm-up loss, which can be near zero for a small model.
        finetune_epochs: Training of the exported (pruned) model.
        lr: Learning rate of the weights (Adam).
        arch_lr: Learning rate of the gate logits (Adam, no weight decay).
        weight_decay: Decoupled weight decay of the weights (AdamW), never of the gates.
        early_stopping: Applied to the warm-up and fine-tune phases (needs validation
            data); the search phase follows the regularizer's schedule.
        cost_mode: How the regularizer sees the costs during the search (see
            ``SearchModel.cost``). ``"straight_through"`` (default): the value of the
            exported architecture with the gradient of the expected cost, so a constraint
            stays active until the binarised gates meet it; ``"expected"``: Louizos'
            expected cost, which can meet a target that the binarised gates overshoot.
        enforce_targets: At the end of the search, close the least likely channels until
            the exported costs meet the targets (``SearchModel.enforce_targets_``): the
            relaxed costs can meet a target that the binarised gates overshoot.
        recalibrate_bn: At the end of the search, recompute BatchNorm statistics on the
            training data with the eval-mode gates (:func:`recalibrate_batchnorm_`).
        divergence_factor: A step whose loss exceeds this many times the loss at the
            start (of the run, or of its phase when that is higher) stops the fit as
            diverged; ``None`` turns the check off (non-finite losses still stop it).
        seed: Seeds torch, numpy and random at the start (``None``: leave them).
        device: Where to train: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or any torch device string; ``None`` (default): where
            the model is. The search model is moved there; a device this machine does not
            have is an error, never a silent fallback.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the forward pass and the
            loss of every training step run under ``torch.autocast`` in that dtype (on
            CUDA and on the CPU); fp16 scales the loss with a gradient scaler. Weights,
            gate logits, costs and the regularizer stay float32; validation and the
            exported model run in the model's own dtype.
        progress: Show tqdm progress bars and one line per epoch.
        stop_after: Stop this call after this many epochs in total (the checkpoint then
            resumes the run); ``None`` runs to the end.
        on_epoch_end: Called as ``on_epoch_end(row, search)`` after every epoch with that
            epoch's history row (a dict).

    Example:
        >>> FitConfig(search_epochs=10).total_epochs
        20
        >>> FitConfig(seed=1.5)
        Traceback (most recent call last):
        ...
        hwnas.errors.InvalidTypeError: `seed` must be an integer or None, but got 1.5
    """

    warmup_epochs: int = 5
    search_epochs: int = 20
    finetune_epochs: int = 5
    lr: float = 1e-3
    arch_lr: float = 0.1
    weight_decay: float = 0.0
    early_stopping: EarlyStopping | None = None
    cost_mode: str = "straight_through"
    enforce_targets: bool = True
    recalibrate_bn: bool = True
    divergence_factor: float | None = 1e3
    seed: int | None = 0
    device: str | None = None
    precision: str = "fp32"
    progress: bool = True
    stop_after: int | None = None
    on_epoch_end: Callable[[dict[str, Any], SearchModel], None] | None = None

    def __post_init__(self) -> None:
        for name in ("warmup_epochs", "search_epochs", "finetune_epochs"):
            _check_int(name, getattr(self, name), 0)
        _check_number("lr", self.lr, 0.0, inclusive=False)
        _check_number("arch_lr", self.arch_lr, 0.0, inclusive=False)
        _check_number("weight_decay", self.weight_decay, 0.0, inclusive=True)
        if self.early_stopping is not None and not isinstance(self.early_stopping,
                                                              EarlyStopping):
            raise InvalidTypeError(f"`early_stopping` must be an EarlyStopping or None, but "
                                   f"got {self.early_stopping!r}")
        if self.cost_mode not in ("expected", "straight_through"):
            raise InvalidValueError(
                f"`cost_mode` must be 'expected' or 'straight_through', but got {self.cost_mode!r}"
            )
        for name in ("enforce_targets", "recalibrate_bn", "progress"):
            _check_bool(name, getattr(self, name))
        if self.divergence_factor is not None:
            _check_number("divergence_factor", self.divergence_factor, 1.0, inclusive=False)
        if self.seed is not None and (not isinstance(self.seed, int)
                                      or isinstance(self.seed, bool)):
            raise InvalidTypeError(f"`seed` must be an integer or None, but got {self.seed!r}")
        check_device(self.device)
        check_precision(self.precision)
        if self.stop_after is not None:
            _check_int("stop_after", self.stop_after, 1)
        if self.on_epoch_end is not None and not callable(self.on_epoch_end):
            raise InvalidTypeError(f"`on_epoch_end` must be callable or None, but got "
                                   f"{self.on_epoch_end!r}")

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.search_epochs + self.finetune_epochs

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the result (what a checkpoint must agree on)."""
        skip = {"progress", "stop_after", "device", "on_epoch_end", "early_stopping"}
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                               if f.name not in skip}
        es = self.early_stopping
        out["early_stopping"] = None if es is None else (
            f"patience={es.patience}, min_delta={es.min_delta:g}, monitor={es.monitor}, "
            f"restore_best={es.restore_best}")
        return out


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
    """

    search: SearchModel
    model: nn.Module | None
    history: pd.DataFrame
    costs: dict[str, float]
    targets: dict[str, float]
    finished: bool
    met: dict[str, bool] = field(default_factory=dict)
    resumed_from: int | None = None

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
        if name not in reference:
            raise UnknownNameError(f"unknown cost {name!r}; known: {', '.join(reference)}")
        if not _is_number(frac):
            raise InvalidTypeError(f"target fraction for {name!r} must be a number, but got "
                                   f"{frac!r}")
        if not (math.isfinite(frac) and frac > 0):
            raise InvalidValueError(f"target fraction for {name!r} must be a finite number "
                                    f"> 0, but got {frac!r}")
        out[name] = float(frac) * reference[name]
    return out


def _check_targets(search: SearchModel, targets: Mapping[str, float] | None) -> dict[str, float]:
    out = {}
    for name, value in (targets or {}).items():
        if name not in search.cost_names:
            raise UnknownNameError(f"unknown cost {name!r}; known: {', '.join(search.cost_names)}")
        if not _is_number(value):
            raise InvalidTypeError(f"target for {name!r} must be a number, but got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise InvalidValueError(f"target for {name!r} must be a finite number > 0, but got "
                                    f"{value!r}")
        out[name] = float(value)
    return out


def _check_loader(name: str, data: Any) -> None:
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise InvalidTypeError(f"`{name}` must be an iterable of (inputs, targets) batches "
                               f"(a DataLoader), but got {type(data).__name__}")
    if isinstance(data, Sized) and len(data) == 0:
        raise InvalidValueError(f"`{name}` is empty (0 batches): nothing to train or "
                                "validate on; check the dataset and the batch size")


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
    if val_data is not None:
        _check_loader("val_data", val_data)
    if config.early_stopping is not None and val_data is None:
        raise InvalidValueError("`config.early_stopping` needs `val_data`, but val_data is None")
    if config.search_epochs and regularizer is None and not checked:
        raise InvalidValueError("the search phase needs `targets` or a `regularizer`, but got "
                                "neither")
    if regularizer is not None and not callable(regularizer):
        raise InvalidTypeError(f"`regularizer` must be callable, but got {regularizer!r}")
    loss_fn = loss_fn or F.cross_entropy
    was_training, cost_mode = search.training, search.cost_mode
    grads = [p.requires_grad for p in search.arch_parameters()]
    try:
        return _fit(search, train_data, val_data, loss_fn, checked, config, regularizer,
                    checkpoint, dict(resume_key or {}))
    finally:
        search.train(was_training)
        search.cost_mode = cost_mode
        for p, g in zip(search.arch_parameters(), grads, strict=True):
            p.requires_grad_(g)


def _fit(search: SearchModel, train_data: Iterable, val_data: Iterable | None,
         loss_fn: Callable, targets: dict[str, float], config: FitConfig,
         regularizer: Callable[..., torch.Tensor] | None, checkpoint: Any,
         extra_key: dict[str, Any]) -> FitResult:
    device = resolve_device(config.device, search)
    if device.type == "cpu" and config.precision == "fp16":
        warnings.warn("precision 'fp16' on the CPU has no fast kernels (tens of times slower "
                      "than fp32 here); use 'bf16' on the CPU", stacklevel=3)
    search.to(device)
    search.cost_mode = config.cost_mode
    key = make_resume_key(settings=config.fingerprint(), targets=targets, search=search,
                     train_data=train_data, val_data=val_data, loss_fn=loss_fn,
                     regularizer=regularizer, world_size=world_size(), extra=extra_key)
    ckpt = Checkpoint(checkpoint)
    stopper = copy.deepcopy(config.early_stopping)
    run = FitRun(search, train_data, val_data, loss_fn, targets, config, regularizer, device,
                 ckpt.path)
    state = ckpt.load(key)
    resumed_from = None
    if state is not None:
        run.restore(state, stopper)
        resumed_from = run.epoch
        if config.progress and is_rank0():
            print(f"resumed from epoch {run.epoch} of {config.total_epochs} "
                  f"({ckpt.path})", flush=True)
    elif config.seed is not None:
        # Under torch.distributed each rank draws its own gate noise (seed + rank);
        # DistributedDataParallel broadcasts rank 0's weights and gates at the start.
        _seed_all(config.seed + rank())

    epochs_this_call = 0
    schedule = run.schedule
    while run.epoch < schedule.total:
        if config.stop_after is not None and epochs_this_call >= config.stop_after:
            break
        phase, e, n = schedule.position(run.epoch)
        if run.phase_done.get(phase):
            run.epoch = schedule.end(phase)
            continue
        run.enter(phase)
        row = run.train_epoch(phase, e, n)
        epochs_this_call += 1
        run.epoch += 1
        stops = stopper is not None and phase in ("warmup", "finetune")
        stop = False
        if stops:
            assert stopper is not None
            if stopper.monitor not in row:
                raise InvalidValueError(
                    f"early stopping monitors {stopper.monitor!r}, but the history has no "
                    f"such column (it has {', '.join(map(str, row))})")
            stop = stopper.step(row[stopper.monitor], run.current_model(phase))
        if stop or run.epoch == schedule.end(phase):
            if stops:
                assert stopper is not None
                stopper.restore(run.current_model(phase))
                row["restored_best"] = stopper.best_state is not None and stopper.restore_best
                stopper.reset()
            run.finish(phase)
            run.epoch = schedule.end(phase)
        if config.progress and is_rank0():
            print(_epoch_line(row, run.absolute_targets()), flush=True)
        if config.on_epoch_end is not None:
            config.on_epoch_end(row, search)
        if is_rank0():
            ckpt.save(run.state(stopper), key)
        run.saved_epoch = run.epoch
    finished = run.epoch >= schedule.total
    if finished:
        run.ensure_exported()
    costs = search.costs()
    absolute = run.absolute_targets()
    met = {name: costs.get(name, math.inf) <= value for name, value in absolute.items()}
    if finished and not all(met.values()):
        missed = ", ".join(f"{k} {costs.get(k, math.nan):,.0f} > target {absolute[k]:,.0f}"
                           for k, ok in met.items() if not ok)
        warnings.warn(f"the exported model does not meet its cost targets: {missed} (see "
                      "search.summary(by='group') for what could not be pruned)",
                      TargetsNotMetWarning, stacklevel=3)
    return FitResult(search, run.exported if finished else None, pd.DataFrame(run.history),
                     costs, absolute, finished, met, resumed_from)


def _epoch_line(row: Mapping[str, Any], targets: Mapping[str, float]) -> str:
    parts = [f"[{row['phase']}] epoch {row['epoch'] + 1}", f"loss {row['loss']:.4f}"]
    if "val_accuracy" in row:
        parts.append(f"val acc {row['val_accuracy']:.4f}")
    for name, target in targets.items():
        value = row.get(f"cost_{name}")
        if value is not None:
            parts.append(f"{name} {value:,.0f}/{target:,.0f}")
    return "  ".join(parts)
