"""Settings of :func:`hwnas.fit`: :class:`FitConfig` and :class:`EarlyStopping`.

Frozen dataclasses checked in ``__post_init__``; the command line's schema builds its
``FitConfig`` from these defaults (one source of defaults) without importing the loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from torch import nn

from hwnas._internal.checks import check_bool, check_int, check_number
from hwnas._internal.devices import check_device, check_precision
from hwnas.errors import InvalidTypeError, InvalidValueError
from hwnas.search.model import DEFAULT_COST_MODE

if TYPE_CHECKING:
    from hwnas.search.model import SearchModel

__all__ = ["EarlyStopping", "FitConfig"]


@dataclass
class EarlyStopping:
    """Stop a phase when a validation metric stops improving.

    Args:
        patience: Epochs without improvement before stopping (an integer >= 1).
        min_delta: Smallest change that counts as an improvement (>= 0).
        restore_best: Put back the weights of the best epoch when the phase ends.
        monitor: History column to watch: ``"val_accuracy"`` (higher is better, needs
            class-index targets) or ``"val_loss"`` (lower is better); also ``"loss"``,
            ``"task_loss"``, ``"train_accuracy"``. :func:`hwnas.fit` checks before training
            that the column will exist.

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
        check_int("patience", self.patience, 1)
        check_number("min_delta", self.min_delta, 0.0, inclusive=True)
        check_bool("restore_best", self.restore_best)
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
        progress: ``True``: tqdm progress bars and one line per epoch; ``"lines"``: the
            lines without the bars (logs, the command line's ``--no-progress``);
            ``False``: nothing.
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
    cost_mode: str = DEFAULT_COST_MODE
    enforce_targets: bool = True
    recalibrate_bn: bool = True
    divergence_factor: float | None = 1e3
    seed: int | None = 0
    device: str | None = None
    precision: str = "fp32"
    progress: bool | str = True
    stop_after: int | None = None
    on_epoch_end: Callable[[dict[str, Any], SearchModel], None] | None = None

    def __post_init__(self) -> None:
        for name in ("warmup_epochs", "search_epochs", "finetune_epochs"):
            check_int(name, getattr(self, name), 0)
        check_number("lr", self.lr, 0.0, inclusive=False)
        check_number("arch_lr", self.arch_lr, 0.0, inclusive=False)
        check_number("weight_decay", self.weight_decay, 0.0, inclusive=True)
        if self.early_stopping is not None and not isinstance(self.early_stopping,
                                                              EarlyStopping):
            raise InvalidTypeError(f"`early_stopping` must be an EarlyStopping or None, but "
                                   f"got {self.early_stopping!r}")
        if self.cost_mode not in ("expected", "straight_through"):
            raise InvalidValueError(
                f"`cost_mode` must be 'expected' or 'straight_through', but got {self.cost_mode!r}"
            )
        for name in ("enforce_targets", "recalibrate_bn"):
            check_bool(name, getattr(self, name))
        if not (isinstance(self.progress, bool) or self.progress == "lines"):
            raise InvalidTypeError(f"`progress` must be True, False or 'lines', but got "
                                   f"{self.progress!r}")
        if self.divergence_factor is not None:
            check_number("divergence_factor", self.divergence_factor, 1.0, inclusive=False)
        if self.seed is not None and (not isinstance(self.seed, int)
                                      or isinstance(self.seed, bool)):
            raise InvalidTypeError(f"`seed` must be an integer or None, but got {self.seed!r}")
        check_device(self.device)
        check_precision(self.precision)
        if self.stop_after is not None:
            check_int("stop_after", self.stop_after, 1)
        if self.on_epoch_end is not None and not callable(self.on_epoch_end):
            raise InvalidTypeError(f"`on_epoch_end` must be callable or None, but got "
                                   f"{self.on_epoch_end!r}")

    @property
    def bars(self) -> bool:
        """Whether tqdm progress bars are shown."""
        return self.progress is True

    @property
    def lines(self) -> bool:
        """Whether one line per epoch (and the resume notice) is printed."""
        return self.progress is not False

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.search_epochs + self.finetune_epochs

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the result (what a checkpoint must agree on)."""
        # fine-tune epochs may grow: a finished run is extended (the checkpoint checks it)
        skip = {"progress", "stop_after", "device", "on_epoch_end", "early_stopping",
                "finetune_epochs"}
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                               if f.name not in skip}
        es = self.early_stopping
        out["early_stopping"] = None if es is None else (
            f"patience={es.patience}, min_delta={es.min_delta:g}, monitor={es.monitor}, "
            f"restore_best={es.restore_best}")
        return out
