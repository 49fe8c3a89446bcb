"""Reports of a search run: CSV, Markdown and self-contained HTML.

The tables come from :mod:`hwnas.cli.tables` (:func:`layer_table` joins the
:func:`hwnas.profile` of the original model and of the exported one). :func:`write_report`
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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hwnas._internal.files import atomic_write, ensure_writable_dir
from hwnas.cli.figures import (
    accuracy_figure,
    channels_figure,
    check_png_not_blank,
    costs_figure,
)
from hwnas.cli.tables import _check_history, _check_targets, cost_summary, layer_table
from hwnas.errors import InvalidTypeError, InvalidValueError

if TYPE_CHECKING:
    from hwnas.cost.target import Target
    from hwnas.training.fit import FitResult

__all__ = ["check_png_not_blank", "cost_summary", "layer_table", "fit_profiles", "report_files",
           "write_report"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1180px; color: #222; padding: 0 1em; }
.wide { max-width: 100%; overflow-x: auto; }
td { white-space: nowrap; }
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
# --------------------------------------------------------------------------- documents
def _fmt(value: object) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return ""
        if number == round(number) and abs(number) < 1e15:
            return f"{int(round(number)):,}"
        return f"{number:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return str(value)


#: What a cost column is called in the documents (one name each: ops are MACs).
_LABELS = {"out_channels": "channels", "params": "params", "ops": "MACs", "luts": "LUTs"}
#: Said under the costs of a report whose target has a LUT model.
LUT_NOTE = ("LUT counts are for a fully unrolled design with constant weights: every "
            "multiplication of every layer is built in logic, none shared or time-multiplexed "
            "(the model is in hwnas/cost/targets/README.md). A design that reuses multipliers "
            "needs far fewer LUTs.")


def compact_layers(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`layer_table` for reading: one ``before -> after`` cell per cost, so the table
    fits a 1280-pixel page (``layers.csv`` keeps every column).

    Example:
        >>> df = pd.DataFrame({"layer": ["conv"], "type": ["Conv2d"],
        ...                    "out_channels_before": [64], "out_channels_after": [32],
        ...                    "kept_fraction": [0.5], "params_before": [1728],
        ...                    "params_after": [864], "frozen": [""]})
        >>> compact_layers(df).iloc[0].tolist()
        ['conv', 'Conv2d', '64 -> 32 (50%)', '1,728 -> 864', '']
    """
    out = pd.DataFrame({"layer": table["layer"], "type": table["type"]})
    for key, label in _LABELS.items():
        if f"{key}_before" not in table.columns:
            continue
        cells = []
        for b, a, k in zip(table[f"{key}_before"], table[f"{key}_after"],
                           table.get("kept_fraction", pd.Series([math.nan] * len(table))),
                           strict=True):
            cell = f"{_fmt(b)} -> {_fmt(a)}" if _fmt(b) or _fmt(a) else ""
            if key == "out_channels" and cell and not pd.isna(k):
                cell += f" ({k:.0%})"
            cells.append(cell)
        out[label] = cells
    if "weight_bits" in table.columns:  # a quantised export: its bits per layer
        out["bits (w/a)"] = [f"{_fmt(w)}/{_fmt(a)}" if _fmt(w) else "" for w, a in
                             zip(table["weight_bits"], table["activation_bits"], strict=True)]
    out["frozen"] = table["frozen"] if "frozen" in table.columns else ""
    return out


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
    # a wide table scrolls inside its box instead of widening the page
    return ('<div class="wide">' + _display(df).to_html(index=False, border=0, escape=True)
            + "</div>")


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
    if "luts" in set(summary["cost"]):
        parts += [LUT_NOTE, ""]
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{name}]({p.name})" for name, p in figures.items()]
        parts.append("")
    parts += ["## Layers", "", _markdown(compact_layers(table)), ""]
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
    if "luts" in set(summary["cost"]):
        parts.append(f"<p>{html.escape(LUT_NOTE)}</p>")
    if figures:
        parts.append("<h2>Figures</h2>")
        for name, p in figures.items():
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
    parts += ["<h2>Layers</h2>", _html_table(compact_layers(table)), "</body>", "</html>", ""]
    _write_text(path, "\n".join(parts))
    return path


def report_files(
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
        >>> files = report_files(tempfile.mkdtemp(), None, big, small, targets={"params": 40})
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


def fit_profiles(result: FitResult, target: str | Path | Target | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`hwnas.profile` of the unpruned model (the search's graph without its masks) and
    of the exported one, with the example input of ``wrap``, on ``target`` (default: the
    search's)."""
    from hwnas.cost.profile import profile
    from hwnas.export.verify import float32_cpu_copy
    from hwnas.search.surgery import unpruned

    if result.model is None:
        raise InvalidValueError("`result` is of a run that stopped early (stop_after): call "
                                "hwnas.fit again with its checkpoint to finish it first")
    search = result.search
    target = target if target is not None else search.target
    example = search.example_inputs
    unpruned_model, _ = float32_cpu_copy(unpruned(search.gm), example)
    model, _ = float32_cpu_copy(result.model, example)
    return profile(unpruned_model, example, target), profile(model, example, target)


def write_report(result: FitResult, folder: str | Path, title: str = "hwnas search",
                 notes: Mapping[str, object] | None = None,
                 target: str | Path | Target | None = None,
                 profiles: tuple[pd.DataFrame, pd.DataFrame] | None = None
                 ) -> dict[str, Path]:
    """The report of a :func:`hwnas.fit` run: its costs before and after pruning, per layer
    and against the targets, the accuracy before and after, the training history and the
    figures (see :func:`report_files` for the files).

    The unpruned model is the search's own graph without its masks; both profiles use the
    example input ``wrap`` was given and the search's hardware target (or ``target``).

    Args:
        result: What :func:`hwnas.fit` returned (a finished run).
        folder: Output folder (created if missing).
        title: Report title.
        notes: More key/value facts shown in the run table.
        target: Hardware target of the profiles (default: the search's).
        profiles: :func:`fit_profiles` of the result, when the caller has them already.

    Example:
        >>> import tempfile, torch, hwnas
        >>> from torch import nn
        >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> s = hwnas.wrap(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), x[:1])
        >>> cfg = hwnas.FitConfig(warmup_epochs=1, search_epochs=1, finetune_epochs=1,
        ...                       progress=False)
        >>> out = hwnas.fit(s, [(x, y)], [(x, y)], targets={"params": 40.0}, config=cfg)
        >>> files = hwnas.write_report(out, tempfile.mkdtemp())
        >>> sorted(files)[:3]
        ['accuracy.png', 'channels.png', 'costs.csv']
    """
    before, after = profiles if profiles is not None else fit_profiles(result, target)
    facts: dict[str, object] = {"targets met": "yes" if result.all_met else "NO: " + ", ".join(
        f"{k} {result.costs.get(k, math.nan):,.0f} > {t:,.0f}"
        for k, t in result.targets.items() if not result.met.get(k))}
    for split, before_acc, after_acc in (
            ("validation", result.val_accuracy_before, result.val_accuracy_after),
            ("test", result.test_accuracy_before, result.test_accuracy_after)):
        if after_acc is not None:
            facts[f"{split} accuracy, unpruned (after warm-up) -> exported"] = (
                f"{before_acc:.4f} -> {after_acc:.4f} ({after_acc - before_acc:+.4f})"
                if before_acc is not None else f"{after_acc:.4f}")
    facts.update(notes or {})
    return report_files(folder, result.history, before, after, targets=result.targets,
                        title=title, notes=facts)
