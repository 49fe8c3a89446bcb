"""Synthesis with yosys, counts read from yosys's own ``stat``, optional nextpnr-ice40 P&R.

:func:`synthesize` runs ``read_verilog; hierarchy -top TOP; <target script> -top TOP;
stat -json`` in a work folder and sorts ``num_cells_by_type`` of the design into LUTs,
carry cells, wide-function muxes and flip-flops with the target's ``[synth]`` patterns
(``hwnas/cost/targets/*.toml``). Place and route (iCE40 targets) wraps the design in a small
shell: the inputs arrive through a shift register (one pin) and the outputs leave as their
XOR, registered (one pin), so a design with more ports than the package has pins still
places, and the path from the input flip-flops through the design to the output
flip-flop gives an Fmax. The shell adds ``input bits + 1`` flip-flops and the XOR tree.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hwnas.cost.target import Target, load_target
from hwnas.errors import InvalidTypeError, InvalidValueError, MissingFileError, ToolError
from hwnas.hw.tools import Tool, find_nextpnr_ice40, find_yosys, run_tool
from hwnas.hw.verilog import VerilogModule, export_verilog, muxf_target

__all__ = ["PlaceRouteResult", "SynthResult", "count_cells", "synthesize"]


@dataclass(frozen=True)
class PlaceRouteResult:
    """What nextpnr-ice40 reported.

    Attributes:
        device / package: The part placed on.
        utilisation: Bel type -> (used, available), e.g. ``{"ICESTORM_LC": (812, 5280)}``.
        fmax_mhz: Clock name -> achieved Fmax in MHz.
        seconds: Wall time of place and route.
    """

    device: str
    package: str
    utilisation: dict[str, tuple[int, int]]
    fmax_mhz: dict[str, float]
    seconds: float

    @property
    def logic_cells(self) -> tuple[int, int]:
        return self.utilisation.get("ICESTORM_LC", (0, 0))


@dataclass(frozen=True)
class SynthResult:
    """Cell counts of one yosys run (from ``stat -json``), sorted with the target's patterns.

    Attributes:
        target: Target name.
        top: The synthesized module.
        script: The yosys synthesis command.
        yosys: Its version and where it came from.
        cells: Every cell type and its count, as yosys reported them.
        luts_by_type / muxes_by_type: The LUT and mux cells by type.
        carries: Carry cells (CARRY4, SB_CARRY).
        flip_flops: Flip-flop cells.
        seconds: Wall time of the yosys run.
        pnr: Place-and-route result, when asked for.
    """

    target: str
    top: str
    script: str
    yosys: str
    cells: dict[str, int]
    luts_by_type: dict[str, int]
    carries: int
    muxes_by_type: dict[str, int]
    flip_flops: int
    seconds: float
    pnr: PlaceRouteResult | None = field(default=None)

    @property
    def luts(self) -> int:
        """All LUT cells (on xc7: LUT1..LUT6 and INV; on iCE40: SB_LUT4)."""
        return sum(self.luts_by_type.values())

    @property
    def muxes(self) -> int:
        return sum(self.muxes_by_type.values())


def count_cells(cells: dict[str, int], target: Target | str) -> dict[str, Any]:
    """Sort yosys cell counts into ``luts_by_type``, ``carries``, ``muxes_by_type``, ``flip_flops``.

    Example:
        >>> count_cells({"LUT6": 4, "MUXF7": 2, "MUXF8": 1, "IBUF": 8}, "xc7-lut6")["luts_by_type"]
        {'LUT6': 4}
    """
    spec = _synth_spec(load_target(target))

    def pick(patterns: tuple[str, ...]) -> dict[str, int]:
        return {c: n for c, n in sorted(cells.items())
                if any(fnmatch.fnmatchcase(c, p) for p in patterns)}

    return {
        "luts_by_type": pick(spec.lut_cells),
        "carries": sum(pick(spec.carry_cells).values()),
        "muxes_by_type": pick(spec.mux_cells),
        "flip_flops": sum(pick(spec.ff_cells).values()),
    }


def _synth_spec(target: Target):
    if target.synth is None:
        raise InvalidValueError(
            f"target {target.name!r} has no [synth] table (a yosys script); use xc7-lut6, "
            "ice40-lut4 or a target file with one")
    return target.synth


def _design(design: Any, work: Path, target: Target, top: str | None,
            export_options: dict[str, Any]) -> tuple[Path, str, VerilogModule | None]:
    """The Verilog file (copied into ``work``) and its top module."""
    if isinstance(design, nn.Module):
        from hwnas.difflut.layers import ENCODERS, LUTLayer

        if any(isinstance(m, (LUTLayer, *ENCODERS)) for m in design.modules()):
            vm = export_verilog(design, work / "design.v", target=target, **export_options)
            return vm.path, vm.top, vm
        from hwnas.hw.macs import layer_verilog

        if export_options:
            raise InvalidValueError(f"options {sorted(export_options)} apply to LUT networks only")
        path, name = layer_verilog(design, target, work / "design.v")
        return path, name, None
    if export_options:
        raise InvalidValueError(f"options {sorted(export_options)} apply to a model, not a file")
    module: VerilogModule | None
    if isinstance(design, VerilogModule):
        module, src = design, design.path
        top = top or design.top
    elif isinstance(design, (str, os.PathLike)):
        src = Path(design)
        if not src.is_file():
            raise MissingFileError(f"Verilog file {str(src)!r} does not exist")
        try:
            module = VerilogModule.from_file(src)
            top = top or module.top
        except InvalidValueError:
            module = None
    else:
        raise InvalidTypeError(
            "`design` must be an nn.Module, a VerilogModule or a path to a Verilog file, but "
            f"got {type(design).__name__}")
    if module is not None and module.primitives and not muxf_target(target):
        raise InvalidValueError(
            f"{src.name} instantiates {list(module.primitives)} (exported for a 7-series "
            f"target), which {target.name!r} does not have; export it again with "
            f"target={target.name!r} (or without a target)")
    dest = work / "design.v"
    shutil.copyfile(src, dest)
    return dest, top or "", module


def synthesize(
    design: nn.Module | VerilogModule | str | os.PathLike[str],
    target: Target | str,
    *,
    top: str | None = None,
    place_and_route: bool = False,
    yosys: str | None = None,
    timeout: float | None = 3600,
    workdir: str | os.PathLike[str] | None = None,
    **export_options: Any,
) -> SynthResult:
    """Synthesize a LUT network, a conv/linear layer or a Verilog file with yosys.

    Args:
        design: A LUT network (exported with :func:`~hwnas.hw.export_verilog` and
            ``export_options``), an ``nn.Linear`` / conv layer (its weights quantised to
            ``target.weight_bits`` and unrolled, :func:`hwnas.hw.macs.layer_verilog`), a
            :class:`~hwnas.hw.VerilogModule`, or a path to a Verilog file.
        target: A target with a ``[synth]`` table (``"xc7-lut6"``, ``"ice40-lut4"``).
        top: The top module (default: the exported one, else yosys's ``-auto-top``).
        place_and_route: Also run nextpnr for the target's part (iCE40 targets).
        yosys: ``"system"`` or ``"yowasp"`` to pick the build (default: see
            :mod:`hwnas.hw.tools`).
        timeout: Seconds allowed for each tool run.
        workdir: Keep the work files here (default: a temporary folder).
        **export_options: Passed to :func:`~hwnas.hw.export_verilog` (``input_range``,
            ``input_bits``, ``quantizer``, ``pipeline``).

    Returns:
        A :class:`SynthResult` with the counts from yosys's ``stat``.

    Raises:
        hwnas.errors.ToolError: yosys (or nextpnr) is missing or failed.

    Example:
        >>> from torch import nn
        >>> from hwnas.difflut import LUTLayer
        >>> result = synthesize(LUTLayer(16, 8, k=6, seed=0), "xc7-lut6")  # doctest: +SKIP
        >>> result.luts, result.luts_by_type    # doctest: +SKIP
        (8, {'LUT6': 8})
    """
    target = load_target(target)
    spec = _synth_spec(target)
    if place_and_route and spec.pnr != "ice40":
        raise InvalidValueError(
            f"target {target.name!r} has no place-and-route flow; use ice40-lut4 (nextpnr-ice40)")
    tool = find_yosys(yosys)
    with tempfile.TemporaryDirectory(prefix="hwnas-synth-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        path, top, vm = _design(design, work, target, top, export_options)
        # the device primitives a design instantiates come with the synthesis script's own
        # cell library, read after this check
        check = "" if vm is not None and vm.primitives else "-check "
        top_cmd = f"hierarchy {check}-top {top}" if top else f"hierarchy {check}-auto-top"
        script = [f"read_verilog -sv {path.name}", top_cmd,
                  f"{spec.script}" + (f" -top {top}" if top else ""),
                  "tee -q -o stat.json stat -json"]
        (work / "synth.ys").write_text("\n".join(script) + "\n")
        start = time.perf_counter()
        run_tool(tool, ["-q", "-l", "yosys.log", "-s", "synth.ys"], work, timeout)
        seconds = time.perf_counter() - start
        stat = json.loads((work / "stat.json").read_text())
        cells = {str(k): int(v) for k, v in stat["design"]["num_cells_by_type"].items()}
        if not top:
            top = next(iter(stat["modules"])).lstrip("\\")
        pnr = (_place_and_route(tool, work, path, top, vm, target, timeout)
               if place_and_route else None)
    return SynthResult(target=target.name, top=top, script=spec.script, yosys=tool.describe(),
                       cells=cells, seconds=seconds, pnr=pnr, **count_cells(cells, target))


def _shell(top: str, vm: VerilogModule) -> str:
    n_in, n_out = vm.input_width, vm.output_width
    shift = "sin" if n_in == 1 else f"{{xs[{n_in - 2}:0], sin}}"
    clk = ".clk(clk), " if vm.latency else ""
    return "\n".join([
        "module hwnas_pnr_shell (input wire clk, input wire sin, output reg sout);",
        f"  reg [{n_in - 1}:0] xs;",
        f"  wire [{n_out - 1}:0] y;",
        f"  {top} core ({clk}.x(xs), .y(y));",
        "  always @(posedge clk) begin",
        f"    xs <= {shift};",
        "    sout <= ^y;",
        "  end",
        "endmodule",
    ]) + "\n"


def _place_and_route(yosys: Tool, work: Path, path: Path, top: str, vm: VerilogModule | None,
                     target: Target, timeout: float | None) -> PlaceRouteResult:
    spec = _synth_spec(target)
    if vm is None:
        raise InvalidValueError(
            "place and route needs a design exported by hwnas (its ports are known), not a "
            "plain Verilog file")
    (work / "shell.v").write_text(_shell(top, vm))
    script = [f"read_verilog -sv {path.name} shell.v", "hierarchy -check -top hwnas_pnr_shell",
              f"{spec.script} -top hwnas_pnr_shell -json netlist.json"]
    (work / "pnr.ys").write_text("\n".join(script) + "\n")
    run_tool(yosys, ["-q", "-l", "yosys_pnr.log", "-s", "pnr.ys"], work, timeout)
    nextpnr = find_nextpnr_ice40()
    start = time.perf_counter()
    run_tool(nextpnr, [f"--{spec.device}", "--package", spec.package, "--json", "netlist.json",
                       "--pcf-allow-unconstrained", "--report", "report.json", "--seed", "1",
                       "--timing-allow-fail", "--freq", "12"], work, timeout, log="nextpnr.log")
    seconds = time.perf_counter() - start
    report = json.loads((work / "report.json").read_text())
    if "utilization" not in report:
        raise ToolError("nextpnr wrote no utilisation report")
    util = {k: (int(v["used"]), int(v["available"])) for k, v in report["utilization"].items()}
    fmax = {k: float(v["achieved"]) for k, v in report.get("fmax", {}).items()}
    return PlaceRouteResult(spec.device, spec.package, util, fmax, seconds)
