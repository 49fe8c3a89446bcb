"""The search loop: warm-up, search, fine-tune; early stopping; checkpoints; history.

Weight decay and gates: the optimizer puts the gate logits (``log_alpha``) in their own
parameter group with no weight decay. Decay pulls every logit toward 0, i.e. every gate
toward P(open) = 0.5, a bias unrelated to the costs or the task that would keep
channels half-open and fight the cost targets.
"""

from __future__ import annotations

import copy
import io
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torch.utils.data.distributed
from torch import nn

from hwnas.errors import CheckpointError
from hwnas.regularizers import DUCCIO
from hwnas.search import SearchModel

__all__ = [
    "CheckpointError",
    "EarlyStopping",
    "FitConfig",
    "FitResult",
    "evaluate",
    "fit",
    "recalibrate_batchnorm_",
    "relative_targets",
    "shard_loader",
]

PHASES = ("warmup", "search", "finetune")
_CHECKPOINT_VERSION = 1


@dataclass
class EarlyStopping:
    """Stop a phase when a validation metric stops improving.

    Args:
        patience: Epochs without improvement before stopping (>= 1).
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
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"`patience` must be an integer >= 1, but got {self.patience!r}")
        if not self.min_delta >= 0:
            raise ValueError(f"`min_delta` must be >= 0, but got {self.min_delta!r}")

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
        warmup_epochs: Plain training of the full model (gates bypassed); its last epoch's
            mean task loss sets DUCCIO's strengths.
        search_epochs: Training with gates and the regularizer.
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
        seed: Seeds torch, numpy and random at the start (``None``: leave them).
        device: ``"cpu"``, ``"cuda"``, ... (``None``: where the model is).
        progress: Show tqdm progress bars.
        stop_after: Stop this call after this many epochs in total (the checkpoint then
            resumes the run); ``None`` runs to the end.
        on_epoch_end: Called as ``on_epoch_end(row, search)`` after every epoch with that
            epoch's history row (a dict).
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
    seed: int | None = 0
    device: str | None = None
    progress: bool = True
    stop_after: int | None = None
    on_epoch_end: Callable[[dict[str, Any], SearchModel], None] | None = None

    def __post_init__(self) -> None:
        for name in ("warmup_epochs", "search_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0, but got {value!r}")
        for name in ("lr", "arch_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"`{name}` must be a number > 0, but got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"`weight_decay` must be >= 0, but got {self.weight_decay!r}")
        if self.cost_mode not in ("expected", "straight_through"):
            raise ValueError(
                f"`cost_mode` must be 'expected' or 'straight_through', but got {self.cost_mode!r}"
            )
        if self.stop_after is not None and (not isinstance(self.stop_after, int)
                                            or self.stop_after < 1):
            raise ValueError(f"`stop_after` must be an integer >= 1, but got {self.stop_after!r}")

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.search_epochs + self.finetune_epochs


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
    """

    search: SearchModel
    model: nn.Module | None
    history: pd.DataFrame
    costs: dict[str, float]
    targets: dict[str, float]
    finished: bool


def relative_targets(search: SearchModel, fractions: Mapping[str, float]) -> dict[str, float]:
    """Absolute targets from fractions of the unpruned model's costs.

    Example:
        >>> import torch, hwnas
        >>> from torch import nn
        >>> s = hwnas.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        ...                torch.randn(1, 4))
        >>> relative_targets(s, {"params": 0.5})
        {'params': 29.0}
    """
    reference = search.reference_costs()
    out = {}
    for name, frac in fractions.items():
        if name not in reference:
            raise KeyError(f"unknown cost {name!r}; known: {', '.join(reference)}")
        if not 0 < frac:
            raise ValueError(f"target fraction for {name!r} must be > 0, but got {frac!r}")
        out[name] = frac * reference[name]
    return out


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    return batch


def _split(batch: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise TypeError(
            "each batch must be a (inputs, targets) pair (or (x1, ..., xn, targets)), "
            f"but got {type(batch).__name__}"
        )
    return tuple(batch[:-1]), batch[-1]


def _correct(output: torch.Tensor, target: Any) -> int | None:
    if (isinstance(target, torch.Tensor) and output.dim() == 2 and target.dim() == 1
            and not target.is_floating_point()):
        return int((output.argmax(1) == target).sum())
    return None


def evaluate(
    model: nn.Module, data: Iterable, loss_fn: Callable | None = None, device: str | None = None,
    **forward_kwargs: Any,
) -> dict[str, float]:
    """Mean loss and accuracy (for class-index targets) of ``model`` in eval mode.

    ``forward_kwargs`` go to every forward call (``gates="off"`` evaluates a SearchModel
    without its gates).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> data = [(torch.eye(3), torch.arange(3))]
        >>> evaluate(nn.Identity(), data)["accuracy"]
        1.0
    """
    dev = torch.device(device) if device else _device_of(model)
    was_training = model.training
    model.eval()
    try:
        forward = partial(model, **forward_kwargs) if forward_kwargs else model
        return _metrics(forward, data, loss_fn or F.cross_entropy, dev)
    finally:
        model.train(was_training)


def _metrics(model: Callable[..., Any], data: Iterable, loss_fn: Callable,
             device: torch.device) -> dict[str, float]:
    """Mean loss (and accuracy) over ``data`` in the model's current modes, no gradients."""
    total, n, correct, counted = 0.0, 0, 0, 0
    with torch.no_grad():
        for batch in data:
            inputs, target = _split(_to(batch, device))
            output = model(*inputs)
            size = inputs[0].shape[0]
            total += float(loss_fn(output, target)) * size
            n += size
            c = _correct(output, target)
            if c is not None:
                correct += c
                counted += size
    result = {"loss": total / max(n, 1)}
    if counted:
        result["accuracy"] = correct / counted
    return result


def recalibrate_batchnorm_(
    model: nn.Module, data: Iterable, device: str | None = None, max_batches: int | None = None
) -> int:
    """Recompute every BatchNorm's running statistics on ``data`` with the eval-mode gates.

    During the search, BatchNorm statistics are accumulated under *sampled* gates; the
    exported architecture uses the deterministic ones, whose activations have other
    statistics. This re-estimates the statistics (a cumulative average over the batches)
    with the gates fixed, the standard recalibration for networks whose width changes.
    Weights are not touched. Returns the number of batches used.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> recalibrate_batchnorm_(net, [(torch.randn(8, 3) + 5, None)])
        1
        >>> bool(net[1].running_mean.abs().sum() > 0)
        True
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return 0
    dev = torch.device(device) if device else _device_of(model)
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in data:
                if max_batches is not None and used >= max_batches:
                    break
                inputs = batch[:-1] if isinstance(batch, (list, tuple)) and len(batch) > 1 \
                    else (batch,)
                model(*_to(tuple(inputs), dev))
                used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return used


def shard_loader(loader: Any, seed: int = 0) -> Any:
    """This rank's share of a DataLoader under torch.distributed (the loader itself otherwise).

    The result reads ``loader.dataset`` through a ``DistributedSampler`` (shuffled when
    the loader shuffles, seeded by ``seed``; :func:`fit` calls ``set_epoch``) with
    ``batch_size // world_size`` per rank, so the global batch stays the same.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(10, 2)), batch_size=4)
        >>> shard_loader(loader) is loader  # not distributed
        True
    """
    if not _distributed():
        return loader
    import torch.distributed as dist
    from torch.utils.data import DataLoader, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    world = dist.get_world_size()
    batch = loader.batch_size
    if batch is None or batch % world:
        raise ValueError(
            f"the loader's batch_size must be divisible by the world size {world}, "
            f"but got {batch}"
        )
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler: DistributedSampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset, batch_size=batch // world, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      drop_last=loader.drop_last)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_optimizer(params_w, params_a, config: FitConfig) -> torch.optim.Optimizer:
    groups = [{"params": list(params_w), "lr": config.lr, "weight_decay": config.weight_decay}]
    arch = list(params_a)
    if arch:
        groups.append({"params": arch, "lr": config.arch_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups) if config.weight_decay else torch.optim.Adam(groups)


class _Checkpoint:
    """Atomic save and validated load of the whole search state."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None or not _is_rank0():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".part", dir=self.path.parent)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} is corrupt or not a torch file ({e}); it was "
                "left in place: move it away to start a new search"
            ) from e
        if not isinstance(state, dict) or state.get("format") != "hwnas-fit":
            raise CheckpointError(
                f"{str(self.path)!r} is not an hwnas fit checkpoint (no 'format': 'hwnas-fit')"
            )
        if state.get("version") != _CHECKPOINT_VERSION:
            raise CheckpointError(
                f"checkpoint version {state.get('version')!r} is not supported "
                f"(this hwnas writes version {_CHECKPOINT_VERSION})"
            )
        return state


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not _distributed() or dist.get_rank() == 0


def _broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank."""
    if _distributed():
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _check_model_state(search: SearchModel, state: Mapping[str, torch.Tensor], path) -> None:
    own = search.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if extra:
            parts.append(f"unexpected {extra[:5]}")
        if shapes:
            parts.append(f"shape mismatch {[(k, tuple(state[k].shape)) for k in shapes[:5]]}")
        raise CheckpointError(
            f"checkpoint {str(path)!r} was made for a different model: " + "; ".join(parts)
        )


def fit(
    search: SearchModel,
    train_data: Iterable,
    val_data: Iterable | None = None,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    targets: Mapping[str, float] | None = None,
    config: FitConfig | None = None,
    regularizer: Callable[..., torch.Tensor] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> FitResult:
    """Warm-up, search and fine-tune ``search`` on any data and loss.

    Args:
        search: From :func:`hwnas.wrap`; trained in place.
        train_data: Iterable of ``(inputs, targets)`` batches (a DataLoader).
        val_data: Optional validation batches (needed by early stopping).
        loss_fn: ``loss_fn(output, targets)``; default cross-entropy.
        targets: Absolute cost targets, e.g. ``relative_targets(search, {"ops": 0.5})``;
            with no ``regularizer``, a :class:`~hwnas.regularizers.DUCCIO` on them is
            built from the warm-up task loss.
        config: :class:`FitConfig`.
        regularizer: ``reg(model, epoch, n_epochs) -> Tensor`` used in the search phase
            instead of the DUCCIO built from ``targets``.
        checkpoint: A file to save the whole state to after every epoch, and to resume
            from when it exists.

    Returns:
        A :class:`FitResult`.

    Example:
        >>> import torch, hwnas
        >>> from torch import nn
        >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> s = hwnas.wrap(net, x[:1])
        >>> cfg = FitConfig(warmup_epochs=1, search_epochs=2, finetune_epochs=1,
        ...                 progress=False)
        >>> out = fit(s, [(x, y)], targets=relative_targets(s, {"params": 0.5}), config=cfg)
        >>> list(out.history["phase"])
        ['warmup', 'search', 'search', 'finetune']
    """
    if not isinstance(search, SearchModel):
        raise TypeError(f"`search` must be a SearchModel (hwnas.wrap), but got "
                        f"{type(search).__name__}")
    config = config or FitConfig()
    loss_fn = loss_fn or F.cross_entropy
    targets = dict(targets or {})
    for name, value in targets.items():
        if name not in search.cost_names:
            raise KeyError(f"unknown cost {name!r}; known: {', '.join(search.cost_names)}")
        if not value > 0:
            raise ValueError(f"target for {name!r} must be > 0, but got {value!r}")
    if config.early_stopping is not None and val_data is None:
        raise ValueError("`config.early_stopping` needs `val_data`, but val_data is None")
    if config.search_epochs and regularizer is None and not targets:
        raise ValueError("the search phase needs `targets` or a `regularizer`, but got neither")
    device = torch.device(config.device) if config.device else _device_of(search)
    search.to(device)
    search.cost_mode = config.cost_mode
    ckpt = _Checkpoint(checkpoint)
    stopper = copy.deepcopy(config.early_stopping)

    run = _Run(search, train_data, val_data, loss_fn, targets, config, regularizer, device)
    state = ckpt.load()
    if state is not None:
        run.restore(state, ckpt.path)
    elif config.seed is not None:
        # Under torch.distributed each rank draws its own gate noise (seed + rank);
        # DistributedDataParallel broadcasts rank 0's weights and gates at the start.
        import torch.distributed as dist

        _seed_all(config.seed + (dist.get_rank() if _distributed() else 0))
    if stopper is not None and state is not None and state.get("stopper") is not None:
        stopper.load_state_dict(state["stopper"])

    epochs_this_call = 0
    while run.epoch < config.total_epochs:
        if config.stop_after is not None and epochs_this_call >= config.stop_after:
            break
        phase, e, n = run.position()
        if run.phase_done.get(phase):
            run.epoch = run.phase_end(phase)
            continue
        run.enter(phase)
        row = run.train_epoch(phase, e, n)
        epochs_this_call += 1
        run.epoch += 1
        stop = False
        if stopper is not None and phase in ("warmup", "finetune"):
            stop = stopper.step(row[stopper.monitor], run.current_model(phase))
        last = run.epoch == run.phase_end(phase)
        if stop or last:
            if stopper is not None and phase in ("warmup", "finetune"):
                stopper.restore(run.current_model(phase))
                row["restored_best"] = stopper.best_state is not None and stopper.restore_best
                stopper.reset()
            run.finish(phase)
            run.epoch = run.phase_end(phase)
        if config.on_epoch_end is not None:
            config.on_epoch_end(row, search)
        ckpt.save(run.state(stopper))
    for p in search.arch_parameters():
        p.requires_grad_(True)
    finished = run.epoch >= config.total_epochs
    if finished:
        run.ensure_exported()
    history = pd.DataFrame(run.history)
    model = run.exported if finished else None
    costs = search.costs()
    return FitResult(search, model, history, costs, run.absolute_targets(), finished)


class _Run:
    """Mutable state of one fit() call (kept out of the public API)."""

    def __init__(self, search, train_data, val_data, loss_fn, targets, config, regularizer,
                 device) -> None:
        self.search = search
        self.train_data, self.val_data = train_data, val_data
        self.loss_fn, self.targets, self.config = loss_fn, targets, config
        self.user_regularizer = regularizer
        self.regularizer = regularizer
        self.device = device
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.warmup_loss: float | None = None
        self.start_loss: float | None = None
        self.phase_done: dict[str, bool] = {}
        self.exported: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_phase: str | None = None
        self.ddp: nn.Module | None = None
        self.ddp_phase: str | None = None

    # -- phases ------------------------------------------------------------------------
    def bounds(self) -> dict[str, tuple[int, int]]:
        c = self.config
        a = c.warmup_epochs
        b = a + c.search_epochs
        return {"warmup": (0, a), "search": (a, b), "finetune": (b, b + c.finetune_epochs)}

    def phase_end(self, phase: str) -> int:
        return self.bounds()[phase][1]

    def position(self) -> tuple[str, int, int]:
        for phase, (lo, hi) in self.bounds().items():
            if lo <= self.epoch < hi:
                return phase, self.epoch - lo, hi - lo
        raise RuntimeError("no phase left")

    def current_model(self, phase: str) -> nn.Module:
        if phase == "finetune":
            assert self.exported is not None, "the fine-tune phase starts after the export"
            return self.exported
        return self.search

    def enter(self, phase: str) -> None:
        if phase == "finetune":
            self.ensure_exported()
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
        if not _distributed():
            return None
        from torch.nn.parallel import DistributedDataParallel

        model = self.current_model(phase)
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
        was_training = self.search.training
        self.search.eval()
        try:
            self.start_loss = _metrics(partial(self.search, gates="sample"), self.train_data,
                                       self.loss_fn, self.device)["loss"]
        finally:
            self.search.train(was_training)
        return self.start_loss

    def new_optimizer(self, phase: str) -> torch.optim.Optimizer:
        if phase == "finetune":
            assert self.exported is not None
            return _make_optimizer(self.exported.parameters(), (), self.config)
        arch = self.search.arch_parameters() if phase == "search" else ()
        return _make_optimizer(self.search.weight_parameters(), arch, self.config)

    def finish(self, phase: str) -> None:
        self.phase_done[phase] = True
        if phase == "search" and self.config.enforce_targets:
            targets = self.absolute_targets()
            if targets:
                closed = self.search.enforce_targets_(targets)
                row = self.history[-1]
                row["closed_by_projection"] = closed
                for name, value in self.search.costs().items():
                    row[f"cost_{name}"] = value
        if phase == "search" and self.config.recalibrate_bn:
            recalibrate_batchnorm_(self.search, self.train_data, str(self.device))
            _broadcast_buffers(self.search)
            if self.val_data is not None:
                metrics = evaluate(self.search, self.val_data, self.loss_fn, str(self.device))
                self.history[-1].update({f"val_{k}": v for k, v in metrics.items()})
        if phase == "warmup":
            self.warmup_loss = next(
                (r["task_loss"] for r in reversed(self.history) if r["phase"] == "warmup"), None)

    def ensure_exported(self) -> None:
        if self.exported is None:
            self.exported = self.search.eval().export().to(self.device)

    def absolute_targets(self) -> dict[str, float]:
        if self.targets:
            return dict(self.targets)
        return dict(getattr(self.regularizer, "targets", {}) or {})

    # -- one epoch -----------------------------------------------------------------------
    def train_epoch(self, phase: str, e: int, n: int) -> dict[str, Any]:
        from tqdm.auto import tqdm

        model = self.current_model(phase)
        assert model is not None and self.optimizer is not None
        forward: Callable[..., Any] = self.ddp if self.ddp is not None else model
        if phase == "warmup":
            forward = partial(forward, gates="off")  # the full model, no gate draws
        search_phase = phase == "search"
        model.train()
        sampler = getattr(self.train_data, "sampler", None)
        if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            sampler.set_epoch(self.epoch)  # a new shuffle every epoch
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "task_loss": 0.0, "reg_loss": 0.0}
        seen, correct, counted = 0, 0, 0
        n_batches = len(self.train_data) if hasattr(self.train_data, "__len__") else None
        bar = tqdm(self.train_data, total=n_batches, desc=f"{phase} {e + 1}/{n}",
                   disable=not (self.config.progress and _is_rank0()), leave=False)
        show = self.config.progress and _is_rank0()
        for step, batch in enumerate(bar):
            inputs, target = _split(_to(batch, self.device))
            output = forward(*inputs)
            task = self.loss_fn(output, target)
            loss = task
            reg = None
            if search_phase and self.regularizer is not None:
                reg = self.regularizer(self.search, e, n)
                loss = task + reg
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            size = inputs[0].shape[0]
            seen += size
            sums["loss"] += float(loss.detach()) * size
            sums["task_loss"] += float(task.detach()) * size
            sums["reg_loss"] += (float(reg.detach()) if reg is not None else 0.0) * size
            c = _correct(output, target)
            if c is not None:
                correct += c
                counted += size
            if show and (step % 10 == 0 or step + 1 == n_batches):  # costs are not free
                bar.set_postfix(self.postfix(sums, seen, correct, counted, search_phase))
        bar.close()
        # DDP syncs buffers at the start of a forward: make the last step's BatchNorm
        # statistics agree too, so every rank evaluates and saves the same model.
        _broadcast_buffers(model)
        row: dict[str, Any] = {"epoch": self.epoch, "phase": phase}
        row.update({k: v / max(seen, 1) for k, v in sums.items()})
        if counted:
            row["train_accuracy"] = correct / counted
        if self.val_data is not None:
            kwargs = {"gates": "off"} if phase == "warmup" else {}
            metrics = evaluate(model, self.val_data, self.loss_fn, str(self.device), **kwargs)
            row.update({f"val_{k}": v for k, v in metrics.items()})
        self.search.eval()
        costs = self.search.costs() if phase != "warmup" else self.search.reference_costs()
        for name, value in costs.items():
            row[f"cost_{name}"] = value
        for name, value in self.absolute_targets().items():
            row[f"target_{name}"] = value
        if search_phase and hasattr(self.regularizer, "current_strengths"):
            strengths = self.regularizer.current_strengths(e, n)
            row.update({f"strength_{k}": v for k, v in strengths.items()})
        row["seconds"] = time.perf_counter() - t0
        self.history.append(row)
        if self.config.progress and _is_rank0():
            print(_epoch_line(row, self.absolute_targets()), flush=True)
        return row

    def postfix(self, sums, seen, correct, counted, search_phase) -> dict[str, str]:
        out = {"loss": f"{sums['loss'] / max(seen, 1):.3f}"}
        if counted:
            out["acc"] = f"{correct / counted:.3f}"
        if search_phase:
            with torch.no_grad():
                for name, target in self.absolute_targets().items():
                    out[name] = f"{float(self.search.cost(name, 'deterministic')) / target:.2f}xT"
        return out

    # -- checkpoints ---------------------------------------------------------------------
    def state(self, stopper: EarlyStopping | None) -> dict[str, Any]:
        return {
            "format": "hwnas-fit",
            "version": _CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "config": _config_fingerprint(self.config),
            "search": self.search.state_dict(),
            "exported": None if self.exported is None else self.exported.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "optimizer_phase": self.optimizer_phase,
            "regularizer": (self.regularizer.state_dict()
                            if hasattr(self.regularizer, "state_dict") else None),
            "stopper": None if stopper is None else stopper.state_dict(),
            "history": self.history,
            "warmup_loss": self.warmup_loss,
            "start_loss": self.start_loss,
            "phase_done": self.phase_done,
            "rng": _rng_state(),
            "loader_rng": _loader_generator_state(self.train_data),
        }

    def restore(self, state: Mapping[str, Any], path) -> None:
        expected = _config_fingerprint(self.config)
        if state["config"] != expected:
            diff = {k: (state["config"].get(k), v) for k, v in expected.items()
                    if state["config"].get(k) != v}
            raise CheckpointError(
                f"checkpoint {str(path)!r} was made with a different configuration: "
                f"{diff} (checkpoint, now)"
            )
        _check_model_state(self.search, state["search"], path)
        self.search.load_state_dict(state["search"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self.warmup_loss = state["warmup_loss"]
        self.start_loss = state["start_loss"]
        self.phase_done = dict(state["phase_done"])
        if state["exported"] is not None:
            self.ensure_exported()
            assert self.exported is not None
            self.exported.load_state_dict(state["exported"])
        if state["regularizer"] is not None:
            if self.regularizer is None:
                self.regularizer = DUCCIO(self.targets, task_loss=self.task_loss_reference())
            self.regularizer.load_state_dict(state["regularizer"])
        if state["optimizer_phase"] is not None and state["optimizer"] is not None:
            phase = state["optimizer_phase"]
            self.optimizer = self.new_optimizer(phase)
            self.optimizer.load_state_dict(state["optimizer"])
            self.optimizer_phase = phase
        _set_rng_state(state["rng"])
        generator = getattr(self.train_data, "generator", None)
        if state.get("loader_rng") is not None and isinstance(generator, torch.Generator):
            generator.set_state(state["loader_rng"])


def _loader_generator_state(data: Any) -> torch.Tensor | None:
    """The shuffling generator's state of a DataLoader (so a resumed run shuffles alike)."""
    generator = getattr(data, "generator", None)
    return generator.get_state() if isinstance(generator, torch.Generator) else None


def _config_fingerprint(config: FitConfig) -> dict[str, Any]:
    keep = replace(config, progress=False, stop_after=None, early_stopping=None, device=None,
                   on_epoch_end=None)
    out = {k: getattr(keep, k) for k in keep.__dataclass_fields__}
    out["early_stopping"] = None if config.early_stopping is None else (
        config.early_stopping.patience, config.early_stopping.min_delta,
        config.early_stopping.monitor)
    return out


def _epoch_line(row: Mapping[str, Any], targets: Mapping[str, float]) -> str:
    parts = [f"[{row['phase']}] epoch {row['epoch'] + 1}", f"loss {row['loss']:.4f}"]
    if "val_accuracy" in row:
        parts.append(f"val acc {row['val_accuracy']:.4f}")
    for name, target in targets.items():
        value = row.get(f"cost_{name}")
        if value is not None:
            parts.append(f"{name} {value:,.0f}/{target:,.0f}")
    return "  ".join(parts)
