"""wrap: trace a copy of the user's model and put L0 gates on its free channel groups."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwnas import cost as cost_registry
from hwnas._internal.devices import device_of, to_device
from hwnas.cost.target import Target, load_target
from hwnas.errors import (
    FrozenChannelsWarning,
    InvalidTypeError,
    InvalidValueError,
    UnknownNameError,
)
from hwnas.graph import channel_groups, trace
from hwnas.graph.groups import unknown_ops_note
from hwnas.search.gates import DROPRATE_INIT
from hwnas.search.model import SearchModel
from hwnas.search.precision import BitSearch, PrecisionSpace

__all__ = ["wrap"]


def _check_wrap_args(model: Any, exclude: Any, droprate_init: Any, channel_multiple: Any,
                     precision: Any = None) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"`model` must be an nn.Module, but got {type(model).__name__}")
    if isinstance(model, SearchModel):
        raise InvalidTypeError("`model` is already a SearchModel (from hwnas.wrap); wrap the "
                               "original model, or use search.export() for the pruned one")
    if isinstance(exclude, str):
        raise InvalidTypeError("`exclude` must be a collection of module names, not a single "
                               "string")
    if isinstance(channel_multiple, bool) or not isinstance(channel_multiple, int) \
            or channel_multiple < 1:
        raise InvalidValueError(
            f"`channel_multiple` must be an integer >= 1, but got {channel_multiple!r}")
    if precision is not None and not isinstance(precision, (bool, PrecisionSpace)):
        raise InvalidTypeError(f"`precision` must be a PrecisionSpace, True or None, but got "
                               f"{type(precision).__name__}")
    if isinstance(droprate_init, bool) or not isinstance(droprate_init, (int, float)) \
            or not 0.0 < droprate_init < 1.0:
        raise InvalidValueError(f"`droprate_init` must be in (0, 1), but got {droprate_init!r}")


def wrap(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    costs: Iterable[str] = ("params", "ops"),
    target: str | Path | Target = "generic",
    exclude: Iterable[str] = (),
    droprate_init: float = DROPRATE_INIT,
    per_example: bool = False,
    leaf_modules: tuple[type | str, ...] = (),
    channel_multiple: int = 1,
    precision: PrecisionSpace | bool | None = None,
) -> SearchModel:
    """Wrap a copy of ``model`` for channel search.

    Args:
        model: The model; it is deep-copied, never modified. Its device decides where the
            search lives: gates, mask indices and cost plans are put beside its
            parameters (``search.to(device)`` moves all of it later).
        example_inputs: Example inputs with batch size 1 (costs are per example); moved
            to the model's device for tracing.
        costs: Metrics the search is expected to use (validated against the registry).
        target: Hardware target name, TOML path or :class:`~hwnas.cost.Target`.
        exclude: Module names (as in ``model.named_modules()``) whose output channels
            must not be pruned.
        droprate_init: Initial probability that a gate is closed (Louizos' ``p``). At 0.3
            the gates start at P(open) = 0.7 (deterministic value 0.79), where they still
            move quickly; values near 0 start exactly at the full model but saturate the
            gates, so the search needs more epochs to close channels.
        per_example: Sample an independent gate per example (a (batch, channels) mask)
            instead of one per batch.
        leaf_modules: Passed to :func:`hwnas.graph.trace`.
        channel_multiple: Channels per gate. With 16, every group keeps a multiple of 16
            channels (its last block may be shorter): the blocked layouts of CPU/GPU
            kernels (e.g. onnxruntime's NCHWc) then run the pruned layers at full speed.
        precision: Also search bit widths (:class:`~hwnas.search.precision.PrecisionSpace`;
            ``True``: its defaults, candidates ``(2, 3, 4, 6, 8)`` for weights and
            activations): every conv / linear module is fake-quantised, ``search.precision``
            holds the bit-width parameters, and ``bitops``, ``weight_memory`` and ``luts``
            are costed at the searched bits. Not to be confused with
            ``FitConfig(precision=...)``, the autocast dtype of training.

    Returns:
        A :class:`SearchModel`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> search = hwnas.wrap(net, torch.randn(1, 4), costs=("params",))
        >>> search.summary(by="group")["kept"].tolist()
        [4, 16, 2]
    """
    _check_wrap_args(model, exclude, droprate_init, channel_multiple, precision)
    costs = tuple(costs)
    exclude = tuple(exclude)
    target = load_target(target)
    for name in costs:
        cost_registry.check_metric(name)
        if name == "luts" and not target.has_lut_model:
            cost_registry.formulas.lut_model(target)
    copied = copy.deepcopy(model)
    module_names = {name for name, _ in copied.named_modules() if name}
    unknown = [e for e in exclude if e not in module_names]
    if unknown:
        raise UnknownNameError(
            f"`exclude` names no layer: {unknown}; layers are e.g. {sorted(module_names)[:10]}")
    was_training = copied.training
    copied.eval()
    example_inputs = to_device(example_inputs, device_of(copied))
    gm = trace(copied, example_inputs, leaf_modules=leaf_modules, is_leaf=cost_registry.is_costed)
    gm.train(was_training)
    groups = list(channel_groups(gm))
    for node in gm.graph.nodes:
        info = node.meta.get("hwnas")
        if not exclude or node.op != "call_module" or info is None or info.out_slots is None:
            continue
        if any(str(node.target) == e or str(node.target).startswith(e + ".") for e in exclude):
            for g in np.unique(info.out_slots[0]):
                if groups[int(g)].frozen is None:
                    groups[int(g)] = replace(groups[int(g)], frozen=f"excluded: {node.target}")
    note = unknown_ops_note(groups)
    if note is not None:
        warnings.warn(note, FrozenChannelsWarning, stacklevel=2)
    search = SearchModel(gm, tuple(groups), costs, target, droprate_init, per_example,
                         channel_multiple)
    search.example_inputs = _cpu_examples(example_inputs)
    if precision is not None and precision is not False:
        BitSearch.attach(search, PrecisionSpace() if precision is True else precision,
                         tuple(example_inputs) if isinstance(example_inputs, (tuple, list))
                         else (example_inputs,))
    return search.train(was_training)


def _cpu_examples(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """The example inputs as a search keeps them: batch 1, on the CPU (zeros of the same
    shape for ``meta`` tensors, which have no values)."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    return tuple(torch.zeros(x[:1].shape, dtype=x.dtype) if x.device.type == "meta"
                 else x.detach()[:1].cpu().clone() for x in inputs)
