"""The state under :func:`hwnas.fit`: phase bounds, the step guard, one run's state.

- :class:`PhaseSchedule`: which epochs are warm-up, search and fine-tune.
- :class:`StepGuard`: stops at the first non-finite loss or gradient, or a loss that grows
  by orders of magnitude (divergence), before the optimizer step applies it.
- :class:`FitRun`: the mutable state of one ``fit`` call (optimizer, regularizer, history,
  exported model); what a checkpoint saves and restores. One epoch of training is
  :func:`hwnas.training.loop.train_epoch`.

The public entry point is :func:`hwnas.fit`; nothing here is part of ``hwnas.__all__``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils.data.distributed
from torch import nn

from hwnas._internal.devices import autocast, grad_scaler
from hwnas._internal.modes import eval_mode
from hwnas.errors import CheckpointError, HwnasError, InvalidValueError, TrainingError
from hwnas.regularizers import DUCCIO
from hwnas.regularizers.protocol import Stateful
from hwnas.search import SearchModel
from hwnas.training.checkpoint import (
    check_model_state,
    loader_generator_state,
    rng_state,
    set_loader_generator_state,
    set_rng_state,
)
from hwnas.training.distributed import broadcast_buffers, is_distributed
from hwnas.training.evaluation import (
    evaluate,
    metrics,
    recalibrate_batchnorm_,
)

if TYPE_CHECKING:
    from hwnas.training.config import EarlyStopping, FitConfig

__all__ = ["PHASES", "FitRun", "PhaseSchedule", "StepGuard", "make_optimizer"]

PHASES = ("warmup", "search", "finetune")


@dataclass(frozen=True)
class PhaseSchedule:
    """Epoch bounds of the three phases (global epoch numbers, end exclusive).

    Example:
        >>> s = PhaseSchedule(2, 3, 1)
        >>> s.bounds()["search"], s.position(3), s.total
        ((2, 5), ('search', 1, 3), 6)
    """

    warmup: int
    search: int
    finetune: int

    @property
    def total(self) -> int:
        return self.warmup + self.search + self.finetune

    def bounds(self) -> dict[str, tuple[int, int]]:
        a = self.warmup
        b = a + self.search
        return {"warmup": (0, a), "search": (a, b), "finetune": (b, b + self.finetune)}

    def end(self, phase: str) -> int:
        return self.bounds()[phase][1]

    def position(self, epoch: int) -> tuple[str, int, int]:
        """(phase, epoch within the phase, epochs of the phase) of a global epoch."""
        for phase, (lo, hi) in self.bounds().items():
            if lo <= epoch < hi:
                return phase, epoch - lo, hi - lo
        raise InvalidValueError(f"epoch {epoch} is past the last epoch ({self.total})")


class StepGuard:
    """Checks every training step's loss and gradient before the optimizer applies them.

    A step fails when the loss or the gradient norm is NaN or infinite, or when the loss
    exceeds ``factor`` times the reference loss: the larger of the first loss of the run
    and the first loss of the current phase (so a search phase that starts higher, with
    its regularizer, is judged against its own start). The loss check reads the value
    the loop reads anyway for its statistics; the gradient check is one fused ``foreach``
    norm over the gradients.
    """

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.first: float | None = None
        self.phase_first: dict[str, float] = {}

    def reference(self, phase: str) -> float:
        return max(self.first or 0.0, self.phase_first.get(phase, 0.0))

    def check_loss(self, value: float, phase: str) -> str | None:
        """A description of what is wrong with this loss value, or None."""
        if not math.isfinite(value):
            grew = ""
            if self.first is not None:
                grew = f" (the loss was {self.reference(phase):.4g} at the start)"
            return f"the loss is {value}{grew}"
        if self.first is None or self.first <= 0:
            self.first = value
        if self.phase_first.get(phase, 0.0) <= 0:
            self.phase_first[phase] = value
        reference = self.reference(phase)
        if self.factor is not None and reference > 0 and value > self.factor * reference:
            return (f"the training diverged: the loss is {value:.4g}, more than "
                    f"{self.factor:g}x the loss at the start ({reference:.4g})")
        return None

    @staticmethod
    def norm(params: list[torch.Tensor]) -> torch.Tensor:
        """The 2-norm of all gradients as a 0-d tensor on their device (one fused foreach
        norm; nothing is read back to the host)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.float64,
                               device=params[0].device if params else None)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).double()

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "phase_first": dict(self.phase_first)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.first, self.phase_first = state["first"], dict(state["phase_first"])


def make_optimizer(params_w: Iterable[nn.Parameter], params_a: Iterable[nn.Parameter],
                   config: FitConfig) -> torch.optim.Optimizer:
    """Adam (AdamW with weight decay) over the weights; the gates in their own group with
    their own learning rate and no weight decay.

    The fused implementation (one kernel per parameter group and step) where every
    parameter is a CPU or CUDA floating-point tensor: the step of a small network is
    launch-bound on a GPU, and a for-loop Adam costs several kernels per parameter
    (``reports/gpu.md``)."""
    weights, arch = list(params_w), list(params_a)
    groups: list[dict[str, Any]] = [{"params": weights, "lr": config.lr,
                                     "weight_decay": config.weight_decay}]
    if arch:
        groups.append({"params": arch, "lr": config.arch_lr, "weight_decay": 0.0})
    params = weights + arch
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                 for p in params) and len({p.device for p in params}) == 1
    kind = torch.optim.AdamW if config.weight_decay else torch.optim.Adam
    return kind(groups, fused=fused or None)


class FitRun:
    """Mutable state of one fit() call; ``epoch`` is the number of finished epochs."""

    def __init__(self, search: SearchModel, train_data: Iterable, val_data: Iterable | None,
                 loss_fn: Callable, targets: Mapping[str, float], config: FitConfig,
                 regularizer: Callable[..., torch.Tensor] | None, device: torch.device,
                 checkpoint_path: Path | None, test_data: Iterable | None = None) -> None:
        self.search = search
        self.train_data, self.val_data, self.test_data = train_data, val_data, test_data
        self.loss_fn, self.targets, self.config = loss_fn, dict(targets), config
        self.regularizer = regularizer
        self.device = device
        self.schedule = PhaseSchedule(config.warmup_epochs, config.search_epochs,
                                      config.finetune_epochs)
        self.guard = StepGuard(config.divergence_factor)
        self.checkpoint_path = checkpoint_path
        self.saved_epoch: int | None = None
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.start_loss: float | None = None
        self.phase_done: dict[str, bool] = {}
        self.exported: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_phase: str | None = None
        self.ddp: nn.Module | None = None
        self.ddp_phase: str | None = None
        #: Scales the loss under fp16 autocast (a no-op otherwise).
        self.scaler = grad_scaler(device, config.precision)
        #: Fine-tune epochs added to a finished run by this call (0: none).
        self.extended_by = 0
        #: Accuracies of the unpruned model when the warm-up ended ("val", "test").
        self.baseline: dict[str, float | None] | None = None

    # -- phases --------------------------------------------------------------------------
    def current_model(self, phase: str) -> nn.Module:
        if phase == "finetune":
            self.ensure_exported()
            assert self.exported is not None
            return self.exported
        return self.search

    def enter(self, phase: str) -> None:
        if self.search.precision is not None:  # quantiser ranges from data, once a phase
            self.search.precision.prepare(phase, self.search, self.train_data, self.device)
        if phase != "warmup" and self.baseline is None:
            self.baseline = self.accuracies(self.search, gates="off")
        if self.optimizer_phase != phase:
            self.optimizer = self.new_optimizer(phase)
            self.optimizer_phase = phase
        if self.ddp_phase != phase:
            self.ddp = self.wrap_ddp(phase)
            self.ddp_phase = phase
        if phase == "search" and self.regularizer is None:
            self.regularizer = DUCCIO(self.targets, task_loss=self.task_loss_reference())

    def wrap_ddp(self, phase: str) -> nn.Module | None:
        """A DistributedDataParallel view of this phase's model (None when not distributed).

        The gates take part only in the search phase: they are frozen (no gradient) in the
        other phases so DDP needs no ``find_unused_parameters``.
        """
        for p in self.search.arch_parameters():
            p.requires_grad_(phase == "search")
        if not is_distributed():
            return None
        from torch.nn.parallel import DistributedDataParallel

        model = self.current_model(phase)
        # resolve_device gave a CUDA device its index: each rank its own cuda:LOCAL_RANK
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def task_loss_reference(self) -> float:
        """L_task(theta_0) of DUCCIO's Eq. 13: the task loss at the start of the search.

        Measured over the training data with the gates on and sampled as in training
        (BatchNorm in eval mode, no gradient). The converged warm-up loss of a small
        model can be near zero, which would make every strength too weak to move a
        gate; the loss with the gates on is the loss the search actually starts from.
        """
        if self.start_loss is not None:
            return self.start_loss
        with self.guarded("measuring the task loss at the start of the search", "search"), \
                eval_mode(self.search), autocast(self.device, self.config.precision):
            loss = metrics(partial(self.search, gates="sample"), self.train_data,
                           self.loss_fn, self.device, what="train_data")["loss"]
        if not math.isfinite(loss):
            raise self.failure(f"the task loss at the start of the search is {loss}",
                               "search", self.epoch)
        self.start_loss = loss
        return loss

    def new_optimizer(self, phase: str) -> torch.optim.Optimizer:
        if phase == "finetune":
            return make_optimizer(self.current_model(phase).parameters(), (), self.config)
        arch = self.search.arch_parameters() if phase == "search" else ()
        return make_optimizer(self.search.weight_parameters(), arch, self.config)

    def finish(self, phase: str) -> None:
        self.phase_done[phase] = True
        if phase != "search":
            return
        row = self.history[-1]
        targets = self.absolute_targets()
        gated = any(True for _ in self.search.arch_parameters())  # else nothing to close
        if self.config.enforce_targets and targets and gated:
            row["closed_by_projection"] = self.search.enforce_targets_(targets)
            row.update({f"cost_{k}": v for k, v in self.search.costs().items()})
        if self.config.recalibrate_bn:
            with self.guarded("recalibrating BatchNorm on the training data", phase):
                recalibrate_batchnorm_(self.search, self.train_data, str(self.device))
            broadcast_buffers(self.search)
            if self.val_data is not None:
                row.update(self.validate(self.search, phase, row["epoch"], {}))

    def ensure_exported(self) -> None:
        if self.exported is None:
            with eval_mode(self.search):
                self.exported = self.search.export().to(self.device)

    def absolute_targets(self) -> dict[str, float]:
        if self.targets:
            return dict(self.targets)
        return dict(self.regularizer.targets) if isinstance(self.regularizer, DUCCIO) else {}

    # -- failures ------------------------------------------------------------------------
    def failure(self, what: str, phase: str, epoch: int, step: int | None = None,
                hint: str = "") -> TrainingError:
        """A TrainingError naming the phase, epoch and step, and what was kept."""
        _, e, n = self.schedule.position(epoch)
        where = (f"training stopped in the {phase} phase, epoch {epoch + 1} of "
                 f"{self.schedule.total} ({phase} epoch {e + 1} of {n})")
        if step is not None:
            where += f", step {step + 1}"
        if self.checkpoint_path is None:
            kept = "no checkpoint was asked for"
        elif self.saved_epoch is None:
            kept = f"no checkpoint was written by this call ({str(self.checkpoint_path)!r})"
        else:
            kept = (f"the last good checkpoint (after epoch {self.saved_epoch}) is kept in "
                    f"{str(self.checkpoint_path)!r}")
        hint = hint or f"lower the learning rate (lr={self.config.lr:g}, " \
                       f"arch_lr={self.config.arch_lr:g})"
        return TrainingError(f"{where}: {what}; {hint}; {kept}; no model was exported")

    @contextlib.contextmanager
    def guarded(self, what: str, phase: str) -> Iterator[None]:
        """An error of the user's model, data or loss while ``what`` becomes a TrainingError
        that names the phase, the epoch and ``what`` (hwnas's own errors pass as they are)."""
        try:
            yield
        except HwnasError:
            raise
        except Exception as err:
            raise self.failure(f"{what} raised {type(err).__name__}: {err}", phase,
                               min(self.epoch, self.schedule.total - 1),
                               hint="check that the data fit the model and the loss") from err

    def validate(self, model: nn.Module, phase: str, epoch: int,
                 kwargs: Mapping[str, Any]) -> dict[str, float]:
        """``val_loss`` and ``val_accuracy`` of ``model``; a non-finite loss is a failure."""
        assert self.val_data is not None
        try:
            out = evaluate(model, self.val_data, self.loss_fn, str(self.device), **kwargs)
        except HwnasError:
            raise
        except Exception as err:
            raise self.failure(f"the validation raised {type(err).__name__}: {err}", phase,
                               epoch, hint="check that the validation data fit the model and "
                                           "the loss") from err
        if not math.isfinite(out["loss"]):
            raise self.failure(f"the validation loss is {out['loss']}", phase, epoch,
                               hint="check the model and the validation data for NaN or "
                                    "infinite values")
        return {f"val_{k}": v for k, v in out.items()}

    def accuracies(self, model: nn.Module, **kwargs: Any) -> dict[str, float | None]:
        """Accuracy of ``model`` on the validation and test data (None where there is no
        such data or the targets are not class indices). The test data is only reported,
        never chosen on."""
        out: dict[str, float | None] = {}
        # a loader draws its base seed from the global generator: reporting must not move it
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for name, data in (("val", self.val_data), ("test", self.test_data)):
                found = None if data is None else evaluate(model, data, self.loss_fn,
                                                           str(self.device), **kwargs)
                out[name] = None if found is None else found.get("accuracy")
        return out

    # -- checkpoints ---------------------------------------------------------------------
    def state(self, stopper: EarlyStopping | None) -> dict[str, Any]:
        reg = self.regularizer
        return {
            "epoch": self.epoch,
            "search": self.search.state_dict(),
            "exported": None if self.exported is None else self.exported.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "optimizer_phase": self.optimizer_phase,
            "regularizer": reg.state_dict() if isinstance(reg, Stateful) else None,
            "stopper": None if stopper is None else stopper.state_dict(),
            "guard": self.guard.state_dict(),
            "history": self.history,
            "start_loss": self.start_loss,
            "phase_done": self.phase_done,
            "scaler": self.scaler.state_dict(),
            "baseline": self.baseline,
            "finetune_epochs": self.schedule.finetune,
            "rng": rng_state(),
            "loader_rng": loader_generator_state(self.train_data),
        }

    def _extend_finetune(self, saved: int) -> None:
        """A run resumed with more fine-tune epochs than it had continues its fine-tuning;
        fewer cannot be resumed."""
        wanted = self.schedule.finetune
        if wanted < saved:
            raise CheckpointError(
                f"checkpoint {str(self.checkpoint_path)!r} holds a run of {saved} fine-tune "
                f"epochs; this call asks for {wanted}: a run can be extended, not shortened; "
                "start over with --fresh (hwnas search) or remove the file")
        if wanted > saved and self.phase_done.get("finetune"):
            self.phase_done["finetune"] = False
            self.epoch = self.saved_epoch = self.schedule.end("search") + saved
            self.extended_by = wanted - saved

    def restore(self, state: Mapping[str, Any], stopper: EarlyStopping | None) -> None:
        check_model_state(self.search, state["search"], self.checkpoint_path)
        self.search.load_state_dict(state["search"])
        self.epoch = self.saved_epoch = state["epoch"]
        self.history = list(state["history"])
        self.start_loss = state["start_loss"]
        self.phase_done = dict(state["phase_done"])
        self.baseline = state.get("baseline")
        self._extend_finetune(state["finetune_epochs"])
        self.guard.load_state_dict(state["guard"])
        if state["exported"] is not None:
            self.ensure_exported()
            assert self.exported is not None
            self.exported.load_state_dict(state["exported"])
        if state["regularizer"] is not None:
            if self.regularizer is None:
                self.regularizer = DUCCIO(self.targets, task_loss=self.task_loss_reference())
            if isinstance(self.regularizer, Stateful):
                self.regularizer.load_state_dict(state["regularizer"])
        if state["optimizer_phase"] is not None and state["optimizer"] is not None:
            phase = state["optimizer_phase"]
            self.optimizer = self.new_optimizer(phase)
            self.optimizer.load_state_dict(state["optimizer"])
            self.optimizer_phase = phase
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if stopper is not None and state.get("stopper") is not None:
            stopper.load_state_dict(state["stopper"])
        set_rng_state(state["rng"])
        set_loader_generator_state(self.train_data, state.get("loader_rng"))
