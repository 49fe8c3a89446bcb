"""Figures of a search report, drawn with matplotlib without a display.

Figures are drawn on :class:`matplotlib.figure.Figure` objects and saved with the Agg
canvas (through :func:`hwnas._internal.files.atomic_write`), so no display is needed and pyplot's
global state is never touched. :func:`check_png_not_blank` tells a real figure from an
empty canvas.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hwnas._internal.files import atomic_write
from hwnas.errors import InvalidValueError, MissingFileError

__all__ = ["accuracy_figure", "channels_figure", "check_png_not_blank", "costs_figure",
           "history_costs"]

_PHASE_COLORS = {"warmup": "#f6c87a", "search": "#9cc3e6", "finetune": "#a8d8a0"}
_OTHER_PHASE_COLOR = "#d0d0d0"
_CHANNEL_TYPES = re.compile(r"conv|linear", re.IGNORECASE)


def history_costs(history: pd.DataFrame | None) -> list[str]:
    if history is None:
        return []
    return [str(c)[len("cost_"):] for c in history.columns if str(c).startswith("cost_")]


def _epochs(history: pd.DataFrame) -> np.ndarray:
    if "epoch" in history.columns:
        return pd.to_numeric(history["epoch"], errors="coerce").to_numpy(dtype=float)
    return np.arange(len(history), dtype=float)


def _phase_runs(history: pd.DataFrame, x: np.ndarray) -> list[tuple[str, float, float]]:
    """Contiguous runs of the ``phase`` column as ``(phase, x_start, x_end)``."""
    if "phase" not in history.columns or len(x) == 0:
        return []
    phases = history["phase"].fillna("").astype(str).tolist()
    half = 0.5 * float(np.nanmin(np.diff(x))) if len(x) > 1 else 0.5
    if not math.isfinite(half) or half <= 0:
        half = 0.5
    runs: list[tuple[str, float, float]] = []
    start = 0
    for i in range(1, len(phases) + 1):
        if i == len(phases) or phases[i] != phases[start]:
            if phases[start]:
                runs.append((phases[start], x[start] - half, x[i - 1] + half))
            start = i
    return runs


def _shade_phases(ax: Any, runs: list[tuple[str, float, float]]) -> list[Patch]:
    seen: dict[str, Patch] = {}
    for phase, lo, hi in runs:
        color = _PHASE_COLORS.get(phase, _OTHER_PHASE_COLOR)
        ax.axvspan(lo, hi, color=color, alpha=0.35, linewidth=0, zorder=0)
        if phase not in seen:
            seen[phase] = Patch(facecolor=color, alpha=0.6, label=phase)
    return list(seen.values())


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor="white")
    return path


def costs_figure(
    history: pd.DataFrame, targets: Mapping[str, float], path: Path
) -> Path | None:
    """Each cost that has a target, per epoch, its target dashed, the phases shaded (a cost
    without a target has nothing to be read against, and is left out)."""
    names = [n for n in history_costs(history)
             if pd.to_numeric(history[f"cost_{n}"], errors="coerce").notna().any()
             and (n in targets or f"target_{n}" in history.columns)]
    if not names:
        return None
    x = _epochs(history)
    runs = _phase_runs(history, x)
    fig = Figure(figsize=(7.5, 2.6 * len(names) + 0.6))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        patches = _shade_phases(ax, runs)
        values = pd.to_numeric(history[f"cost_{name}"], errors="coerce").to_numpy(dtype=float)
        ax.plot(x, values, marker="o", markersize=3, color="#1f4e9c", label=f"cost {name}")
        tcol = f"target_{name}"
        if name in targets:
            ax.axhline(targets[name], color="#c0392b", linestyle="--", label=f"target {name}")
        elif tcol in history.columns:
            target = pd.to_numeric(history[tcol], errors="coerce").to_numpy(dtype=float)
            ax.plot(x, target, color="#c0392b", linestyle="--", label=f"target {name}")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + patches, fontsize=8, loc="best")
    axes[-1].set_xlabel("epoch")
    axes[0].set_title("Costs per epoch against their targets")
    fig.tight_layout()
    return _save(fig, path)


def accuracy_figure(history: pd.DataFrame, path: Path) -> Path | None:
    columns = [
        c for c in ("train_accuracy", "val_accuracy")
        if c in history.columns and pd.to_numeric(history[c], errors="coerce").notna().any()
    ]
    if not columns:
        return None
    x = _epochs(history)
    fig = Figure(figsize=(7.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    patches = _shade_phases(ax, _phase_runs(history, x))
    for col, color in zip(columns, ("#1f4e9c", "#d35400"), strict=False):
        values = pd.to_numeric(history[col], errors="coerce").to_numpy(dtype=float)
        ax.plot(x, values, marker="o", markersize=3, color=color, label=col.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per epoch")
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + patches, fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def channels_figure(table: pd.DataFrame, path: Path) -> Path | None:
    rows = table.loc[
        (table["layer"] != "total")
        & table["type"].astype(str).str.contains(_CHANNEL_TYPES)
        & table["out_channels_before"].notna()
    ]
    if rows.empty:
        return None
    before = rows["out_channels_before"].astype("float64").to_numpy()
    after = rows["out_channels_after"].astype("float64").fillna(0.0).to_numpy()
    labels = [f"{layer}\n{kind}" for layer, kind in zip(rows["layer"], rows["type"], strict=True)]
    pos = np.arange(len(rows))
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 2.0), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.4
    ax.bar(pos - width / 2, before, width, label="before", color="#9aa5b1")
    bars = ax.bar(pos + width / 2, after, width, label="after", color="#1f4e9c")
    for bar, b, a in zip(bars, before, after, strict=True):
        if b > 0:
            ax.annotate(f"{a / b:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title("Output channels per conv/linear layer")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def check_png_not_blank(path: str | Path, min_std: float = 1e-3) -> None:
    """Raises if a PNG is (almost) a single colour, e.g. a figure that failed to render.

    The image is read with :func:`matplotlib.image.imread`; transparent pixels are
    composited onto white, and the standard deviation of the RGB values (in [0, 1]) over
    all pixels must reach ``min_std``.

    Args:
        path: The PNG file.
        min_std: Smallest standard deviation of the pixel values accepted.

    Raises:
        MissingFileError: If ``path`` does not exist.
        InvalidValueError: If the image is empty or (almost) a single colour.

    Example:
        >>> import tempfile, numpy as np, matplotlib.image
        >>> from pathlib import Path
        >>> png = Path(tempfile.mkdtemp()) / "white.png"
        >>> matplotlib.image.imsave(png, np.ones((8, 8, 3)))
        >>> check_png_not_blank(png)
        Traceback (most recent call last):
        ...
        hwnas.errors.InvalidValueError: ... is blank: ...
    """
    import matplotlib.image

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no PNG at {path}")
    image = np.asarray(matplotlib.image.imread(path), dtype=np.float64)
    if image.size == 0:
        raise InvalidValueError(f"{path} is blank: the image has no pixels")
    if image.dtype.kind in "ui" or image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 3 and image.shape[-1] == 4:
        alpha = image[..., 3:]
        image = image[..., :3] * alpha + (1.0 - alpha)
    std = float(image.std())
    if std < min_std:
        raise InvalidValueError(
            f"{path} is blank: pixel standard deviation {std:.2e} < {min_std:.2e} "
            f"({image.shape[1]}x{image.shape[0]} pixels of about one colour)"
        )


