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
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from hwnas._internal.files import atomic_write, ensure_writable_dir
from hwnas.cost.target import Target, load_target
from hwnas.difflut.cost import lut_report
from hwnas.difflut.network import LUTNetwork, SimpleLayer, lut_network, simplify
from hwnas.errors import InvalidTypeError, InvalidValueError
from hwnas.hw.design import InputQuantizer, Port, VerilogModule

__all__ = ["InputQuantizer", "Port", "VerilogModule", "export_verilog", "lut_estimate"]

if TYPE_CHECKING:
    import pandas as pd

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
    quantizer = _quantizer(net, quantizer, input_range, input_bits)
    bits = quantizer.bits if quantizer is not None else 1
    layers, read = simplify(net, _constant_encoder_bits(net, quantizer) if quantizer else {})
    w = _Writer(pipeline)
    if quantizer is not None:
        inputs, comparators = _comparators(net, quantizer, read, w)
    else:
        inputs = {i: f"x[{i}]" for i, r in enumerate(read) if r}
        comparators = 0
    for i, layer in enumerate(layers):
        inputs = _layer(i, layer, inputs, w, muxf)
    width, count_width = _outputs(_output_bits(layers[-1], inputs), net.k_classes, w,
                                  pipeline)
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


def _quantizer(net: LUTNetwork, quantizer: InputQuantizer | None,
               input_range: tuple[float | Tensor, float | Tensor] | None,
               input_bits: int) -> InputQuantizer | None:
    """How real inputs reach the encoder's comparators (None without an encoder)."""
    if net.thresholds is None:
        return None
    if quantizer is not None:
        return quantizer
    if input_range is None:
        raise InvalidValueError(
            "a model with an encoder needs `input_range=(low, high)` of its real inputs (or "
            "`quantizer=`): the hardware reads `input_bits`-bit integers")
    return InputQuantizer.from_range(input_bits, *input_range)


def _outputs(outs: list[str], k_classes: int | None, w: _Writer,
             pipeline: bool) -> tuple[int, int]:
    """Drive ``y``: the last layer's bits, or the per-class popcounts (registered when
    pipelined); ``(width of y, bits per count)``."""
    if k_classes is None:
        w.body.append(f"  assign y = {{{', '.join(reversed(outs))}}};")
        return len(outs), 1
    m = len(outs) // k_classes
    count_width = max(1, math.ceil(math.log2(m + 1)))
    width = count_width * k_classes
    target = "y_sum" if pipeline else "y"
    if pipeline:
        w.decls.append(f"  wire [{width - 1}:0] y_sum;")
        w.decls.append(f"  reg [{width - 1}:0] y_q;")
        w.regs.append("    y_q <= y_sum;")
        w.body.append("  assign y = y_q;")
    for c in range(k_classes):
        terms = outs[c * m:(c + 1) * m]
        ones = sum(t == "1'b1" for t in terms)
        wires = [t for t in terms if not t.startswith("1'b")]
        expr = " + ".join([*wires, f"{count_width}'d{ones}"])
        w.body.append(f"  assign {target}[{(c + 1) * count_width - 1}:{c * count_width}] = "
                      f"{expr};")
    return width, count_width


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
