"""Simulation parity: run exported Verilog in a real simulator and compare with PyTorch.

:func:`verify_verilog` writes a testbench that reads the input vectors from a hex file,
applies them to the module (one per step; in a pipeline one per clock, reading each result
``latency`` edges later) and writes ``y`` to a hex file. It runs Icarus Verilog or
Verilator (:func:`hwnas.hw.tools.find_simulator`) and compares every output bit for bit
with :func:`hwnas.difflut.binary_inference_module` on the inputs the hardware sees
(:meth:`~hwnas.hw.verilog.VerilogModule.model_inputs`).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from hwnas.difflut.export import binary_inference_module
from hwnas.errors import ExportError, InvalidTypeError, ShapeError, ToolError
from hwnas.hw.tools import Tool, find_simulator, run_tool
from hwnas.hw.verilog import VerilogModule

__all__ = ["SimulationResult", "verify_verilog"]

_TB = "hwnas_tb"


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`verify_verilog` ran and found.

    Attributes:
        vectors: Input vectors simulated; all matched (a mismatch raises).
        simulator: The simulator, its version and where it came from.
        seconds: Wall time of compile and run.
        outputs: The simulated outputs, int64 (vectors, classes or bits).
    """

    vectors: int
    simulator: str
    seconds: float
    outputs: Tensor


def _testbench(vm: VerilogModule, n: int) -> str:
    in_w, out_w = vm.input_width, vm.output_width
    clocked = vm.latency > 0
    steps = n + vm.latency - 1 if clocked else n
    lines = [
        "`timescale 1ns/1ps",
        f"module {_TB};",
        f"  reg [{in_w - 1}:0] vectors [0:{n - 1}];",
        f"  reg [{in_w - 1}:0] x;",
        f"  wire [{out_w - 1}:0] y;",
        "  reg clk;",
        "  integer i, f;",
        f"  {vm.top} dut (" + (".clk(clk), " if clocked else "") + ".x(x), .y(y));",
        "  initial begin",
        '    $readmemh("inputs.hex", vectors);',
        '    f = $fopen("outputs.hex", "w");',
        "    clk = 0;",
        "    x = 0;",
        f"    for (i = 0; i < {steps}; i = i + 1) begin",
        f"      if (i < {n}) x = vectors[i];",
    ]
    if clocked:
        lines += ["      #1 clk = 1;", "      #1 clk = 0;",
                  f'      if (i >= {vm.latency - 1}) $fwrite(f, "%h\\n", y);']
    else:
        lines += ["      #1;", '      $fwrite(f, "%h\\n", y);']
    lines += ["    end", "    $fclose(f);", "    $finish;", "  end", "endmodule"]
    return "\n".join(lines) + "\n"


#: Simulation models of the device primitives an export may instantiate (the 7-series
#: wide-function muxes: ``O = S ? I1 : I0``).
_PRIMITIVE_MODELS = {
    name: f"module {name} (output wire O, input wire I0, input wire I1, input wire S);\n"
          "  assign O = S ? I1 : I0;\nendmodule\n"
    for name in ("MUXF7", "MUXF8")
}


def _primitive_models(vm: VerilogModule, work: Path) -> list[str]:
    """Write the models of the primitives ``vm`` instantiates; their file names."""
    unknown = sorted(set(vm.primitives) - set(_PRIMITIVE_MODELS))
    if unknown:
        raise ExportError(f"{vm.path.name} instantiates {unknown}, which hwnas has no "
                          f"simulation model of (known: {sorted(_PRIMITIVE_MODELS)})")
    if not vm.primitives:
        return []
    (work / "hwnas_primitives.v").write_text("".join(_PRIMITIVE_MODELS[p] for p in vm.primitives))
    return ["hwnas_primitives.v"]


def _run(sim: Tool, work: Path, design: Path, timeout: float | None,
         extra: list[str]) -> None:
    sources = [f"{_TB}.v", str(design), *extra]
    if sim.name == "iverilog":
        run_tool(sim, ["-g2005", "-o", "sim.vvp", "-s", _TB, *sources], work, timeout)
        vvp = Tool("vvp", (sim.env["HWNAS_VVP"],), sim.source)
        run_tool(vvp, ["-n", "sim.vvp"], work, timeout)
        return
    args = ["--binary", "--timing", "-j", "1", "-Wno-fatal", "-Wno-lint", "-Wno-style",
            "--top-module", _TB, "-Mdir", "obj", "-CFLAGS", "-std=c++20", *sources]
    run_tool(sim, args, work, timeout, log="verilator.log")
    run_tool(Tool("sim", (str(work / "obj" / f"V{_TB}"),), sim.source), [], work, timeout)


def _read_outputs(path: Path, n: int) -> list[int]:
    if not path.is_file():
        raise ToolError(f"the simulator wrote no {path.name}")
    lines = path.read_text().split()
    if len(lines) != n:
        raise ToolError(f"the simulator wrote {len(lines)} output vectors, expected {n}")
    values = []
    for i, line in enumerate(lines):
        if any(c in "xXzZ" for c in line):
            raise ExportError(f"vector {i}: the Verilog output has unknown bits ({line})")
        values.append(int(line, 16))
    return values


def verify_verilog(
    model: nn.Module,
    path: str | os.PathLike[str] | VerilogModule,
    inputs: Tensor,
    *,
    timeout: float | None = 1800,
    workdir: str | os.PathLike[str] | None = None,
) -> SimulationResult:
    """Simulate the exported Verilog on ``inputs`` and require equality with PyTorch.

    The reference is ``binary_inference_module(model, divide_by_tau=False)`` on the inputs
    as the hardware sees them (thresholded bits, or the quantised grid values with an
    encoder), so every class count or output bit must be equal.

    Args:
        model: The LUT network the file was exported from.
        path: The file written by :func:`~hwnas.hw.export_verilog`, or its return value.
        inputs: Real inputs (batch, features...).
        timeout: Seconds allowed for each compile and run.
        workdir: Keep the testbench and simulator files here (default: a temporary folder).

    Returns:
        A :class:`SimulationResult` (only when every vector matches).

    Raises:
        hwnas.ExportError: the first vector whose output differs, with both values.
        hwnas.errors.ToolError: no simulator, or it failed.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from hwnas.difflut import GroupSum, LUTLayer
        >>> from hwnas.hw import export_verilog
        >>> model = nn.Sequential(LUTLayer(6, 8, k=3, seed=0), GroupSum(2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     v = export_verilog(model, f"{d}/net.v")
        ...     verify_verilog(model, v, torch.rand(16, 6)).vectors   # doctest: +SKIP
        16
    """
    vm = path if isinstance(path, VerilogModule) else VerilogModule.from_file(path)
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] < 1:
        raise InvalidTypeError("`inputs` must be a tensor of shape (batch, features...)")
    codes = vm.input_codes(inputs)
    with torch.no_grad():
        reference = binary_inference_module(model, divide_by_tau=False).cpu()(
            vm.model_inputs(codes))
    expected = reference.round().to(torch.int64)
    if expected.shape[1] != (vm.k_classes or vm.output_width):
        raise ShapeError(f"the model gives {expected.shape[1]} outputs, the Verilog "
                         f"{vm.k_classes or vm.output_width}: was it exported from this model?")
    sim = find_simulator()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwnas-sim-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        width = (vm.input_width + 3) // 4
        (work / "inputs.hex").write_text(
            "".join(f"{v:0{width}x}\n" for v in vm.pack(codes)))
        (work / f"{_TB}.v").write_text(_testbench(vm, len(codes)))
        _run(sim, work, vm.path.resolve(), timeout, _primitive_models(vm, work))
        got = vm.unpack(_read_outputs(work / "outputs.hex", len(codes)))
    seconds = time.perf_counter() - start
    bad = (got != expected).any(1).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise ExportError(
            f"Verilog differs from PyTorch on {len(bad)} of {len(codes)} vectors; first: "
            f"vector {i}, input codes {codes[i].tolist()}, expected {expected[i].tolist()}, "
            f"simulated {got[i].tolist()} ({sim.describe()})")
    return SimulationResult(len(codes), sim.describe(), seconds, got)
