"""The tables a search reports: per layer (costs and channels kept) and per channel group
(kept channels and why a group is frozen)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from hwnas import cost as cost_registry
from hwnas.cost.profile import metrics_for
from hwnas.cost.target import Target
from hwnas.graph.ir import ChannelGroup, LayerInfo

__all__ = ["group_table", "kept_table", "layer_table"]


def layer_table(infos: Sequence[LayerInfo], a_in: torch.Tensor, a_out: torch.Tensor,
                target: Target) -> pd.DataFrame:
    """One row per layer: its channels, the alive channels ``a_in`` / ``a_out`` and every
    cost of ``target``'s metrics."""
    rows = []
    for k, info in enumerate(infos):
        alive = {"in": a_in[k], "out": a_out[k]}
        row = {"layer": info.label, "type": getattr(info.module_type, "__name__", info.target),
               "in_channels": info.in_channels, "in_kept": float(alive["in"]),
               "out_channels": info.out_channels, "out_kept": float(alive["out"])}
        for name in metrics_for(target):
            value = cost_registry.evaluate(name, info, alive, target)
            row[name] = 0.0 if value is None else float(value)
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(groups: Sequence[ChannelGroup], keep: Mapping[int, torch.Tensor]
                ) -> pd.DataFrame:
    """One row per channel group: its size, kept channels, producers and frozen reason."""
    rows = []
    for g in groups:
        kept = int(keep[g.index].sum()) if g.index in keep else g.size
        rows.append({"group": g.index, "channels": g.size, "kept": kept,
                     "producers": ", ".join(g.producers), "frozen": g.frozen or ""})
    return pd.DataFrame(rows)


def kept_table(df: pd.DataFrame, infos: Sequence[LayerInfo],
               groups: Sequence[ChannelGroup]) -> pd.DataFrame:
    """:func:`layer_table` of the exported architecture with each layer's group and the
    reason it is frozen, kept channels as integers."""
    df = df.copy()
    df.insert(2, "group", [int(i.out_slots[0, 0]) if i.out_slots is not None else -1
                           for i in infos])
    df["frozen"] = [_layer_frozen(i, groups) or "" for i in infos]
    for col in ("in_kept", "out_kept"):
        df[col] = df[col].round().astype("int64")
    return df


def _layer_frozen(info: LayerInfo, groups: Sequence[ChannelGroup]) -> str | None:
    """Like ``LayerInfo.frozen`` (the reason of the first frozen group the layer writes), but
    from ``groups``, which also holds the groups frozen by ``wrap(exclude=...)``."""
    own = info.out_slots if info.out_slots is not None else info.in_slots
    if own is None:
        return info.frozen
    return next((groups[int(g)].frozen for g in np.unique(own[0])
                 if groups[int(g)].frozen is not None), None)
