"""The tables of a search report: per layer before/after (:func:`layer_table`) and per cost
(:func:`cost_summary`), from two :func:`hwnas.profile` tables and the training history."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hwnas.cli.figures import history_costs
from hwnas.errors import InvalidTypeError, InvalidValueError

__all__ = ["cost_summary", "layer_table"]

#: Cost columns joined by :func:`layer_table`, in this order, when both profiles have them.
LAYER_METRICS = ("params", "ops", "luts")
_PROFILE_COLUMNS = ("layer", "type", "out_channels", "params", "ops")
def _check_profile(df: object, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise InvalidTypeError(
            f"`{name}` must be a pandas DataFrame from hwnas.profile, "
            f"but got {type(df).__name__}"
        )
    missing = [c for c in _PROFILE_COLUMNS if c not in df.columns]
    if missing:
        raise InvalidValueError(
            f"`{name}` must have the columns of hwnas.profile {list(_PROFILE_COLUMNS)}, "
            f"but misses {missing} (has {list(df.columns)})"
        )
    return df


def _layer_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The profile without its total row, with string layer names and numeric channels."""
    rows = df.loc[df["layer"].astype(str) != "total"].copy()
    rows["layer"] = rows["layer"].astype(str)
    rows["out_channels"] = pd.to_numeric(rows["out_channels"], errors="coerce")
    return rows


def _tidy_numbers(df: pd.DataFrame, columns: list[str]) -> None:
    """Integral numeric columns become nullable ``Int64`` (joins introduce NaN)."""
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce").astype("float64")
        finite = values.dropna()
        if (finite == finite.round()).all():
            df[col] = values.round().astype("Int64")
        else:
            df[col] = values


def layer_table(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per-layer comparison of two :func:`hwnas.profile` tables, joined on ``layer``.

    Columns: ``layer``, ``type``, ``out_channels_before``, ``out_channels_after``,
    ``kept_fraction`` (after / before), ``params_before``, ``params_after``,
    ``ops_before``, ``ops_after``, ``luts_before`` and ``luts_after`` when both profiles
    have LUT costs, ``weight_bits`` and ``activation_bits`` when ``after`` is quantised (a
    precision search's export), and ``frozen`` (from ``before``). Layers keep the order of
    ``before``; a layer only one side has gets empty cells on the other. The last row, ``total``,
    holds the sums of the cost columns; its channel cells are empty.

    Args:
        before: Profile of the original model.
        after: Profile of the pruned (exported) model.

    Returns:
        The joined table.

    Raises:
        TypeError: If an argument is not a DataFrame.
        ValueError: If a profile misses one of the columns ``layer``, ``type``,
            ``out_channels``, ``params``, ``ops``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> x = torch.randn(1, 4)
        >>> big = hwnas.profile(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), x)
        >>> small = hwnas.profile(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), x)
        >>> table = layer_table(big, small)
        >>> table[["layer", "kept_fraction", "params_before", "params_after"]].to_dict("list")
        {'layer': ['0', '2', 'total'], 'kept_fraction': [0.25, 1.0, nan], \
'params_before': [80, 34, 114], 'params_after': [20, 10, 30]}
    """
    b = _layer_rows(_check_profile(before, "before"))
    a = _layer_rows(_check_profile(after, "after"))
    metrics = [m for m in LAYER_METRICS if m in b.columns and m in a.columns]
    bits = [c for c in ("weight_bits", "activation_bits") if c in a.columns]  # quantised
    frozen = b["frozen"] if "frozen" in b.columns else pd.Series("", index=b.index)
    left = pd.DataFrame({
        "layer": b["layer"],
        "type": b["type"].astype(str),
        "out_channels_before": b["out_channels"],
        **{f"{m}_before": b[m] for m in metrics},
        "frozen": frozen.fillna("").astype(str),
    })
    right = pd.DataFrame({
        "layer": a["layer"],
        "type_after": a["type"].astype(str),
        "out_channels_after": a["out_channels"],
        **{f"{m}_after": a[m] for m in metrics},
        **{c: a[c] for c in bits},
    })
    joined = left.merge(right, on="layer", how="left")
    only_after = right.loc[~right["layer"].isin(left["layer"])]
    if not only_after.empty:
        joined = pd.concat([joined, only_after], ignore_index=True)
    joined["type"] = joined["type"].fillna(joined["type_after"])
    joined["frozen"] = joined["frozen"].fillna("")

    ch_before = joined["out_channels_before"].astype("float64")
    ch_after = joined["out_channels_after"].astype("float64")
    joined["kept_fraction"] = (ch_after / ch_before.where(ch_before > 0)).astype("float64")

    columns = ["layer", "type", "out_channels_before", "out_channels_after", "kept_fraction"]
    for m in metrics:
        columns += [f"{m}_before", f"{m}_after"]
    columns += [*bits, "frozen"]
    table = joined[columns].reset_index(drop=True)
    numeric = [c for c in columns if c.endswith(("_before", "_after"))]
    _tidy_numbers(table, numeric)

    total: dict[str, Any] = {c: pd.NA for c in columns}
    total.update({"layer": "total", "type": "", "frozen": "", "kept_fraction": math.nan,
                  **{c: "" for c in bits}})
    for m in metrics:
        for side in ("before", "after"):
            total[f"{m}_{side}"] = table[f"{m}_{side}"].sum()
    out = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    _tidy_numbers(out, numeric)
    out["kept_fraction"] = out["kept_fraction"].astype("float64")
    return out


def _history_target(history: pd.DataFrame | None, name: str) -> float:
    col = f"target_{name}"
    if history is None or col not in history.columns:
        return math.nan
    values = pd.to_numeric(history[col], errors="coerce").dropna()
    return float(values.iloc[-1]) if len(values) else math.nan


def _total(profile: pd.DataFrame, name: str) -> float:
    if name not in profile.columns:
        return math.nan
    rows = profile.loc[profile["layer"].astype(str) == "total", name]
    value = pd.to_numeric(rows, errors="coerce")
    if len(value):
        return float(value.iloc[-1])
    return float(pd.to_numeric(profile[name], errors="coerce").sum())


def cost_summary(
    before: pd.DataFrame,
    after: pd.DataFrame,
    targets: Mapping[str, float] | None = None,
    history: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per cost: the original model's total, the pruned model's, the target, met.

    Costs are ``params`` and ``ops`` (plus ``luts`` when both profiles have it), every
    name in ``targets`` and every ``cost_<name>`` column of ``history``. A target comes
    from ``targets``, else from the last ``target_<name>`` value of ``history``; ``met``
    is ``"yes"`` when ``after <= target``, ``"no"`` otherwise, empty without a target.

    Args:
        before: Profile of the original model (:func:`hwnas.profile`).
        after: Profile of the pruned model.
        targets: Cost targets by name.
        history: Training history with ``cost_<name>`` / ``target_<name>`` columns.

    Returns:
        Columns ``cost``, ``before``, ``after``, ``target``, ``met``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> x = torch.randn(1, 4)
        >>> big = hwnas.profile(nn.Sequential(nn.Linear(4, 16)), x)
        >>> small = hwnas.profile(nn.Sequential(nn.Linear(4, 8)), x)
        >>> cost_summary(big, small, {"params": 50}).to_dict("records")[0]
        {'cost': 'params', 'before': 80.0, 'after': 40.0, 'target': 50.0, 'met': 'yes'}
    """
    _check_profile(before, "before")
    _check_profile(after, "after")
    targets = _check_targets(targets)
    _check_history(history)
    names = [m for m in LAYER_METRICS if m in before.columns and m in after.columns]
    for name in [*targets, *history_costs(history)]:
        if name not in names:
            names.append(name)
    rows = []
    for name in names:
        target = float(targets[name]) if name in targets else _history_target(history, name)
        b, a = _total(before, name), _total(after, name)
        met = "" if math.isnan(target) or math.isnan(a) else ("yes" if a <= target else "no")
        rows.append({"cost": name, "before": b, "after": a, "target": target, "met": met})
    return pd.DataFrame(rows, columns=["cost", "before", "after", "target", "met"])


# --------------------------------------------------------------------------- checks
def _check_targets(targets: Mapping[str, float] | None) -> dict[str, float]:
    if targets is None:
        return {}
    if not isinstance(targets, Mapping):
        raise InvalidTypeError(
            f"`targets` must be a mapping of cost name to number, "
            f"but got {type(targets).__name__}"
        )
    out: dict[str, float] = {}
    for name, value in targets.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise InvalidTypeError(f"`targets[{name!r}]` must be a number, but got {value!r}")
        out[str(name)] = float(value)
    return out


def _check_history(history: object) -> None:
    if history is not None and not isinstance(history, pd.DataFrame):
        raise InvalidTypeError(
            f"`history` must be a pandas DataFrame or None, but got {type(history).__name__}"
        )
