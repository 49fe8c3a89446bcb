"""LUTs of truth-table nodes on LUT-based FPGAs: BDD sizes and the per-target table model.

- :func:`bdd_nodes` / :func:`min_bdd_nodes`: reduced ordered BDD sizes of a table;
- :func:`node_luts`: LUTs of one node of ``X`` inputs, with or without its table;
- :func:`table_luts`: :func:`node_luts` of nodes with unknown tables, elementwise;
- :func:`lut_model`: a target's LUT model (an error names the targets that have one).

The formulas and the measurements behind them are in ``hwnas/cost/targets/DIFFLUT.md``.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
from torch import Tensor

from hwnas.cost.target import LutCalibration, LutModel, Target, known_targets, load_target
from hwnas.errors import InvalidValueError

__all__ = ["bdd_nodes", "lut_model", "min_bdd_nodes", "node_luts", "table_luts"]


def lut_model(target: Target) -> LutModel:
    """The target's LUT model, or an InvalidValueError naming the targets that have one.

    Example:
        >>> lut_model(load_target("xc7-lut6")).table
        'muxf'
    """
    if target.luts is None:
        lut_targets = [t for t in known_targets() if load_target(t).luts is not None]
        raise InvalidValueError(
            f"target {target.name!r} has no LUT model; use one of {', '.join(lut_targets)} "
            "or a target file with a [luts] table"
        )
    return target.luts


def _calibration(target: Target, what: str) -> LutCalibration:
    cal = lut_model(target).calibration
    if cal is None:
        raise InvalidValueError(f"target {target.name!r} has no [luts.calibration] ({what}); "
                                "run `hwnas calibrate TARGET`")
    return cal




def _cube(table: int, x: int) -> np.ndarray:
    """The table as a ``(2,) * x`` array; axis ``i`` is address bit ``x - 1 - i``."""
    return np.array([(table >> a) & 1 for a in range(2**x)], dtype=np.uint8).reshape((2,) * x)


@functools.lru_cache(maxsize=1 << 16)
def bdd_nodes(table: int, x: int) -> int:
    """Nodes of the reduced ordered BDD of an ``x``-input table, top variable = MSB.

    Bit ``a`` of ``table`` is the output at address ``a``. Fixing the top ``j`` address bits
    leaves the contiguous blocks of ``2^(x-j)`` entries; level ``j`` has one node per
    distinct block whose two halves differ. This is the mux tree yosys builds from
    ``T[{...}]`` after merging equal subtrees.

    Example:
        >>> bdd_nodes(0b0110, 2), bdd_nodes(0b1000, 2), bdd_nodes(0b1010, 2)  # xor, and, a0
        (3, 2, 1)
    """
    bits = _cube(table, x).reshape(-1)
    total = 0
    for j in range(x):
        blocks = bits.reshape(2**j, 2 ** (x - j))
        half = 2 ** (x - j - 1)
        differ = (blocks[:, :half] != blocks[:, half:]).any(1)
        if differ.any():
            total += len({b.tobytes() for b in blocks[differ]})
    return total


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows of a small 0/1 matrix, in order of first appearance (a dict of
    bytes is ten times faster than ``np.unique(axis=0)`` at these sizes)."""
    first: dict[bytes, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row.tobytes(), i)
    return rows[list(first.values())]


@functools.lru_cache(maxsize=1 << 16)
def min_bdd_nodes(table: int, x: int) -> int:
    """Nodes of the smallest reduced ordered BDD of an ``x``-input table over all orders.

    Exact, by dynamic programming over the sets of variables placed above a level
    (Friedman and Supowit): with the set ``S`` above, variable ``v`` gets one node per
    distinct cofactor of the table over ``S`` that depends on ``v``. ``2^x`` sets, so it is
    meant for node tables (``x <= 10``); a structured (trained) table often has a far
    smaller BDD in another order than in :func:`bdd_nodes`'s fixed one, and yosys/ABC
    finds that structure.

    Example:
        >>> g = int("".join("1" if ((a >> 3) & (a & 1)) | ((a >> 2) & (a >> 1) & 1) else "0"
        ...                 for a in reversed(range(16))), 2)
        >>> bdd_nodes(g, 4), min_bdd_nodes(g, 4)  # a3 a0 | a2 a1: pairs apart, pairs together
        (6, 4)
    """
    if x > 10:
        raise InvalidValueError(f"`x` must be <= 10 for an exact BDD minimum, but got {x}")
    cube = _cube(table, x)
    full = (1 << x) - 1
    unset = np.iinfo(np.int64).max
    best = np.full(1 << x, unset, dtype=np.int64)
    best[0] = 0
    for above in range(full):
        if best[above] == unset:
            continue
        top = [i for i in range(x) if above >> i & 1]
        rest = [i for i in range(x) if not above >> i & 1]
        rows = cube.transpose(top + rest).reshape(1 << len(top), 1 << len(rest))
        distinct = _distinct_rows(rows).reshape((-1,) + (2,) * len(rest))
        for j, v in enumerate(rest):
            lo, hi = np.take(distinct, 0, axis=1 + j), np.take(distinct, 1, axis=1 + j)
            nodes = int((lo != hi).reshape(len(distinct), -1).any(1).sum())
            below = above | (1 << v)
            best[below] = min(best[below], best[above] + nodes)
    return int(best[full])


def _beyond(values: tuple[float, ...], over: int, grow: float) -> float:
    """``values[over - 1]``, extrapolated by ``grow`` per extra input past the last."""
    if over <= len(values):
        return values[over - 1]
    return values[-1] * grow ** (over - len(values))


def _table(cube: np.ndarray) -> int:
    return sum(int(b) << a for a, b in enumerate(cube.reshape(-1).tolist()))


def _essential(cube: np.ndarray) -> np.ndarray:
    """The table without the inputs it does not depend on."""
    for axis in reversed(range(cube.ndim)):
        lo, hi = np.take(cube, 0, axis=axis), np.take(cube, 1, axis=axis)
        if (lo == hi).all():
            cube = lo
    return cube


@functools.lru_cache(maxsize=1 << 16)
def _decomposed_luts(table: int, x: int, lut: int, per_node: tuple[float, ...]) -> float:
    """LUTs of a table with more inputs than a LUT: ``c_X * min_bdd_nodes``, or fewer when
    the table splits as ``f = h(g(A), B)`` with ``g`` one LUT (Ashenhurst's simple
    decomposition: fixing ``A`` to each of its values leaves at most two distinct functions
    of ``B``); then ``1 + luts(h)``, recursively. Bound sets from ``lut`` inputs down to 2;
    the first size that saves LUTs is taken."""
    cube = _essential(_cube(table, x))
    n = cube.ndim
    if n <= 1:
        return 0.0  # a literal: the LUT that reads it absorbs it
    if n <= lut:
        return 1.0
    best = base = _beyond(per_node, n - lut, 1.0) * min_bdd_nodes(_table(cube), n)
    for size in range(lut, 1, -1):
        for bound in itertools.combinations(range(n), size):
            free = [i for i in range(n) if i not in bound]
            rows = cube.transpose(list(bound) + free).reshape(1 << size, 1 << len(free))
            distinct = _distinct_rows(rows)
            if len(distinct) == 2:  # h(y, B) = distinct[y](B)
                h = distinct.reshape((2,) * (len(free) + 1))
                best = min(best, 1.0 + _decomposed_luts(_table(h), h.ndim, lut, per_node))
        if best < base:
            break
    return best


def node_luts(x: int, table: int | None, target: Target | str) -> float:
    """Physical LUTs of one node with ``x`` effective inputs (and its table, if known).

    ``x = 0``: 0 (a constant). ``x = 1``: 0 for a wire (table ``0b10``), else 1. Up to
    ``L = lut_inputs``: 1. Above, by the target's ``table`` model:

    - ``"muxf"`` (7-series): ``2^(X-L)`` LUTs joined by MUXF7/MUXF8 up to ``X = L + 2``;
      above, the ``2^(X-L-2)`` MUXF8 outputs go through a tree of 4:1 muxes, one LUT each.
    - ``"bdd"`` (iCE40): ``c_X * min_bdd_nodes(table)`` (the BDD in its best variable
      order), ``c_X`` fitted per ``X``, or less where the table decomposes as
      ``h(g(A), B)`` with ``g`` one LUT (``1 + LUTs of h``); without a table, the measured
      mean of random tables.
    - ``"logicnets"``: ``(2^(X-4) - (-1)^X) / 3``; ``"shannon"``: ``2^(X-L+1) - 1``.

    Example:
        >>> [node_luts(x, None, "xc7-lut6") for x in (0, 6, 7, 8)]
        [0.0, 1.0, 2.0, 4.0]
    """
    target = load_target(target)
    model = lut_model(target)
    lut = target.lut_inputs
    if x < 0:
        raise InvalidValueError(f"`x` must be >= 0, but got {x!r}")
    if x == 0:
        return 0.0
    if x <= lut:
        return 0.0 if (x == 1 and table == 0b10) else 1.0
    over = x - lut
    if model.table == "muxf":
        if over <= 2:
            return float(2**over)
        return float(2**over + math.ceil((2 ** (over - 2) - 1) / 3))
    if model.table == "bdd":
        cal = _calibration(target, "table")
        if table is None:
            return _beyond(cal.table_random, over, 2.0)
        return _decomposed_luts(table, x, lut, tuple(cal.table))
    if model.table == "logicnets":
        return float(round((2.0 ** (x - 4) - (1 if x % 2 == 0 else -1)) / 3))
    return float(2 ** (over + 1) - 1)


def table_luts(k_eff: Tensor | int, target: Target | str) -> Tensor:
    """:func:`node_luts` of nodes with ``k_eff`` inputs and unknown tables (elementwise).

    Example:
        >>> table_luts(torch.tensor([0, 4, 6, 7, 8]), "xc7-lut6").tolist()
        [0.0, 1.0, 1.0, 2.0, 4.0]
    """
    target = load_target(target)
    x = torch.as_tensor(k_eff)
    if bool((x < 0).any()):
        raise InvalidValueError(f"`k_eff` must be >= 0, but got {k_eff!r}")
    values = [node_luts(int(v), None, target) for v in x.reshape(-1).tolist()]
    return torch.tensor(values, dtype=torch.float32).reshape(x.shape)
