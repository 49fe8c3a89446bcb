"""One epoch and one step of :func:`hwnas.fit` (the state they work on is
:class:`~hwnas.training.run.FitRun`).

A step runs the forward pass and the loss under the run's autocast, adds the regularizer
(float32, outside autocast) in the search phase, runs the backward pass, and reads its
numbers back in one transfer: the loss, the task loss, the regularizer term, the gradient
norm and the correct predictions. The step guard then judges the loss and the gradient
norm before the optimizer applies anything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sized
from functools import partial
from typing import Any

import torch
import torch.utils.data.distributed

from hwnas._internal.devices import autocast
from hwnas.errors import HwnasError, InvalidValueError
from hwnas.regularizers.protocol import Scheduled
from hwnas.search.model import SearchModel
from hwnas.training.distributed import broadcast_buffers, is_rank0
from hwnas.training.evaluation import correct_tensor, split_batch, to_device
from hwnas.training.run import FitRun

__all__ = ["train_epoch", "train_step"]


def _postfix(search: SearchModel, targets: Mapping[str, float], sums: Mapping[str, float],
             seen: int, right: int, counted: int) -> dict[str, str]:
    """The progress bar's loss, accuracy and each exported cost as a share of its target
    (``params 112% of target``)."""
    out = {"loss": f"{sums['loss'] / max(seen, 1):.3f}"}
    if counted:
        out["acc"] = f"{right / counted:.3f}"
    with torch.no_grad():
        for name, target in targets.items():
            share = float(search.cost(name, "deterministic")) / target
            out[name] = f"{share:.0%} of target"
    return out


def train_step(run: FitRun, forward: Callable[..., Any], batch: Any, phase: str, e: int,
               n: int, step: int, params: list[torch.Tensor]) -> tuple[list[float], Any, Any]:
    """One optimizer step; ``([loss, task, reg, right or -1], output, target)``.

    Raises:
        TrainingError: the forward pass or the loss raised, or the guard found a
            non-finite or diverging loss or gradient (before the optimizer applied it).
    """
    assert run.optimizer is not None
    inputs, target = split_batch(to_device(batch, run.device))
    try:
        with autocast(run.device, run.config.precision):
            output = forward(*inputs)
            task = run.loss_fn(output, target)
        loss, reg = task, task.new_zeros(())
        if phase == "search" and run.regularizer is not None:
            reg = run.regularizer(run.search, e, n)  # float32/64, outside autocast
            loss = task + reg
    except HwnasError:
        raise
    except Exception as err:  # the user's model, data or loss: say where
        raise run.failure(f"the forward pass or the loss raised {type(err).__name__}: {err}",
                          phase, run.epoch, step,
                          "check that the data fit the model and the loss") from err
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    right = correct_tensor(output, target)
    numbers = torch.stack([loss.detach().double(), task.detach().double(),
                           reg.detach().double().to(loss.device), run.guard.norm(params),
                           (right if right is not None else loss.new_tensor(-1.0)).double()])
    values = numbers.tolist()  # the one read of this step
    problem = run.guard.check_loss(values[0], phase)
    # under fp16 an overflow is the scaler's business: it skips the step, lowers the scale
    if problem is None and not math.isfinite(values[3]) and not run.scaler.is_enabled():
        problem = f"the gradient norm is {values[3]} (the loss was {values[0]:.4g})"
    if problem is not None:
        hint = ("check the training data for NaN or infinite values"
                if run.guard.first is None and run.epoch == 0 else "")
        raise run.failure(problem, phase, run.epoch, step, hint)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return [values[0], values[1], values[2], values[4]], output, inputs[0].shape[0]


def train_epoch(run: FitRun, phase: str, e: int, n: int) -> dict[str, Any]:
    """Train epoch ``e`` of ``n`` of ``phase``; its history row (also appended to the run)."""
    from tqdm.auto import tqdm

    model = run.current_model(phase)
    assert run.optimizer is not None
    forward: Callable[..., Any] = run.ddp if run.ddp is not None else model
    if phase == "warmup":
        forward = partial(forward, gates="off")  # the full model, no gate draws
    model.train()
    sampler = getattr(run.train_data, "sampler", None)
    if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
        sampler.set_epoch(run.epoch)  # a new shuffle every epoch
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    t0 = time.perf_counter()
    sums = {"loss": 0.0, "task_loss": 0.0, "reg_loss": 0.0}
    seen, right, counted = 0, 0, 0
    n_batches = len(run.train_data) if isinstance(run.train_data, Sized) else None
    show = run.config.bars and is_rank0()
    # the epoch as the epoch lines count it (global), the phase's own count beside it
    bar = tqdm(run.train_data, total=n_batches,
               desc=f"[{phase}] epoch {run.epoch + 1}/{run.schedule.total} ({e + 1}/{n})",
               disable=not show, leave=False)
    for step, batch in enumerate(bar):
        (loss, task, reg, good), _, size = train_step(run, forward, batch, phase, e, n, step,
                                                      params)
        seen += size
        for key, value in (("loss", loss), ("task_loss", task), ("reg_loss", reg)):
            sums[key] += value * size
        if good >= 0:
            right += int(good)
            counted += size
        if show and (step % 10 == 0 or step + 1 == n_batches):  # costs are not free
            targets = run.absolute_targets() if phase == "search" else {}
            bar.set_postfix(_postfix(run.search, targets, sums, seen, right, counted))
    bar.close()
    if seen == 0:
        raise InvalidValueError("`train_data` is empty: it yielded no batch")
    # DDP syncs buffers at the start of a forward: make the last step's BatchNorm
    # statistics agree too, so every rank evaluates and saves the same model.
    broadcast_buffers(model)
    row: dict[str, Any] = {"epoch": run.epoch, "phase": phase}
    row.update({k: v / seen for k, v in sums.items()})
    if counted:
        row["train_accuracy"] = right / counted
    row.update(_epoch_numbers(run, model, phase, e, n))
    row["seconds"] = time.perf_counter() - t0
    run.history.append(row)
    return row


def _epoch_numbers(run: FitRun, model: Any, phase: str, e: int, n: int) -> dict[str, Any]:
    """Validation, costs, targets and strengths of the history row of an epoch."""
    row: dict[str, Any] = {}
    if run.val_data is not None:
        row.update(run.validate(model, phase, run.epoch,
                                {"gates": "off"} if phase == "warmup" else {}))
    with torch.no_grad():
        costs = run.search.costs() if phase != "warmup" else run.search.reference_costs()
    row.update({f"cost_{k}": v for k, v in costs.items()})
    row.update({f"target_{k}": v for k, v in run.absolute_targets().items()})
    if phase == "search" and isinstance(run.regularizer, Scheduled):
        strengths = run.regularizer.current_strengths(e, n)
        row.update({f"strength_{k}": v for k, v in strengths.items()})
    return row
