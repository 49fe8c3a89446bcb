"""Calibration of a target's LUT costs against yosys: micro-benchmarks, fits, target file.

``hwnas calibrate TARGET`` (:func:`calibrate`) synthesizes the micro-benchmarks of
:mod:`hwnas.hw.benchmarks` for the target, one after another, fits the cost models of
:mod:`hwnas.cost.luts` to them and writes the coefficients into the target file's
``[luts.calibration]`` table, with the grid and the measured errors. Measurements are kept
in a JSON file next to it, so a second run only synthesizes what is new.

The grids (``GRIDS``) are fixed here, so that every target is calibrated on the same
shapes and the held-out MAC shapes share no ``n``, ``W`` or ``A`` with the fitted ones.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwnas._internal.files import atomic_write, ensure_writable_dir
from hwnas.cost.luts import (
    MAC_FEATURES,
    lut_model,
    mac_features_exact,
    mac_features_expected,
    min_bdd_nodes,
    node_luts,
    popcount_features,
)
from hwnas.cost.target import LutCalibration, Target, load_target
from hwnas.errors import InvalidValueError
from hwnas.hw.benchmarks import Benchmark, measure

__all__ = ["GRIDS", "Calibration", "calibrate", "fit", "grid", "run_benchmarks"]

#: Fitted MAC shapes: n (weights per output), W (weight bits), A (activation bits).
MAC_FIT = {"n": (1, 2, 4, 8, 16, 32, 64), "w": (2, 4, 8), "a": (2, 4, 8)}
#: Held-out MAC shapes: no n, W or A of the fitted grid.
MAC_HELD_OUT = ((3, 3, 3), (3, 6, 5), (5, 5, 3), (6, 3, 6), (6, 7, 5), (12, 5, 3), (12, 6, 6),
                (20, 3, 5), (24, 7, 3), (24, 5, 5), (40, 3, 3), (48, 3, 6), (48, 6, 3),
                (96, 3, 3))
_MAX_PP = 2048  # n * W * A of the largest design (synthesis time grows with it)

GRIDS = {
    "table": tuple(range(2, 10)),
    "comparator": tuple(range(2, 11)),
    "popcount": (2, 4, 8, 16, 32, 64, 128, 256),
}


def _copies(n: int) -> int:
    return max(1, min(8, math.ceil(64 / n)))


def grid() -> dict[str, list[Benchmark]]:
    """Every benchmark of a calibration, by group (``mac_held_out`` is never fitted on)."""
    macs = [Benchmark("mac", n, w, a, _copies(n))
            for n in MAC_FIT["n"] for w in MAC_FIT["w"] for a in MAC_FIT["a"]
            if n * w * a <= _MAX_PP]
    return {
        "table": [Benchmark("table", x, m=32 if x <= 8 else 16) for x in GRIDS["table"]],
        "comparator": [Benchmark("comparator", b, m=32) for b in GRIDS["comparator"]],
        "popcount": [Benchmark("popcount", m) for m in GRIDS["popcount"]],
        "mac": macs,
        "mac_held_out": [Benchmark("mac", n, w, a, _copies(n)) for n, w, a in MAC_HELD_OUT],
    }


def run_benchmarks(
    target: Target,
    benches: Iterable[Benchmark],
    cache: Path,
    yosys: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Measure each benchmark not yet in ``cache`` (a JSON file), sequentially; return all.

    The cache is rewritten (atomically) after every design, so an interrupted run resumes.
    """
    records: dict[str, dict[str, Any]] = {}
    if cache.is_file():
        records = json.loads(cache.read_text())
    ensure_writable_dir(cache.parent)
    for bench in benches:
        if bench.key in records:
            continue
        start = time.perf_counter()
        records[bench.key] = measure(bench, target, yosys)
        log(f"  {bench.key}: {records[bench.key]['luts']} LUTs "
            f"({time.perf_counter() - start:.1f} s)")
        with atomic_write(cache) as tmp:
            tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
    return records


@dataclass(frozen=True)
class Calibration:
    """Fitted coefficients and their measured errors (what goes into the target file)."""

    values: dict[str, Any]
    errors: dict[str, dict[str, float]]


#: Designs are weighted by ``1 / (luts + _SMALL)`` in the fits: relative error for designs
#: well above ``_SMALL`` LUTs, absolute error for the smallest, where yosys folds a product
#: of few bits into a handful of LUTs and a relative error means little.
_SMALL = 20.0


def _rel_lstsq(features: np.ndarray, y: np.ndarray, small: float = _SMALL) -> np.ndarray:
    """Non-negative coefficients minimising ``sum ((pred - y) / (y + small))^2``."""
    weight = 1.0 / (y + small)
    a = features * weight[:, None]
    b = y * weight
    active = list(range(features.shape[1]))
    coef = np.zeros(features.shape[1])
    while active:
        sol = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        if (sol >= 0).all():
            coef[:] = 0
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef


def _errors(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    rel = np.abs(pred - y) / y
    return {"median": float(np.median(rel)), "worst": float(rel.max()), "count": int(len(y))}


def fit(records: dict[str, dict[str, Any]], target: Target) -> Calibration:
    """Fit the MAC, table, comparator and popcount models to measured benchmarks."""
    groups = grid()

    def rows(name: str) -> list[dict[str, Any]]:
        missing = [b.key for b in groups[name] if b.key not in records]
        if missing:
            raise InvalidValueError(f"calibration data lacks {len(missing)} designs, e.g. "
                                    f"{missing[0]}; run the benchmarks first")
        return [records[b.key] for b in groups[name]]

    values: dict[str, Any] = {}
    errors: dict[str, dict[str, float]] = {}
    # MAC layers: per output channel, exact features of the drawn weights.
    fit_rows, held = rows("mac"), rows("mac_held_out")
    feats = np.array([_mean_features(r) for r in fit_rows])
    y = np.array([r["per_copy"] for r in fit_rows], dtype=float)
    coef = _rel_lstsq(feats, y)
    values["mac"] = [round(float(c), 6) for c in coef]
    big = y >= _SMALL  # relative errors of the smallest designs say little (see _SMALL)
    errors["mac_fit"] = _errors((feats @ coef)[big], y[big])
    held_y = np.array([r["per_copy"] for r in held], dtype=float)
    held_exact = np.array([_mean_features(r) for r in held]) @ coef
    errors["mac_held_out_exact"] = _errors(held_exact, held_y)
    held_expected = np.array([_expected(r) for r in held]) @ coef
    errors["mac_held_out"] = _errors(held_expected, held_y)
    fit_expected = np.array([_expected(r) for r in fit_rows])
    errors["mac_fit_expected"] = _errors((fit_expected @ coef)[big], y[big])
    # Truth tables above the LUT size: LUTs per node of the smallest BDD ("bdd") and per
    # random table.
    lut = target.lut_inputs
    tables = [r for r in rows("table") if r["n"] > lut]
    values["table"] = [round(r["luts"] / sum(min_bdd_nodes(t, r["n"]) for t in r["tables"]), 6)
                       for r in tables]
    values["table_random"] = [round(r["per_copy"], 6) for r in tables]
    if lut_model(target).table != "bdd":  # an analytic model: how far from yosys it is
        pred = np.array([node_luts(r["n"], None, target) for r in tables])
        errors["table_random"] = _errors(pred, np.array(values["table_random"]))
    # Comparators: LUTs per comparator by input bits (1 bit: a wire).
    comp = {r["n"]: r["per_copy"] for r in rows("comparator")}
    values["comparator"] = [0.0] + [round(comp.get(b, comp[max(comp)]), 6)
                                    for b in range(2, max(comp) + 1)]
    # Popcounts: a * m + b * m * log2(m) + c, fitted on m >= 4.
    pop = [r for r in rows("popcount") if r["n"] >= 4]
    pf = np.array([popcount_features(r["n"]) for r in pop])
    py = np.array([r["luts"] for r in pop], dtype=float)
    pc = _rel_lstsq(pf, py, small=0.0)
    values["popcount"] = [round(float(c), 6) for c in pc]
    errors["popcount_fit"] = _errors(pf @ pc, py)
    return Calibration(values, errors)


def _expected(record: dict[str, Any]) -> list[float]:
    return [float(f) for f in mac_features_expected(float(record["n"]), record["w"], record["a"])]


def _mean_features(record: dict[str, Any]) -> list[float]:
    per_row = [mac_features_exact(row, record["a"]) for row in record["weights"]]
    return [statistics.fmean(col) for col in zip(*per_row, strict=True)]


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


_BEGIN = "# BEGIN hwnas calibrate"
_END = "# END hwnas calibrate"


def calibration_block(cal: Calibration, target: Target, yosys: str, command: str) -> str:
    """The ``[luts.calibration]`` TOML table written into the target file."""
    lines = [
        f"{_BEGIN}: written by `{command}`; do not edit by hand",
        "[luts.calibration]",
        f"yosys = {_toml_value(yosys)}",
        f"script = {_toml_value(target.synth.script if target.synth else '')}",
        f"mac_features = {_toml_value(list(MAC_FEATURES))}",
    ]
    for key in ("mac", "table", "table_random", "comparator", "popcount"):
        lines.append(f"{key} = {_toml_value(cal.values[key])}")
    lines.append(f"mac_grid = {_toml_value([list(MAC_FIT[k]) for k in ('n', 'w', 'a')])}")
    lines.append(f"mac_held_out = {_toml_value([list(s) for s in MAC_HELD_OUT])}")
    lines.append("[luts.calibration.errors]  # [median, worst] relative error against yosys")
    for name, err in cal.errors.items():
        lines.append(f"{name} = {_toml_value([err['median'], err['worst']])}")
    lines.append(_END)
    return "\n".join(lines) + "\n"


def write_calibration(path: Path, block: str) -> None:
    """Replace (or append) the calibration block of the TOML file at ``path``."""
    text = path.read_text() if path.is_file() else ""
    if _BEGIN in text:
        start = text.index(_BEGIN)
        end = text.index(_END, start) + len(_END)
        text = text[:start] + block.rstrip("\n") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def calibrate(
    target: Target | str,
    out: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    yosys: str | None = None,
    command: str = "hwnas calibrate",
    log: Callable[[str], None] = print,
) -> Calibration:
    """Run the micro-benchmarks for ``target``, fit, and write the target file ``out``.

    ``out`` gets the source target's file with its ``[luts.calibration]`` table replaced
    (the file is created from the shipped one when it does not exist). About 15 minutes of
    yosys for the 101 designs on a busy 2-core machine; the measurements go to ``cache``
    (default: next to ``out``), so a rerun only synthesizes what is missing.

    Returns:
        The :class:`Calibration` written.

    Example:
        >>> cal = calibrate("xc7-lut6", "my-xc7.toml")   # doctest: +SKIP
        >>> cal.errors["mac_held_out"]["median"] <= 0.15   # doctest: +SKIP
        True
    """
    source = target
    target = load_target(target)
    out = Path(out)
    cache = Path(cache) if cache is not None else out.with_suffix(".calibration.json")
    benches = [b for group in grid().values() for b in group]
    log(f"calibrating {target.name}: {len(benches)} designs (cached in {cache})")
    records = run_benchmarks(target, benches, cache, yosys, log)
    cal = fit(records, target)
    versions = sorted({r["yosys"] for r in records.values()})
    if not out.is_file():
        _copy_source(source, target, out)
    write_calibration(out, calibration_block(cal, target, "; ".join(versions), command))
    load_target(out)  # the written file must load
    return cal


def _copy_source(source: Any, target: Target, out: Path) -> None:
    from importlib import resources

    if isinstance(source, (str, Path)) and str(source).endswith(".toml"):
        text = Path(source).read_text()
    else:
        shipped = resources.files("hwnas.cost").joinpath("targets", f"{target.name}.toml")
        text = shipped.read_text()
    ensure_writable_dir(out.parent)
    with atomic_write(out) as tmp:
        tmp.write_text(text)


def _fmt_err(cal: LutCalibration, name: str) -> str:
    err = cal.error(name)
    if not err:
        return "not measured"
    return f"median {err[0]:.1%}, worst {err[1]:.1%}"


def readme_section(target: Target, command: str) -> str:
    """The Markdown section that states the target's fitted formulas, grid and errors."""
    model = lut_model(target)
    cal = model.calibration
    if cal is None:
        raise InvalidValueError(f"target {target.name!r} has no [luts.calibration] table")
    lut = target.lut_inputs
    coef = " + ".join(f"{c:g} * {f}" for c, f in zip(cal.mac, cal.mac_features, strict=True))
    n, w, a = cal.mac_grid
    lines = [
        f"<!-- BEGIN calibration {target.name} -->",
        f"### `{target.name}`: fitted with `{command}`",
        "",
        f"yosys: {cal.yosys}; synthesis command `{cal.script}`.",
        "",
        f"- MAC layers (per output channel, `mac = \"{model.mac}\"`): LUTs = {coef}.",
        f"  Fitted on n in {{{', '.join(map(str, n))}}}, W in {{{', '.join(map(str, w))}}}, "
        f"A in {{{', '.join(map(str, a))}}} (n * W * A <= {_MAX_PP}); error on the fitted "
        f"designs of at least {_SMALL:g} LUTs per output: "
        f"{_fmt_err(cal, 'mac_fit')} (features of the drawn weights), "
        f"{_fmt_err(cal, 'mac_fit_expected')} (smooth estimate).",
        "  Held out (n, W, A): " + ", ".join(f"({s[0]}, {s[1]}, {s[2]})" for s in cal.mac_held_out)
        + f": smooth estimate {_fmt_err(cal, 'mac_held_out')}; with the drawn weights "
        f"{_fmt_err(cal, 'mac_held_out_exact')}.",
    ]
    if model.table == "bdd":
        per = ", ".join(f"X={lut + i + 1}: {c:.3f}" for i, c in enumerate(cal.table))
        lines.append("- Truth tables (`table = \"bdd\"`): LUTs = c_X * nodes of the BDD in its "
                     f"best variable order (`min_bdd_nodes`), {per} (fitted per X on 32 random "
                     "tables; 16 at X = 9).")
    else:
        meas = ", ".join(
            f"X={x}: {c:.2f} (formula {node_luts(x, None, target):g})"
            for x, c in enumerate(cal.table_random, start=lut + 1))
        lines.append(f"- Truth tables (`table = \"{model.table}\"`): measured LUTs per "
                     f"random table (32 nodes; 16 at X = 9): {meas}.")
    comp = ", ".join(f"B={b + 1}: {c:.2f}" for b, c in enumerate(cal.comparator) if b > 0)
    lines.append(f"- Comparators (LUTs each, thermometer of 4 constants per input): {comp}.")
    pc = cal.popcount
    lines.append(f"- Popcount of m bits: {pc[0]:g} * m + {pc[1]:g} * m * log2(m) + {pc[2]:g} "
                 f"(m = 4 .. 256): {_fmt_err(cal, 'popcount_fit')}.")
    lines.append(f"<!-- END calibration {target.name} -->")
    return "\n".join(lines) + "\n"


def write_readme_section(path: Path, target: Target, command: str) -> None:
    """Replace (or append) ``target``'s calibration section of the Markdown file ``path``."""
    begin, end = f"<!-- BEGIN calibration {target.name} -->", \
        f"<!-- END calibration {target.name} -->"
    text = path.read_text() if path.is_file() else ""
    section = readme_section(target, command)
    if begin in text:
        start = text.index(begin)
        stop = text.index(end, start) + len(end) + 1
        text = text[:start] + section + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_write(path) as tmp:
        tmp.write_text(text)
