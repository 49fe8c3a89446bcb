"""Per-layer cost profile of a model as a pandas DataFrame (the one per-layer cost table).

Costs are evaluated in float64 and integral columns are stored as int64, so counts above
2^24 (a float32's exact range) stay exact in every row and in the total.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from hwnas import cost
from hwnas._internal.modes import eval_mode
from hwnas.cost.bits import QuantizedLayer, bits_label
from hwnas.cost.target import Target, load_target
from hwnas.graph import layers, trace
from hwnas.graph.ir import LayerInfo

__all__ = ["profile", "profile_traced", "metrics_for", "full_alive"]


def metrics_for(target: Target) -> list[str]:
    """The cost columns a profile on ``target`` has (``luts`` only on LUT targets)."""
    return [m for m in cost.metrics() if m != "luts" or target.has_lut_model]


def full_alive(info: LayerInfo) -> dict[str, torch.Tensor]:
    """``alive`` for an unpruned layer: every input and output channel."""
    return {
        "in": torch.tensor(float(info.in_channels or 0), dtype=torch.float64),
        "out": torch.tensor(float(info.out_channels or 0), dtype=torch.float64),
    }


def profile_traced(gm, target: Target) -> pd.DataFrame:
    """Profile of a model already traced with :func:`hwnas.graph.trace`."""
    rows = []
    names = metrics_for(target)
    for info in layers(gm):
        alive = full_alive(info)
        row: dict[str, Any] = {
            "layer": info.label,
            "type": info.module_type.__name__ if info.module_type else info.target,
            "in_channels": info.in_channels,
            "out_channels": info.out_channels,
            "kernel": "x".join(map(str, info.kernel)) if info.kernel else "",
            "groups": info.groups,
            "out_shape": "x".join(map(str, info.out_shape or ())),
        }
        for metric in names:
            value = cost.evaluate(metric, info, alive, target)
            row[metric] = 0.0 if value is None else float(value)
        if isinstance(info.module, QuantizedLayer):  # an exported quantised layer
            w_bits, a_bits = info.module.bits()
            row["weight_bits"], row["activation_bits"] = bits_label(w_bits), str(a_bits)
        row["group"] = int(info.out_slots[0, 0]) if info.out_slots is not None else None
        row["frozen"] = info.frozen or ""
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for metric in names:
        if (df[metric] == df[metric].round()).all() and df[metric].abs().max() < 2**53:
            df[metric] = df[metric].round().astype("int64")  # exact counts stay integers
    total: dict[str, Any] = {c: "" for c in df.columns}
    total["layer"] = "total"
    for metric in names:
        total[metric] = df[metric].sum()
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def profile(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: str | Path | Target = "generic",
    leaf_modules: tuple[type | str, ...] = (),
) -> pd.DataFrame:
    """One row per layer with its channels, shapes and costs, plus a ``total`` row.

    Columns: layer, type, in/out channels, kernel, groups, output shape, one column per
    cost metric (``bitops``, ``norm_params``, ``ops`` = MACs, ``params``, ``weight_memory``,
    and ``luts`` on LUT targets), the channel group of the layer's outputs and why it is
    frozen (empty when prunable). A model with quantised layers
    (:class:`~hwnas.cost.bits.QuantizedLayer`, e.g. a precision search's export) also has
    ``weight_bits`` and ``activation_bits`` columns, and is costed at those bits.

    Args:
        model: The model (not modified).
        example_inputs: Inputs with batch size 1 (costs are per example).
        target: A shipped target name, a TOML path or a :class:`~hwnas.cost.Target`.
        leaf_modules: Passed to :func:`hwnas.graph.trace`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        ...                     nn.Linear(8 * 4 * 4, 10))
        >>> df = profile(net, torch.randn(1, 3, 4, 4))
        >>> df[["layer", "params", "ops"]].to_dict("records")[-1]
        {'layer': 'total', 'params': 1514, 'ops': 4874}
    """
    target = load_target(target)
    # a layer that carries its own bits is costed at them: one leaf, whatever its forward
    own_bits = tuple({type(m) for m in model.modules() if isinstance(m, QuantizedLayer)})
    leaf_modules = (*leaf_modules, *own_bits)
    with eval_mode(model):
        gm = trace(model, example_inputs, leaf_modules=leaf_modules, is_leaf=cost.is_costed)
    return profile_traced(gm, target)
