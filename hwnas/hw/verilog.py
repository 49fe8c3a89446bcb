"""Verilog of a binary LUT network: ``[encoder] -> LUTLayer... -> [GroupSum]``.

Port convention (held by ``tests/test_hw_verilog.py``):

- Combinational by default: ports ``x`` and ``y`` only. With ``pipeline=True`` a clock
  ``clk`` is added and every stage is registered (the encoder's comparators, each LUT
  layer, the GroupSum counts): the output for the input applied before rising edge ``t``
  appears after edge ``t + latency - 1``; one new input per cycle.
- Without an encoder: ``input [N-1:0] x``, bit ``i`` is feature ``i`` (what the model
  thresholds as ``x_i >= 0.5``).
- With an encoder: ``input [F*B-1:0] x``, feature ``f`` is the unsigned ``B``-bit integer at
  bits ``[(f+1)*B-1 : f*B]``; ``B = input_bits`` and the mapping from real values is an
  :class:`InputQuantizer` (``q = clamp(round((v - low) / step), 0, 2^B - 1)``). Each
  threshold ``t`` becomes the integer ``c`` with ``bit = q > c``, where ``c + 1`` is the
  number of grid values ``low + step * q`` that are ``<= t``: for an input on the grid the
  integer comparison is exactly the model's ``v > t``; inputs off the grid are rounded to it
  first, which is the only accuracy the hardware can lose.
- Output ``y``: without a GroupSum, the bits of the last LUT layer (bit ``j`` = node ``j``);
  with one, the per-class popcounts, class ``c`` at bits ``[(c+1)*w-1 : c*w]``,
  ``w = ceil(log2(m+1))``, ``m`` the features per class (the model's scores times ``tau``).

With ``target`` a LUT6 part whose tables are costed as LUT6 + MUXF7/MUXF8 (``xc7-lut6``),
a node of 7 or 8 inputs is written as its 6-input subtables (one per value of the node's
last one or two inputs) joined by instances of the 7-series primitives ``MUXF7`` / ``MUXF8``
(``O = S ? I1 : I0``; yosys's ``synth_xilinx`` and Vivado know them, and
:func:`~hwnas.hw.verify_verilog` simulates them from a model of its own). This is the
structure the slice offers and the estimate counts; written as one 8-input table instead,
yosys's ABC maps some trained tables to 6 to 9 LUTs where 4 do (``reports/hardware.md``).
Without ``target`` the Verilog is portable and instantiates nothing.

What is written is the network after :func:`hwnas.difflut.simplify`: inputs a table ignores
are not wired, constant inputs are folded into the tables, constant nodes become constants
(in the popcounts too), and nodes and comparators nothing reads are not written. The port
widths stay those of the convention; the input bits nothing reads are listed in
:attr:`VerilogModule.unread_inputs`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hwnas._internal.files import atomic_write, ensure_writable_dir
from hwnas.cost.target import Target, load_target
from hwnas.difflut.cost import lut_report
from hwnas.difflut.network import LUTNetwork, SimpleLayer, lut_network, simplify
from hwnas.errors import InvalidTypeError, InvalidValueError, MissingFileError, ShapeError

__all__ = ["InputQuantizer", "Port", "VerilogModule", "export_verilog", "lut_estimate"]

if TYPE_CHECKING:
    import pandas as pd

_MAX_INPUT_BITS = 24


@dataclass(frozen=True)
class InputQuantizer:
    """Real inputs to ``bits``-bit unsigned integers: ``q = clamp(round((v - low) / step))``.

    ``low`` and ``step`` are floats or per-feature tensors. ``dequantize(q) = low + step * q``
    (float32) is the grid; a value on it round-trips exactly.

    Example:
        >>> import torch
        >>> q = InputQuantizer(bits=5, low=0.0, step=1.0)     # digits pixels 0..16: exact
        >>> q.quantize(torch.tensor([[0.0, 16.0, 40.0]])).tolist()
        [[0, 16, 31]]
        >>> InputQuantizer.from_range(2, 0.0, 3.0).step
        1.0
    """

    bits: int
    low: float | Tensor = 0.0
    step: float | Tensor = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) \
                or not 1 <= self.bits <= _MAX_INPUT_BITS:
            raise InvalidValueError(
                f"`bits` must be an integer in [1, {_MAX_INPUT_BITS}], but got {self.bits!r}")
        step = torch.as_tensor(self.step, dtype=torch.float32)
        if not bool(torch.isfinite(step).all()) or not bool((step > 0).all()):
            raise InvalidValueError(f"`step` must be finite and > 0, but got {self.step!r}")
        if not bool(torch.isfinite(torch.as_tensor(self.low, dtype=torch.float32)).all()):
            raise InvalidValueError(f"`low` must be finite, but got {self.low!r}")

    @classmethod
    def from_range(cls, bits: int, low: float | Tensor, high: float | Tensor) -> InputQuantizer:
        """``2^bits`` evenly spaced levels from ``low`` to ``high`` (both on the grid)."""
        lo = torch.as_tensor(low, dtype=torch.float32)
        hi = torch.as_tensor(high, dtype=torch.float32)
        if not bool((hi > lo).all()):
            raise InvalidValueError(f"`input_range` must have high > low, but got ({low}, {high})")
        step = (hi - lo) / (2**bits - 1)
        as_value = (lambda t: float(t)) if step.dim() == 0 else (lambda t: t)  # noqa: E731
        return cls(bits, as_value(lo), as_value(step))

    @property
    def levels(self) -> int:
        return 2**self.bits

    def _low_step(self, features: int) -> tuple[Tensor, Tensor]:
        low = torch.as_tensor(self.low, dtype=torch.float32).expand(features)
        step = torch.as_tensor(self.step, dtype=torch.float32).expand(features)
        return low, step

    def quantize(self, x: Tensor) -> Tensor:
        """(batch, features...) real values -> int64 (batch, features) codes."""
        x = x.detach().float().cpu().reshape(x.shape[0], -1)
        low, step = self._low_step(x.shape[1])
        q = torch.round((x - low) / step)
        return q.clamp(0, self.levels - 1).to(torch.int64)

    def dequantize(self, q: Tensor) -> Tensor:
        """int codes (batch, features) -> the float32 grid values they stand for."""
        low, step = self._low_step(q.shape[1])
        return low + step * q.to(torch.float32)

    def threshold_codes(self, thresholds: Tensor) -> Tensor:
        """int64 (features, bits): ``c`` with ``(v > t) == (q > c)`` for every grid value.

        ``c = -1`` makes the bit always 1, ``c = 2^bits - 1`` always 0.
        """
        features = thresholds.shape[0]
        grid = self.dequantize(torch.arange(self.levels).expand(features, -1).t()).t()
        codes = torch.searchsorted(grid.contiguous(), thresholds.float().contiguous(), right=True)
        return codes - 1


@dataclass(frozen=True)
class Port:
    """A port of the exported module: ``name``, ``direction`` and ``width`` in bits."""

    name: str
    direction: str
    width: int
    description: str


@dataclass(frozen=True)
class VerilogModule:
    """What :func:`export_verilog` wrote.

    Attributes:
        path: The Verilog file.
        top: The module name.
        ports: Its ports, in declaration order.
        in_features: Input features (encoder inputs, or bits without an encoder).
        input_bits: Bits per input feature (1 without an encoder).
        quantizer: How real inputs map to the integer inputs (None without an encoder).
        k_classes: Classes of the GroupSum head (None: ``y`` holds the last layer's bits).
        count_width: Bits per class count ``w`` (1 without a head).
        latency: Clock edges from input to output (0: combinational).
        node_inputs: Per LUT layer, the number of inputs of every node that is built.
        comparators: Encoder comparators that are built.
        constant_nodes: Per LUT layer, nodes that are constants.
        unread_inputs: Input bits no built logic reads (they stay in the port).
        primitives: Device primitives the module instantiates (``MUXF7``, ``MUXF8``), which
            only the target's synthesis flow knows; empty for portable Verilog.
    """

    path: Path
    top: str
    ports: tuple[Port, ...]
    in_features: int
    input_bits: int
    quantizer: InputQuantizer | None
    k_classes: int | None
    count_width: int
    latency: int
    node_inputs: tuple[tuple[int, ...], ...]
    comparators: int
    constant_nodes: tuple[int, ...]
    unread_inputs: tuple[int, ...] = field(default=())
    primitives: tuple[str, ...] = field(default=())

    @property
    def input_width(self) -> int:
        return self.in_features * self.input_bits

    def header(self) -> str:
        """The one-line JSON description written as the file's first comment."""
        q = self.quantizer
        doc = {
            "top": self.top,
            "ports": [[p.name, p.direction, p.width, p.description] for p in self.ports],
            "in_features": self.in_features,
            "input_bits": self.input_bits,
            "quantizer": None if q is None else {
                "bits": q.bits,
                "low": torch.as_tensor(q.low).tolist(),
                "step": torch.as_tensor(q.step).tolist(),
            },
            "k_classes": self.k_classes,
            "count_width": self.count_width,
            "latency": self.latency,
            "node_inputs": [list(n) for n in self.node_inputs],
            "comparators": self.comparators,
            "constant_nodes": list(self.constant_nodes),
            "unread_inputs": list(self.unread_inputs),
            "primitives": list(self.primitives),
        }
        return _HEADER + json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> VerilogModule:
        """Read the description :func:`export_verilog` wrote at the top of ``path``."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"Verilog file {str(path)!r} does not exist")
        with path.open() as f:
            first = f.readline().strip()
        if not first.startswith(_HEADER):
            raise InvalidValueError(
                f"{str(path)!r} was not written by hwnas.hw.export_verilog (its first line "
                f"must start with {_HEADER.strip()!r}); pass the VerilogModule it returned")
        doc = json.loads(first[len(_HEADER):])
        q = doc["quantizer"]
        quantizer = None if q is None else InputQuantizer(
            q["bits"], _scalar_or_tensor(q["low"]), _scalar_or_tensor(q["step"]))
        return cls(
            path=path,
            top=doc["top"],
            ports=tuple(Port(*p) for p in doc["ports"]),
            in_features=doc["in_features"],
            input_bits=doc["input_bits"],
            quantizer=quantizer,
            k_classes=doc["k_classes"],
            count_width=doc["count_width"],
            latency=doc["latency"],
            node_inputs=tuple(tuple(n) for n in doc["node_inputs"]),
            comparators=doc["comparators"],
            constant_nodes=tuple(doc["constant_nodes"]),
            unread_inputs=tuple(doc["unread_inputs"]),
            primitives=tuple(doc.get("primitives", ())),
        )

    @property
    def output_width(self) -> int:
        return next(p.width for p in self.ports if p.name == "y")

    def input_codes(self, x: Tensor) -> Tensor:
        """Real inputs (batch, features...) -> the integer code of each feature (batch, F)."""
        x = x.detach().float().cpu().reshape(x.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise ShapeError(f"inputs must have {self.in_features} features, but got "
                             f"{tuple(x.shape)}")
        if self.quantizer is None:
            return (x >= 0.5).to(torch.int64)
        return self.quantizer.quantize(x)

    def model_inputs(self, codes: Tensor) -> Tensor:
        """The real inputs the hardware computes on for these codes (what to compare)."""
        if self.quantizer is None:
            return codes.to(torch.float32)
        return self.quantizer.dequantize(codes)

    def pack(self, codes: Tensor) -> list[int]:
        """Integer codes (batch, F) -> one integer per vector, the value of port ``x``."""
        out = []
        for row in codes.tolist():
            value = 0
            for f, c in enumerate(row):
                value |= int(c) << (f * self.input_bits)
            out.append(value)
        return out

    def unpack(self, values: list[int]) -> Tensor:
        """Values of port ``y`` -> int64 (batch, outputs): class counts, or bits."""
        w = self.count_width
        n = self.k_classes if self.k_classes is not None else self.output_width
        mask = (1 << w) - 1
        return torch.tensor([[(v >> (i * w)) & mask for i in range(n)] for v in values],
                            dtype=torch.int64).reshape(len(values), n)


_HEADER = "// hwnas-verilog-v1 "


def _scalar_or_tensor(value: float | list[float]) -> float | Tensor:
    return float(value) if not isinstance(value, list) else torch.tensor(value)


def _hex_table(table: int, n_inputs: int) -> str:
    bits = 2**n_inputs
    return f"{bits}'h{table:0{max(1, bits // 4)}x}" if bits >= 4 else f"{bits}'b{table:0{bits}b}"


class _Writer:
    """Builds the module text stage by stage (one job: names and lines)."""

    def __init__(self, pipeline: bool) -> None:
        self.pipeline = pipeline
        self.decls: list[str] = []
        self.body: list[str] = []
        self.regs: list[str] = []
        #: The device primitives the body instantiates.
        self.primitives: set[str] = set()

    def stage_output(self, wire: str) -> str:
        """Name later stages read: the wire, or its register in a pipeline."""
        if not self.pipeline:
            return wire
        self.decls.append(f"  reg {wire}_q;")
        self.regs.append(f"    {wire}_q <= {wire};")
        return f"{wire}_q"


def _comparators(
    net: LUTNetwork, quantizer: InputQuantizer, read: tuple[bool, ...], w: _Writer
) -> tuple[dict[int, str], int]:
    """Encoder bits that are read -> names; their thresholds as integer compares."""
    assert net.thresholds is not None
    codes = quantizer.threshold_codes(net.thresholds)
    per = net.thresholds.shape[1]
    b = quantizer.bits
    names: dict[int, str] = {}
    for i, is_read in enumerate(read):
        if not is_read:
            continue
        f, j = divmod(i, per)
        c = int(codes[f, j])
        wire = f"e{f}_{j}"
        w.decls.append(f"  wire {wire};")
        w.body.append(f"  assign {wire} = x[{(f + 1) * b - 1}:{f * b}] > {b}'d{c};")
        names[i] = w.stage_output(wire)
    return names, len(names)


def _constant_encoder_bits(net: LUTNetwork, quantizer: InputQuantizer) -> dict[int, bool]:
    assert net.thresholds is not None
    codes = quantizer.threshold_codes(net.thresholds).reshape(-1).tolist()
    top = quantizer.levels - 1
    return {i: c < 0 for i, c in enumerate(codes) if c < 0 or c >= top}


def _layer(index: int, layer: SimpleLayer, inputs: dict[int, str], w: _Writer,
           muxf: bool) -> dict[int, str]:
    names: dict[int, str] = {}
    for j in layer.live():
        node = layer.nodes[j]
        wire = f"l{index}_{j}"
        w.decls.append(f"  wire {wire};")
        k = len(node.sources)
        if muxf and k in (7, 8):
            _muxf_node(f"{index}_{j}", wire, node.table, [inputs[s] for s in node.sources], w)
        else:
            address = ", ".join(inputs[s] for s in reversed(node.sources))
            w.decls.append(f"  localparam [{2 ** k - 1}:0] T{index}_{j} = "
                           f"{_hex_table(node.table, k)};")
            w.body.append(f"  assign {wire} = T{index}_{j}[{{{address}}}];")
        names[j] = w.stage_output(wire)
    return names


def _muxf_node(name: str, wire: str, table: int, sources: list[str], w: _Writer) -> None:
    """A 7- or 8-input table as 6-input subtables (LUT6s) joined by MUXF7 / MUXF8: subtable
    ``q`` holds the entries whose address bits 6 (and 7) spell ``q``."""
    address = ", ".join(reversed(sources[:6]))
    subs = []
    for q in range(2 ** (len(sources) - 6)):
        sub = f"s{name}_{q}"
        w.decls.append(f"  wire {sub};")
        w.decls.append(f"  localparam [63:0] T{name}_{q} = "
                       f"{_hex_table((table >> (64 * q)) & (2**64 - 1), 6)};")
        w.body.append(f"  assign {sub} = T{name}_{q}[{{{address}}}];")
        subs.append(sub)
    w.primitives.add("MUXF7")
    if len(subs) == 2:
        w.body.append(f"  MUXF7 m{name} (.O({wire}), .I0({subs[0]}), .I1({subs[1]}), "
                      f".S({sources[6]}));")
        return
    w.primitives.add("MUXF8")
    w.decls.append(f"  wire m{name}_0, m{name}_1;")
    for h in range(2):
        w.body.append(f"  MUXF7 m{name}_{h}i (.O(m{name}_{h}), .I0({subs[2 * h]}), "
                      f".I1({subs[2 * h + 1]}), .S({sources[6]}));")
    w.body.append(f"  MUXF8 m{name} (.O({wire}), .I0(m{name}_0), .I1(m{name}_1), "
                  f".S({sources[7]}));")


def muxf_target(target: Target | str | None) -> bool:
    """Whether an export for ``target`` writes 7- and 8-input tables with MUXF7 / MUXF8."""
    if target is None:
        return False
    t = load_target(target)
    return t.luts is not None and t.luts.table == "muxf" and t.lut_inputs == 6


def _output_bits(layer: SimpleLayer, names: dict[int, str]) -> list[str]:
    return [names[j] if j in names else f"1'b{node.table & 1}"
            for j, node in enumerate(layer.nodes)]


def export_verilog(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_bits: int = 8,
    input_range: tuple[float | Tensor, float | Tensor] | None = None,
    quantizer: InputQuantizer | None = None,
    pipeline: bool = False,
    top: str = "hwnas_lut_net",
    target: Target | str | None = None,
) -> VerilogModule:
    """Write ``model``'s binary LUT network as one synthesizable Verilog-2001 module.

    The port convention is in this module's docstring (:mod:`hwnas.hw.verilog`).

    Args:
        model: ``[ThermometerEncoder] -> LUTLayer... -> [GroupSum]`` (see
            :func:`hwnas.difflut.lut_network`).
        path: The ``.v`` file to write (atomically).
        input_bits: Bits per input feature, with an encoder.
        input_range: ``(low, high)`` of the real inputs (floats or per-feature tensors),
            mapped to ``2^input_bits`` evenly spaced levels; needed with an encoder unless
            ``quantizer`` is given.
        quantizer: The input mapping itself (e.g. ``InputQuantizer(5, low=0, step=1)`` for
            integer pixels 0..16, which loses nothing).
        pipeline: Register every stage (adds ``clk``; see :attr:`VerilogModule.latency`).
        top: Module name (a Verilog identifier).
        target: The FPGA the Verilog is for. With a LUT6 target whose tables are costed
            with MUXF7 / MUXF8 (``"xc7-lut6"``), 7- and 8-input nodes instantiate those
            primitives (see the module docstring); ``None`` writes portable Verilog.

    Returns:
        A :class:`VerilogModule` naming the module, its ports and what was built.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from hwnas.difflut import GroupSum, LUTLayer
        >>> model = nn.Sequential(LUTLayer(6, 8, k=3, seed=0), GroupSum(2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     v = export_verilog(model, f"{d}/net.v")
        >>> v.top, [(p.name, p.width) for p in v.ports], v.count_width
        ('hwnas_lut_net', [('x', 6), ('y', 6)], 3)
    """
    if not isinstance(top, str) or not top.isidentifier():
        raise InvalidValueError(f"`top` must be a Verilog identifier, but got {top!r}")
    if not isinstance(pipeline, bool):
        raise InvalidTypeError(f"`pipeline` must be True or False, but got {pipeline!r}")
    muxf = muxf_target(target)
    net = lut_network(model)
    if net.thresholds is not None:
        if quantizer is None:
            if input_range is None:
                raise InvalidValueError(
                    "a model with an encoder needs `input_range=(low, high)` of its real "
                    "inputs (or `quantizer=`): the hardware reads `input_bits`-bit integers")
            quantizer = InputQuantizer.from_range(input_bits, *input_range)
        constant = _constant_encoder_bits(net, quantizer)
        bits = quantizer.bits
    else:
        quantizer, constant, bits = None, {}, 1
    layers, read = simplify(net, constant)
    w = _Writer(pipeline)
    if quantizer is not None:
        inputs, comparators = _comparators(net, quantizer, read, w)
    else:
        inputs = {i: f"x[{i}]" for i, r in enumerate(read) if r}
        comparators = 0
    for i, layer in enumerate(layers):
        inputs = _layer(i, layer, inputs, w, muxf)
    outs = _output_bits(layers[-1], inputs)
    if net.k_classes is None:
        width, count_width = len(outs), 1
        w.body.append(f"  assign y = {{{', '.join(reversed(outs))}}};")
    else:
        m = len(outs) // net.k_classes
        count_width = max(1, math.ceil(math.log2(m + 1)))
        width = count_width * net.k_classes
        target = "y_sum" if pipeline else "y"
        if pipeline:
            w.decls.append(f"  wire [{width - 1}:0] y_sum;")
            w.decls.append(f"  reg [{width - 1}:0] y_q;")
            w.regs.append("    y_q <= y_sum;")
            w.body.append("  assign y = y_q;")
        for c in range(net.k_classes):
            terms = outs[c * m:(c + 1) * m]
            ones = sum(t == "1'b1" for t in terms)
            wires = [t for t in terms if not t.startswith("1'b")]
            expr = " + ".join([*wires, f"{count_width}'d{ones}"])
            w.body.append(f"  assign {target}[{(c + 1) * count_width - 1}:{c * count_width}] = "
                          f"{expr};")
    if net.thresholds is None:
        in_features = net.in_features
    else:
        in_features = int(net.thresholds.shape[0])
    latency = (int(quantizer is not None) + len(layers) + int(net.k_classes is not None)
               if pipeline else 0)
    ports = _ports(in_features, bits, width, net.k_classes, count_width, pipeline)
    path = Path(path)
    if quantizer is None:
        unread = tuple(i for i, r in enumerate(read) if not r)
    else:
        per = int(net.thresholds.shape[1]) if net.thresholds is not None else 1
        unread = tuple(f for f in range(in_features) if not any(read[f * per:(f + 1) * per]))
    module = VerilogModule(
        path=path,
        top=top,
        ports=ports,
        in_features=in_features,
        input_bits=bits,
        quantizer=quantizer,
        k_classes=net.k_classes,
        count_width=count_width,
        latency=latency,
        node_inputs=tuple(tuple(len(layer.nodes[j].sources) for j in layer.live())
                          for layer in layers),
        comparators=comparators,
        constant_nodes=tuple(sum(n.is_constant for n in layer.nodes) for layer in layers),
        unread_inputs=unread,
        primitives=tuple(sorted(w.primitives)),
    )
    text = _module_text(module, w, net)
    ensure_writable_dir(path.parent)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return module


def _ports(in_features: int, bits: int, width: int, k_classes: int | None, count_width: int,
           pipeline: bool) -> tuple[Port, ...]:
    if bits == 1:
        x_doc = "bit i = input feature i (the model's x_i >= 0.5)"
    else:
        x_doc = f"feature f = unsigned {bits}-bit code at [(f+1)*{bits}-1 : f*{bits}]"
    if k_classes is None:
        y_doc = "bit j = node j of the last LUT layer"
    else:
        y_doc = f"class c popcount at [(c+1)*{count_width}-1 : c*{count_width}]"
    ports = [Port("x", "input", in_features * bits, x_doc),
             Port("y", "output", width, y_doc)]
    if pipeline:
        ports.insert(0, Port("clk", "input", 1, "every stage registers on the rising edge"))
    return tuple(ports)


def _module_text(module: VerilogModule, w: _Writer, net: LUTNetwork) -> str:
    top, ports, quantizer, latency = module.top, module.ports, module.quantizer, module.latency
    head = [module.header(),
            f"// {top}: binary LUT network exported by hwnas (hwnas.hw.export_verilog).",
            f"// {len(net.layers)} LUT layer(s); "
            + ("combinational." if latency == 0 else f"pipelined, latency {latency} cycles.")]
    if quantizer is not None:
        head.append(f"// Inputs: {quantizer.bits}-bit codes q = clamp(round((v - low) / step)); "
                    "encoder bit = q > code(threshold).")
    for p in ports:
        head.append(f"//   {p.direction} {p.name}[{p.width - 1}:0]: {p.description}")
    decl = []
    for p in ports:
        kind = "output wire" if p.direction == "output" else "input wire"
        rng = f"[{p.width - 1}:0] " if p.width > 1 or p.name != "clk" else ""
        decl.append(f"  {kind} {rng}{p.name}")
    lines = [*head, f"module {top} (", ",\n".join(decl), ");", *w.decls, *w.body]
    if w.regs:
        lines += ["  always @(posedge clk) begin", *w.regs, "  end"]
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def lut_estimate(model: nn.Module, target: Target | str, module: VerilogModule) -> pd.DataFrame:
    """:func:`hwnas.difflut.lut_report` of what ``module`` builds: its input width and the
    encoder bits its quantizer makes constant.

    Example:
        >>> import tempfile
        >>> from hwnas.difflut import GroupSum, LUTLayer
        >>> model = nn.Sequential(LUTLayer(8, 6, k=7, seed=0), GroupSum(2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     v = export_verilog(model, f"{d}/n.v")
        >>> lut_estimate(model, "xc7-lut6", v)["luts"].tolist()[0]   # 6 nodes of 2 LUT6
        12.0
    """
    target = load_target(target)
    net = lut_network(model)
    constants: dict[int, bool] = {}
    if module.quantizer is not None and net.thresholds is not None:
        constants = _constant_encoder_bits(net, module.quantizer)
        target = dataclasses.replace(target, activation_bits=module.input_bits)
    return lut_report(model, target, constants)
