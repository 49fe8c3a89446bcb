"""Reports of a search run: per-layer tables, CSV, Markdown and self-contained HTML.

:func:`layer_table` joins the :func:`hwnas.profile` of the original model and of the
exported one on the layer name (``materialize`` keeps module paths). :func:`write_report`
writes the tables, the training history and the figures of :mod:`hwnas.cli.figures` (costs
against targets per epoch with the phases shaded, accuracy, channels kept per layer) into
one folder, with a ``report.md`` that links the figures and a ``report.html`` that embeds
them. Every file is written with :func:`hwnas._internal.files.atomic_write`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hwnas.errors import InvalidTypeError, InvalidValueError
from hwnas.cli.figures import (
    accuracy_figure,
    channels_figure,
    check_png_not_blank,
    costs_figure,
    history_costs,
)
from hwnas._internal.files import atomic_write, ensure_writable_dir

__all__ = ["check_png_not_blank", "cost_summary", "layer_table", "write_report"]

#: Cost columns joined by :func:`layer_table`, in this order, when both profiles have them.
LAYER_METRICS = ("params", "ops", "luts")
_PROFILE_COLUMNS = ("layer", "type", "out_channels", "params", "ops")
_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
"""


# --------------------------------------------------------------------------- tables
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
    have LUT costs, and ``frozen`` (from ``before``). Layers keep the order of ``before``;
    a layer only one side has gets empty cells on the other. The last row, ``total``,
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
    columns.append("frozen")
    table = joined[columns].reset_index(drop=True)
    numeric = [c for c in columns if c.endswith(("_before", "_after"))]
    _tidy_numbers(table, numeric)

    total: dict[str, Any] = {c: pd.NA for c in columns}
    total.update({"layer": "total", "type": "", "frozen": "", "kept_fraction": math.nan})
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



# --------------------------------------------------------------------------- documents
def _fmt(value: object) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return ""
        if number == round(number) and abs(number) < 1e15:
            return str(int(round(number)))
        return f"{number:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def _display(df: pd.DataFrame) -> pd.DataFrame:
    """All cells as strings: empty for missing values, integral floats as integers."""
    return pd.DataFrame(
        {col: [_fmt(v) for v in df[col].tolist()] for col in df.columns}, dtype=object
    )


def _markdown(df: pd.DataFrame) -> str:
    shown = _display(df).map(lambda s: s.replace("|", "\\|").replace("\n", " "))
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) else "left" for c in df.columns]
    try:
        return shown.to_markdown(index=False, disable_numparse=True, colalign=align)
    except ImportError:  # tabulate is optional for pandas: fall back to a plain pipe table
        header = "| " + " | ".join(map(str, shown.columns)) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        body = ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
        return "\n".join([header, rule, *body])


def _html_table(df: pd.DataFrame) -> str:
    return _display(df).to_html(index=False, border=0, escape=True)


def _notes_frame(notes: Mapping[str, object] | None) -> pd.DataFrame | None:
    if notes is None:
        return None
    if not isinstance(notes, Mapping):
        raise InvalidTypeError(f"`notes` must be a mapping or None, but got {type(notes).__name__}")
    if not notes:
        return None
    return pd.DataFrame(
        {"key": [str(k) for k in notes], "value": [_fmt(v) for v in notes.values()]}
    )


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False)


def _write_markdown(
    path: Path,
    title: str,
    notes: pd.DataFrame | None,
    summary: pd.DataFrame,
    table: pd.DataFrame,
    figures: dict[str, Path],
) -> Path:
    parts = [f"# {title}", ""]
    if notes is not None:
        parts += ["## Run", "", _markdown(notes), ""]
    parts += ["## Costs", "", _markdown(summary), ""]
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{name}]({p.name})" for name, p in figures.items()]
        parts.append("")
    parts += ["## Layers", "", _markdown(table), ""]
    _write_text(path, "\n".join(parts))
    return path


def _write_html(
    path: Path,
    title: str,
    notes: pd.DataFrame | None,
    summary: pd.DataFrame,
    table: pd.DataFrame,
    figures: dict[str, Path],
) -> Path:
    esc = html.escape(title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc}</h1>",
    ]
    if notes is not None:
        parts += ["<h2>Run</h2>", _html_table(notes)]
    parts += ["<h2>Costs</h2>", _html_table(summary)]
    if figures:
        parts.append("<h2>Figures</h2>")
        for name, p in figures.items():
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
    parts += ["<h2>Layers</h2>", _html_table(table), "</body>", "</html>", ""]
    _write_text(path, "\n".join(parts))
    return path


def write_report(
    folder: str | Path,
    history: pd.DataFrame | None,
    before: pd.DataFrame,
    after: pd.DataFrame,
    targets: Mapping[str, float] | None = None,
    title: str = "hwnas report",
    notes: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """Writes the tables, figures, ``report.md`` and a self-contained ``report.html``.

    Files, in ``folder`` (created if missing): ``history.csv`` (when ``history`` is
    given), ``layers.csv`` (:func:`layer_table`), ``costs.csv`` (:func:`cost_summary`),
    ``costs.png`` (each ``cost_<name>`` column of ``history`` per epoch, its target dashed,
    phases shaded), ``accuracy.png`` (``train_accuracy`` / ``val_accuracy``),
    ``channels.png`` (output channels before/after per conv/linear layer), ``report.md``
    (linking the PNGs) and ``report.html`` (PNGs embedded as base64 data URIs, no external
    references). A figure whose data is missing is skipped.

    Args:
        folder: Output folder.
        history: Per-epoch training history (columns ``epoch``, ``phase``,
            ``cost_<name>``, ``target_<name>``, ``train_accuracy``, ``val_accuracy``, ...;
            any may be missing), or None.
        before: :func:`hwnas.profile` of the original model.
        after: :func:`hwnas.profile` of the pruned model.
        targets: Cost targets by name; they override ``history``'s ``target_<name>``.
        title: Report title.
        notes: Key/value facts about the run shown as a table (dataset, seed, command...).

    Returns:
        File name (``"report.html"``, ``"costs.png"``, ...) -> path of every file written.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a profile misses required columns.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> import hwnas
        >>> x = torch.randn(1, 4)
        >>> big = hwnas.profile(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), x)
        >>> small = hwnas.profile(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), x)
        >>> files = write_report(tempfile.mkdtemp(), None, big, small, targets={"params": 40})
        >>> sorted(files)
        ['channels.png', 'costs.csv', 'layers.csv', 'report.html', 'report.md']
    """
    _check_history(history)
    targets = _check_targets(targets)
    if not isinstance(title, str):
        raise InvalidTypeError(f"`title` must be a str, but got {type(title).__name__}")
    notes_df = _notes_frame(notes)
    table = layer_table(before, after)
    summary = cost_summary(before, after, targets, history)

    out = Path(folder)
    out = ensure_writable_dir(out, "report folder")
    written: dict[str, Path] = {}

    def put(path: Path | None) -> None:
        if path is not None:
            written[path.name] = path

    if history is not None:
        _write_csv(history, out / "history.csv")
        put(out / "history.csv")
    _write_csv(table, out / "layers.csv")
    put(out / "layers.csv")
    _write_csv(summary, out / "costs.csv")
    put(out / "costs.csv")

    drawn: dict[str, Path | None] = {"costs": None, "accuracy": None}
    if history is not None and len(history):
        drawn["costs"] = costs_figure(history, targets, out / "costs.png")
        drawn["accuracy"] = accuracy_figure(history, out / "accuracy.png")
    drawn["channels"] = channels_figure(table, out / "channels.png")
    figures = {name: path for name, path in drawn.items() if path is not None}
    for path in figures.values():
        put(path)

    put(_write_markdown(out / "report.md", title, notes_df, summary, table, figures))
    put(_write_html(out / "report.html", title, notes_df, summary, table, figures))
    return written
