"""Hardware numbers against yosys: LUT estimates vs synthesized LUTs, per shipped target.

Writes ``reports/hardware.md``:

1. DiffLUT layers, random (k = 4 .. 8) and trained (the digits network of
   ``examples/digits_difflut.py``, without and with the functional-sensitivity penalty):
   ``hwnas.hw.lut_estimate`` vs the LUTs in yosys's ``stat``, next to the formula hwnas used
   before (LogicNets on xc7, Shannon expansion on iCE40).
2. The whole digits networks (encoder, two LUT layers, GroupSum), Verilog checked in a
   simulator on the 360 test samples first.
3. MAC layers (Linear / Conv2d, PyTorch's default init): the smooth estimate the search uses,
   the count with the layer's real weights, the old multiplier-array estimate, and yosys.
4. iCE40 place and route (nextpnr-ice40, UP5K): logic cells and Fmax.

Run (one yosys at a time; about 20 minutes on 2 busy cores)::

    python examples/bench_hardware.py
    python examples/bench_hardware.py --yosys system --out /tmp/hardware-system.md
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from hwnas._internal.files import atomic_write
from hwnas.cost import load_target
from hwnas.cost.luts import weight_luts
from hwnas.cost.profile import profile
from hwnas.cost.target import Target
from hwnas.difflut import LUTLayer, lut_network, simplify
from hwnas.difflut.cost import lut_report
from hwnas.errors import ToolError
from hwnas.hw import export_verilog, lut_estimate, synthesize, verify_verilog
from hwnas.hw.tools import find_nextpnr_ice40, find_simulator, find_yosys

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_difflut  # noqa: E402  (the trained network of the DiffLUT example)

TARGETS = ("xc7-lut6", "ice40-lut4")
WORK = Path(tempfile.mkdtemp(prefix="hwnas-bench-"))
OLD_TABLE = {"xc7-lut6": "logicnets", "ice40-lut4": "shannon"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--yosys", choices=("system", "yowasp"), default="yowasp",
                   help="yosys build (default yowasp: the one the targets are calibrated on)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of the digits nets")
    p.add_argument("--out", type=Path, default=Path("reports/hardware.md"))
    return p.parse_args(argv)


def old_target(target: Target) -> Target:
    """The target with the table / MAC formulas hwnas used before calibration."""
    assert target.luts is not None
    luts = dataclasses.replace(target.luts, table=OLD_TABLE[target.name], mac="multiplier_array")
    return dataclasses.replace(target, luts=luts)


def err(est: float, real: float) -> str:
    return f"{(est - real) / real:+.1%}" if real else "n/a"


def lut_layers(nets: dict[str, nn.Module], yosys: str, log) -> list[str]:
    rows = ["| layer | target | estimate | yosys LUTs | MUXF7 / MUXF8 | error | "
            "portable export: yosys LUTs | its error | previous formula | its error | synth s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    worst = {t: 0.0 for t in TARGETS}
    for name, layer in nets.items():
        model = nn.Sequential(layer).eval()
        for t in TARGETS:
            target = load_target(t)
            v = export_verilog(model, WORK / "layer.v", target=target)
            est = float(lut_estimate(model, target, v)["luts"].sum())
            old = float(lut_report(model, old_target(target))["luts"].sum())
            r = synthesize(v, target, yosys=yosys)
            mux = f"{r.muxes_by_type.get('MUXF7', 0)} / {r.muxes_by_type.get('MUXF8', 0)}" \
                if t == "xc7-lut6" else "-"
            portable = "- | -"
            if v.primitives:  # the same layer as one table per node, no primitives
                p = synthesize(export_verilog(model, WORK / "portable.v"), target, yosys=yosys)
                portable = f"{p.luts:,} | {err(est, p.luts)}"
            worst[t] = max(worst[t], abs(est - r.luts) / r.luts)
            rows.append(f"| {name} | {t} | {est:,.0f} | {r.luts:,} | {mux} | {err(est, r.luts)} "
                        f"| {portable} | {old:,.0f} | {err(old, r.luts)} | {r.seconds:.1f} |")
            log(rows[-1])
    rows += ["", "Worst |error| of the estimate: " + ", ".join(
        f"{t} {w:.1%}" for t, w in worst.items()) + "."]
    return rows


def whole_nets(models: dict[str, nn.Module], x_test: torch.Tensor, yosys: str, log,
               ice40_luts: dict[str, int]) -> list[str]:
    """Rows per network and target; fills ``ice40_luts`` (name -> SB_LUT4 from yosys)."""
    rows = ["| network | target | simulated test vectors | estimate | yosys LUTs | carries | "
            "error | synth s |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, model in models.items():
        for t in TARGETS:
            v = export_verilog(model, WORK / "net.v", quantizer=digits_difflut.EXACT, target=t)
            sim = verify_verilog(model, v, x_test)
            est = float(lut_estimate(model, t, v)["luts"].sum())
            r = synthesize(v, t, yosys=yosys)
            if t == "ice40-lut4":
                ice40_luts[name] = r.luts
            rows.append(f"| {name} | {t} | {sim.vectors} equal | {est:,.0f} | {r.luts:,} | "
                        f"{r.carries:,} | {err(est, r.luts)} | {r.seconds:.1f} |")
            log(rows[-1])
    return rows


def mac_layers(yosys: str, log) -> list[str]:
    torch.manual_seed(0)
    # fan-in n <= 36, so n * W * A stays near the calibrated grid's 2048 (a design of
    # n * W * A = 6400 took yosys over 13 minutes)
    layers = {
        "Linear(32, 8)": (nn.Linear(32, 8), (1, 32)),
        "Linear(24, 6)": (nn.Linear(24, 6), (1, 24)),
        "Conv2d(4, 8, 3)": (nn.Conv2d(4, 8, 3), (1, 4, 5, 5)),
        "Conv2d(16, 6, 1)": (nn.Conv2d(16, 6, 1), (1, 16, 5, 5)),
        "Conv2d(12, 12, 3, groups=12)": (nn.Conv2d(12, 12, 3, groups=12), (1, 12, 5, 5)),
    }
    configs = [("xc7-lut6", 8, 8), ("xc7-lut6", 4, 4), ("ice40-lut4", 4, 8),
               ("ice40-lut4", 3, 3)]
    rows = ["| layer | target (W, A) | smooth estimate | with real weights | "
            "multiplier array (before) | yosys LUTs | error smooth / weights / before | "
            "synth s |", "|---|---|---:|---:|---:|---:|---|---:|"]
    worst: dict[str, list[float]] = {"smooth": [], "weights": []}
    for name, (layer, shape) in layers.items():
        x = torch.randn(shape)
        for t, w, a in configs:
            target = dataclasses.replace(load_target(t), weight_bits=w, activation_bits=a)
            smooth = float(profile(nn.Sequential(layer), x, target=target)["luts"].iloc[0])
            old = float(profile(nn.Sequential(layer), x, target=old_target(target))["luts"].iloc[0])
            real = weight_luts(layer.weight, target)
            r = synthesize(layer, target, yosys=yosys)
            worst["smooth"].append(abs(smooth - r.luts) / r.luts)
            worst["weights"].append(abs(real - r.luts) / r.luts)
            rows.append(f"| {name} | {t} ({w}, {a}) | {smooth:,.0f} | {real:,.0f} | {old:,.0f} | "
                        f"{r.luts:,} | {err(smooth, r.luts)} / {err(real, r.luts)} / "
                        f"{err(old, r.luts)} | {r.seconds:.1f} |")
            log(rows[-1])
    med = {k: sorted(v)[len(v) // 2] for k, v in worst.items()}
    rows += ["", f"Median |error|: smooth {med['smooth']:.1%}, real weights "
             f"{med['weights']:.1%}; worst: smooth {max(worst['smooth']):.1%}, real weights "
             f"{max(worst['weights']):.1%} ({len(worst['smooth'])} layer/target pairs)."]
    return rows


UP5K_CELLS = 5280  # logic cells of the iCE40 UP5K


def place_and_route(models: dict[str, nn.Module], yosys: str, log,
                    ice40_luts: dict[str, int]) -> list[str]:
    rows = ["| network | LUT4 (yosys) | logic cells used / UP5K | Fmax (MHz) | P&R s |",
            "|---|---:|---:|---:|---:|"]
    for name, model in models.items():
        if ice40_luts.get(name, 0) > UP5K_CELLS:  # nextpnr would only fail after minutes
            rows.append(f"| {name} | {ice40_luts[name]:,} | does not fit: more LUT4 than the "
                        f"{UP5K_CELLS:,} logic cells | - | - |")
            log(rows[-1])
            continue
        try:
            r = synthesize(model, "ice40-lut4", place_and_route=True, yosys=yosys,
                           quantizer=digits_difflut.EXACT)
        except ToolError as e:
            # nextpnr's own ERROR line (ToolError joins the tool's last lines with ' | '),
            # kept whole; a '|' in it would split the table
            lines = str(e).split(" | ")
            error = next((ln.strip() for ln in lines if ln.startswith("ERROR")), str(e))
            rows.append(f"| {name} | - | not placed: {error.replace('|', '/')} | - | - |")
            log(rows[-1])
            continue
        assert r.pnr is not None
        used, available = r.pnr.logic_cells
        fmax = ", ".join(f"{v:.1f}" for v in r.pnr.fmax_mhz.values())
        rows.append(f"| {name} | {r.luts:,} | {used:,} / {available:,} | {fmax} | "
                    f"{r.pnr.seconds:.1f} |")
        log(rows[-1])
    return rows


def trained_digits(epochs: int, log) -> tuple[dict[str, nn.Module], torch.Tensor]:
    args = digits_difflut.parse_args(["--epochs", str(epochs)])
    data = digits_difflut.load_data()
    x_tr, x_te, y_tr, _ = data
    models = {}
    for lam in (0.0, args.lam):
        torch.manual_seed(args.seed)
        model = digits_difflut.build(x_tr, args)
        digits_difflut.train(model, x_tr, y_tr, args, lam)
        models[f"digits, lam = {lam:g}"] = model.eval()
        log(f"trained digits lam={lam:g}")
    small_args = digits_difflut.parse_args(["--epochs", str(epochs), "--nodes", "300", "150",
                                            "--k", "4", "--bits", "4"])
    torch.manual_seed(0)
    small = digits_difflut.build(x_tr, small_args)
    digits_difflut.train(small, x_tr, y_tr, small_args, 0.0)
    models["digits small (300, 150, k=4)"] = small.eval()
    # wide nodes: LUTLayer(160, k=8) -> LUTLayer(80, k=7), with the penalty (lam = 2)
    wide_args = digits_difflut.parse_args(["--epochs", "10", "--nodes", "160", "80", "--k", "8",
                                           "--bits", "4"])
    torch.manual_seed(0)
    wide = digits_difflut.build(x_tr, wide_args)
    wide[2] = LUTLayer(160, 80, k=7, seed=3)
    digits_difflut.train(wide, x_tr, y_tr, wide_args, 2.0)
    models["digits wide (160 k=8, 80 k=7), lam = 2"] = wide.eval()
    log("trained the small and the wide digits nets")
    return models, x_te


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "examples/bench_hardware.py", *given])
    torch.set_num_threads(1)
    start = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {line}", flush=True)

    models, x_test = trained_digits(args.epochs, log)
    ice40_luts: dict[str, int] = {}
    big = {k: m for k, m in models.items() if "small" not in k and "wide" not in k}
    wide = {k: m for k, m in models.items() if "wide" in k}
    random_layers = {f"random LUTLayer(256, 64, k={k})": LUTLayer(256, 64, k=k, seed=k)
                     for k in (4, 5, 6, 7, 8)}
    trained_layers = {}
    for name, model in {**big, **wide}.items():
        layers, _ = simplify(lut_network(model))
        for i in (1, 2):
            trained_layers[f"{name}, layer {i} (mean k_eff "
                           f"{_mean_k(layers[i - 1]):.2f})"] = model[i]
    sections = [
        "# Hardware: LUT estimates against yosys",
        "",
        f"Command: `{command}`",
        "",
        f"Tools: {find_yosys(args.yosys).describe()}; simulator {find_simulator().describe()}; "
        f"{find_nextpnr_ice40().describe()}. Machine: {platform.machine()}, torch "
        f"{torch.__version__}, one thread. The shipped targets are calibrated against "
        f"{load_target('xc7-lut6').luts.calibration.yosys} (`hwnas/cost/targets/README.md`). "
        "Synthesis: `synth_xilinx -family xc7 -nodsp -abc9` / `synth_ice40 -abc9`; LUTs are "
        "the LUT1..LUT6 + INV (xc7) or SB_LUT4 (iCE40) cells of yosys's `stat`.",
        "",
        "## DiffLUT layers",
        "",
        "Each layer alone, exported by `hwnas.hw.export_verilog(..., target=...)` (inputs a "
        "table ignores dropped, constants folded; for xc7, nodes of 7 and 8 inputs as LUT6 "
        "subtables joined by MUXF7 / MUXF8 instances, the structure the estimate counts). "
        "'portable export': the same layer as one table per node without primitives, "
        "synthesized the same way (only where the two exports differ). The digits layers "
        "come from `examples/digits_difflut.py`"
        f" ({args.epochs} epochs; lam = 5 prunes inputs); the wide ones from the same script "
        "with `--nodes 160 80 --k 8 --bits 4` (second layer k = 7), 10 epochs, lam = 2. "
        "'previous formula': LogicNets' LUTCost on xc7, Shannon expansion `2^(X-3) - 1` on "
        "iCE40.",
        "",
        *lut_layers({**random_layers, **trained_layers}, args.yosys, log),
        "",
        "## Digits networks",
        "",
        "Thermometer encoder (8 thresholds per pixel, 5-bit pixel codes), LUTLayer(1000, k=6), "
        "LUTLayer(500, k=6), GroupSum(10). The Verilog is simulated on the 360 test samples "
        "(`hwnas.hw.verify_verilog`) before synthesis.",
        "",
        *whole_nets(big, x_test, args.yosys, log, ice40_luts),
        "",
        "## MAC layers",
        "",
        "Fully unrolled, one output position, weights quantised per output channel "
        "(`hwnas.hw.macs.layer_verilog`); bias not built. 'smooth': `alive_out * mac_luts("
        "fan_in)` with the target's fitted coefficients (what the search differentiates); "
        "'real weights': `hwnas.cost.luts.weight_luts` (zeros and powers of two cheaper); "
        "'multiplier array': the estimate before calibration.",
        "",
        *mac_layers(args.yosys, log),
        "",
        "## iCE40 place and route",
        "",
        "nextpnr-ice40 on an UP5K (SG48), seed 1. The design sits in a shell that shifts the "
        "inputs in through one pin and XORs the outputs into one registered pin "
        "(`hwnas/hw/synth.py`), so the logic-cell count includes the input flip-flops and "
        "Fmax is the register-to-register path through the network.",
        "",
        *place_and_route(models, args.yosys, log, ice40_luts),
        "",
        f"Total time {time.perf_counter() - start:.0f} s.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as tmp:
        tmp.write_text("\n".join(sections) + "\n")
    log(f"wrote {args.out}")


def _mean_k(layer) -> float:
    live = layer.live()
    return sum(len(layer.nodes[j].sources) for j in live) / max(len(live), 1)


if __name__ == "__main__":
    main()
