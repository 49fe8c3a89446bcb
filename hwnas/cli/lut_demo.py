"""``hwnas demo --lut``: train a small DiffLUT network on digits, export Verilog, simulate
it, synthesize it with yosys and compare the LUT estimate with yosys's count.

Every step says when it starts and ends (training: one line per epoch); the folder gets the
Verilog and a ``report.md`` with the accuracy, the simulation and the LUT counts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hwnas.cli.console import step

__all__ = ["cmd_demo_lut"]


def _train(model: Any, data: Any, epochs: int, device: Any) -> None:
    """Adam with the exact functional-sensitivity regularizer, one line per epoch."""
    import torch
    from torch import nn

    from hwnas.difflut import functional_sensitivity

    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for epoch in range(epochs):
        start, total, seen = time.perf_counter(), 0.0, 0
        for xb, yb in data.train:
            xb, yb = xb.flatten(1).to(device), yb.to(device)
            loss = nn.functional.cross_entropy(model.train()(xb), yb)
            loss = loss + 0.5 * functional_sensitivity(model, p=1, mode="exact")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(yb), seen + len(yb)
        print(f"[train] epoch {epoch + 1}/{epochs}  loss {total / seen:.4f}  "
              f"({time.perf_counter() - start:.1f} s)", flush=True)


def cmd_demo_lut(args: argparse.Namespace) -> int:
    """Train a small DiffLUT network on digits, export Verilog, simulate, synthesize."""
    import torch
    from torch import nn

    from hwnas._internal.devices import describe_device, resolve_device
    from hwnas.cost.target import load_target
    from hwnas.difflut import GroupSum, LUTLayer, ThermometerEncoder
    from hwnas.hw.simulate import verify_verilog
    from hwnas.hw.synth import synthesize
    from hwnas.hw.verilog import InputQuantizer, export_verilog, lut_estimate
    from hwnas.zoo.datasets import digits

    target = load_target(getattr(args, "target", None) or "xc7-lut6")
    device = resolve_device(getattr(args, "device", None) or "auto")
    out = Path(args.out or "reports/demo-lut")
    epochs, n1, n2 = (4, 100, 50) if args.quick else (30, 200, 100)
    data = digits()
    x_train, x_test = data.x_train.flatten(1), data.x_test.flatten(1)
    torch.manual_seed(0)
    model = nn.Sequential(ThermometerEncoder(4, method="uniform").fit(x_train),
                          LUTLayer(256, n1, k=6, seed=1), LUTLayer(n1, n2, k=6, seed=2),
                          GroupSum(10, tau=8)).to(device)
    print(f"hwnas demo --lut: digits, thermometer(4) -> LUT({n1}, k=6) -> LUT({n2}, k=6) -> "
          f"GroupSum(10), {epochs} epochs, target {target.name}, on "
          f"{describe_device(device)}", flush=True)
    _train(model, data, epochs, device)
    model = model.eval().cpu()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == data.y_test).float().mean())
    print(f"binary test accuracy {accuracy:.4f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with step(f"writing {out / 'digits_lut.v'}"):
        # the digits tensors are pixels / 16: 5-bit codes with step 1/16 hold them exactly
        v = export_verilog(model, out / "digits_lut.v",
                           quantizer=InputQuantizer(5, 0.0, 1.0 / 16), target=target)
    with step(f"simulating {len(x_test)} test vectors"):
        sim = verify_verilog(model, v, x_test)
    print(f"Verilog {v.path}: {sim.vectors} test vectors equal to PyTorch in {sim.simulator}")
    estimate = float(lut_estimate(model, target, v)["luts"].sum())
    with step(f"synthesizing {v.path.name} with yosys for {target.name}"):
        synth = synthesize(v, target)
    lines = _report(target.name, accuracy, sim, estimate, synth, v.path.name, epochs)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:11]))
    print(f"report: {out / 'report.md'}")
    return 0


def _report(target: str, accuracy: float, sim: Any, estimate: float, synth: Any,
            verilog: str, epochs: int) -> list[str]:
    error = (estimate - synth.luts) / synth.luts
    return [
        "# hwnas demo --lut: a DiffLUT network on digits", "",
        f"Trained {epochs} epochs; binary test accuracy {accuracy:.4f} (the untouched test "
        f"split). `{verilog}` equals the PyTorch binary model on all {sim.vectors} test "
        f"vectors in {sim.simulator}.", "",
        f"| LUTs on {target} | count |", "|---|---:|",
        f"| hwnas estimate | {estimate:,.0f} |",
        f"| yosys ({synth.script}) | {synth.luts:,} |",
        f"| error | {error:+.1%} |", "",
        f"yosys {synth.yosys}, {synth.seconds:.0f} s; muxes {synth.muxes}, carries "
        f"{synth.carries}, flip-flops {synth.flip_flops}.",
    ]
