"""``hwnas demo --lut``: train a small DiffLUT network on digits, export Verilog, simulate
it, synthesize it with yosys and compare the LUT estimate with yosys's count."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["cmd_demo_lut"]


def cmd_demo_lut(args: argparse.Namespace) -> int:
    """Train a small DiffLUT network on digits, export Verilog, simulate, synthesize."""
    import torch
    from torch import nn

    from hwnas.cost.target import load_target
    from hwnas.difflut import GroupSum, LUTLayer, ThermometerEncoder, functional_sensitivity
    from hwnas.hw.simulate import verify_verilog
    from hwnas.hw.synth import synthesize
    from hwnas.hw.verilog import InputQuantizer, export_verilog, lut_estimate
    from hwnas.zoo.datasets import digits

    target = load_target(getattr(args, "target", None) or "xc7-lut6")
    out = Path(args.out or "reports/demo-lut")
    epochs, n1, n2 = (4, 100, 50) if args.quick else (30, 200, 100)
    data = digits()
    x_train, x_test = data.x_train.flatten(1), data.x_test.flatten(1)
    torch.manual_seed(0)
    model = nn.Sequential(ThermometerEncoder(4, method="uniform").fit(x_train),
                          LUTLayer(256, n1, k=6, seed=1), LUTLayer(n1, n2, k=6, seed=2),
                          GroupSum(10, tau=8))
    print(f"hwnas demo --lut: digits, thermometer(4) -> LUT({n1}, k=6) -> LUT({n2}, k=6) -> "
          f"GroupSum(10), {epochs} epochs, target {target.name}")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(epochs):
        for xb, yb in data.train:
            loss = nn.functional.cross_entropy(model.train()(xb.flatten(1)), yb)
            loss = loss + 0.5 * functional_sensitivity(model, p=1, mode="exact")
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == data.y_test).float().mean())
    print(f"binary test accuracy {accuracy:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    # the digits tensors are pixels / 16: 5-bit codes with step 1/16 hold them exactly
    v = export_verilog(model, out / "digits_lut.v", quantizer=InputQuantizer(5, 0.0, 1.0 / 16),
                       target=target)
    sim = verify_verilog(model, v, x_test)
    print(f"Verilog {v.path}: {sim.vectors} test vectors equal to PyTorch in {sim.simulator}")
    estimate = float(lut_estimate(model, target, v)["luts"].sum())
    synth = synthesize(v, target)
    error = (estimate - synth.luts) / synth.luts
    print(f"\n| LUTs on {target.name} | count |\n|---|---:|\n| hwnas estimate | {estimate:,.0f} |"
          f"\n| yosys ({synth.script}) | {synth.luts:,} |\n| error | {error:+.1%} |")
    print(f"(yosys: {synth.yosys}, {synth.seconds:.0f} s; muxes {synth.muxes}, carries "
          f"{synth.carries})")
    return 0
