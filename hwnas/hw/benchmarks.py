"""Micro-benchmarks that calibrate a target's LUT costs: each one a seeded Verilog design.

- ``table``: a layer of random truth tables with ``X`` inputs each (DiffLUT nodes);
- ``comparator``: thermometer comparators of ``B``-bit inputs with random constants;
- ``popcount``: the popcount of ``m`` bits (a GroupSum class);
- ``mac``: ``m`` constant-weight dot products of ``n`` unsigned ``A``-bit inputs with
  uniformly random signed ``W``-bit weights (:mod:`hwnas.hw.macs`); ``n = 1`` is a
  constant multiplier.

:func:`measure` synthesizes one with :func:`hwnas.hw.synthesize` and returns the LUT count
with the features the cost models are fitted on.

Example:
    >>> bench = Benchmark("mac", n=4, w=3, a=2, m=2, seed=0)
    >>> bench.key
    'mac-n4-w3-a2-m2-s0'
    >>> text, meta = bench.verilog()
    >>> meta["weights"]
    [[1, 0, 2, 3], [-1, 0, 2, 1]]
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hwnas.cost.target import Target
from hwnas.errors import InvalidValueError
from hwnas.hw.macs import dot_product_verilog
from hwnas.hw.synth import synthesize

__all__ = ["Benchmark", "measure"]

_KINDS = ("table", "comparator", "popcount", "mac")


@dataclass(frozen=True)
class Benchmark:
    """One micro-benchmark design (all fields that define it, so it can be cached).

    Attributes:
        kind: ``"table"``, ``"comparator"``, ``"popcount"`` or ``"mac"``.
        n: Table inputs ``X`` / comparator bits ``B`` / popcount bits ``m`` / dot-product
            length ``n``.
        w / a: Weight and activation bits (``mac``).
        m: Copies in the design (nodes, comparators, outputs); the count is divided by it.
        seed: Seed of the random tables, constants or weights.
    """

    kind: str
    n: int
    w: int = 0
    a: int = 0
    m: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidValueError(f"`kind` must be one of {_KINDS}, but got {self.kind!r}")

    @property
    def key(self) -> str:
        if self.kind == "mac":
            return f"mac-n{self.n}-w{self.w}-a{self.a}-m{self.m}-s{self.seed}"
        return f"{self.kind}-n{self.n}-m{self.m}-s{self.seed}"

    def verilog(self) -> tuple[str, dict[str, Any]]:
        """The design's Verilog (top module ``top``) and what the fit needs to know of it."""
        rng = random.Random(f"{self.key}")
        if self.kind == "mac":
            lim = 2 ** (self.w - 1) - 1
            weights = [[rng.randint(-lim, lim) for _ in range(self.n)] for _ in range(self.m)]
            text = dot_product_verilog(torch.tensor(weights), self.a, top="top")
            return text, {"weights": weights}
        if self.kind == "table":
            return _tables(self.n, self.m, rng)
        if self.kind == "comparator":
            return _comparators(self.n, self.m, rng), {}
        width = max(1, math.ceil(math.log2(self.n + 1)))
        terms = " + ".join(f"x[{i}]" for i in range(self.n))
        return (f"module top (input wire [{self.n - 1}:0] x, output wire [{width - 1}:0] y);\n"
                f"  assign y = {terms};\nendmodule\n"), {}


def _tables(x: int, nodes: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    n_in = max(8 * x, 64)  # a wide pool, as in a DiffLUT layer: nodes rarely share inputs
    lines = [f"module top (input wire [{n_in - 1}:0] x, output wire [{nodes - 1}:0] y);"]
    tables = []
    for j in range(nodes):
        src = rng.sample(range(n_in), x)
        t = rng.getrandbits(2**x)
        tables.append(t)
        addr = ", ".join(f"x[{s}]" for s in reversed(src))
        lines.append(f"  localparam [{2**x - 1}:0] T{j} = {2**x}'h{t:0{max(1, 2**x // 4)}x};")
        lines.append(f"  assign y[{j}] = T{j}[{{{addr}}}];")
    lines.append("endmodule")
    return "\n".join(lines) + "\n", {"tables": tables}


def _comparators(bits: int, count: int, rng: random.Random) -> str:
    per = 4  # thresholds per feature, as in a thermometer encoder
    features = math.ceil(count / per)
    lines = [f"module top (input wire [{features * bits - 1}:0] x, "
             f"output wire [{features * per - 1}:0] y);"]
    for f in range(features):
        consts = sorted(rng.randrange(0, 2**bits - 1) for _ in range(per))
        for j, c in enumerate(consts):
            lines.append(f"  assign y[{f * per + j}] = x[{(f + 1) * bits - 1}:{f * bits}] > "
                         f"{bits}'d{c};")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def measure(bench: Benchmark, target: Target, yosys: str | None = None) -> dict[str, Any]:
    """Synthesize ``bench`` for ``target``; the record the fit reads (JSON-ready).

    Keys: the benchmark's fields, ``luts`` (total), ``per_copy`` (``luts / m``),
    ``cells``, ``seconds``, ``yosys`` and the design's metadata (weights or tables).
    """
    text, meta = bench.verilog()
    with tempfile.TemporaryDirectory(prefix="hwnas-bench-") as tmp:
        path = Path(tmp) / "bench.v"
        path.write_text(text)
        result = synthesize(path, target, top="top", yosys=yosys)
    return {**asdict(bench), "key": bench.key, "luts": result.luts,
            "per_copy": result.luts / bench.m, "cells": result.cells,
            "seconds": round(result.seconds, 3), "yosys": result.yosys, **meta}
