"""DiffLUT on scikit-learn's digits: thermometer bits -> 2 LUT layers -> GroupSum.

Trains the same network twice on CPU, without and with the functional sensitivity
regularizer (``hwnas.difflut.functional_sensitivity``), and reports soft and binary test accuracy,
the LUT estimate on ``xc7-lut6`` and ``ice40-lut4`` of what the Verilog export builds
(``hwnas.hw.lut_estimate``: constants propagated, pruned inputs and unused nodes removed),
training throughput (forward + backward, samples/s), whether onnxruntime reproduces the
PyTorch binary predictions on the whole test set, whether the exported Verilog does so in a
simulator (``hwnas.hw.verify_verilog``), and the test accuracy when the pixels reach the
hardware as integers of fewer bits (thresholds quantised with them).

Run (writes ``reports/difflut.md``)::

    python examples/digits_difflut.py
    python examples/digits_difflut.py --epochs 5 --nodes 200 100 --out /tmp/difflut.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from hwnas._internal.files import atomic_write
from hwnas.difflut import (
    GroupSum,
    LUTLayer,
    ThermometerEncoder,
    binary_inference_module,
    export_lut_onnx,
    functional_sensitivity,
    set_binary_,
)
from hwnas.hw import InputQuantizer, export_verilog, lut_estimate, verify_verilog

TARGETS = ("xc7-lut6", "ice40-lut4")
#: scikit-learn's digits pixels are integers 0..16: 5-bit codes with step 1 hold them exactly.
EXACT = InputQuantizer(5, 0.0, 1.0)
FEWER_BITS = (4, 3, 2)  # 2^B levels spread over [0, 16]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--bits", type=int, default=8, help="thermometer bits per pixel")
    p.add_argument("--nodes", type=int, nargs=2, default=(1000, 500), metavar=("N1", "N2"))
    p.add_argument("--k", type=int, default=6, help="inputs per LUT node")
    p.add_argument("--tau", type=float, default=10.0, help="GroupSum temperature")
    p.add_argument("--lam", type=float, default=5.0, help="sensitivity regularizer strength")
    p.add_argument("--p", type=float, default=1.0, help="sensitivity exponent")
    p.add_argument("--mode", default="exact", choices=("exact", "input", "random"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("reports/difflut.md"))
    return p.parse_args(argv)


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as_x(x_tr), as_x(x_te), torch.tensor(y_tr), torch.tensor(y_te)


def build(x_train: torch.Tensor, args: argparse.Namespace) -> nn.Sequential:
    encoder = ThermometerEncoder(args.bits, method="uniform").fit(x_train)
    n1, n2 = args.nodes
    return nn.Sequential(
        encoder,
        LUTLayer(encoder.out_features, n1, k=args.k, seed=args.seed + 1),
        LUTLayer(n1, n2, k=args.k, seed=args.seed + 2),
        GroupSum(10, tau=args.tau),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, binary: bool) -> float:
    set_binary_(model.eval(), binary)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    set_binary_(model, None)
    return acc


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args, lam: float) -> dict:
    """Adam + cosine schedule; returns fwd+bwd throughput (first step excluded) and time."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    seen, compute_s, start = 0, 0.0, time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), args.batch_size):
            idx = perm[i : i + args.batch_size]
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if lam > 0:
                loss = loss + lam * functional_sensitivity(model, p=args.p, mode=args.mode)
            opt.zero_grad()
            loss.backward()
            compute_s += time.perf_counter() - t0
            opt.step()
            if epoch == 0 and i == 0:  # the first step pays one-off warm-up costs
                compute_s = 0.0
            else:
                seen += len(idx)
        sched.step()
        print(f"  lam={lam:g} epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f}", flush=True)
    return {"samples_per_s": seen / compute_s, "train_s": time.perf_counter() - start}


def onnx_mismatches(model: nn.Module, x_test: torch.Tensor) -> tuple[int, int]:
    """Export to a temp dir; count test samples where onnxruntime's class differs."""
    model.eval()
    with tempfile.TemporaryDirectory() as d:
        path = export_lut_onnx(model, Path(d) / "digits_lut.onnx", x_test[:8])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        scores = session.run(None, {session.get_inputs()[0].name: x_test.numpy()})[0]
    with torch.no_grad():
        expected = model(x_test).numpy()
    pred_mismatch = int((scores.argmax(1) != expected.argmax(1)).sum())
    score_mismatch = int((~np.equal(scores, expected)).any(1).sum())
    return pred_mismatch, score_mismatch


def hardware(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor) -> dict:
    """Verilog export + simulation parity on the test set; accuracy with fewer input bits."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        v = export_verilog(model, Path(d) / "digits_lut.v", quantizer=EXACT)
        sim = verify_verilog(model, v, x_test)  # raises on the first differing vector
        out["verilog"] = {"vectors": sim.vectors, "simulator": sim.simulator,
                          "seconds": sim.seconds}
        out["estimates"] = {t: lut_estimate(model, t, v) for t in TARGETS}
    net = binary_inference_module(model)
    quantizers = {"5 (step 1: exact)": EXACT}
    quantizers.update({f"{b} (step {16 / (2**b - 1):.3g})": InputQuantizer.from_range(b, 0.0, 16.0)
                       for b in FEWER_BITS})
    out["input_bits"] = {}
    with torch.no_grad():
        for name, q in quantizers.items():
            seen = q.dequantize(q.quantize(x_test))  # what the hardware computes on
            out["input_bits"][name] = float((net(seen).argmax(1) == y_test).float().mean())
    return out


def run(args: argparse.Namespace, lam: float, data) -> dict:
    x_tr, x_te, y_tr, y_te = data
    torch.manual_seed(args.seed)
    model = build(x_tr, args)
    stats = train(model, x_tr, y_tr, args, lam)
    stats["lam"] = lam
    stats["soft_acc"] = accuracy(model, x_te, y_te, binary=False)
    stats["binary_acc"] = accuracy(model, x_te, y_te, binary=True)
    stats.update(hardware(model, x_te, y_te))
    stats["reports"] = stats["estimates"]
    stats["luts"] = {t: float(r["luts"].sum()) for t, r in stats["reports"].items()}
    stats["onnx_pred_mismatch"], stats["onnx_score_mismatch"] = onnx_mismatches(model, x_te)
    return stats


def markdown_table(df) -> str:
    """A pandas DataFrame as a Markdown table (no tabulate dependency)."""

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if v.is_integer() else f"{v:.3f}"
        return str(v)

    rows = [list(df.columns), ["---"] * len(df.columns)]
    rows += [[fmt(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)


def markdown(args: argparse.Namespace, results: list[dict], command: str, n_test: int) -> str:
    lines = [
        "# DiffLUT on digits",
        "",
        f"Command: `{command}`",
        "",
        f"Data: scikit-learn `load_digits`, 80/20 split (`random_state=0`), {n_test} test "
        f"samples. Network: thermometer ({args.bits} uniform thresholds per pixel) -> "
        f"LUTLayer({args.nodes[0]}, k={args.k}) -> LUTLayer({args.nodes[1]}, k={args.k}) -> "
        f"GroupSum(10, tau={args.tau:g}); Adam lr {args.lr:g}, cosine schedule, "
        f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}. Regularizer: "
        f"`functional_sensitivity(model, p={args.p:g}, mode={args.mode!r})` times lam.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, load average at the end "
        f"{os.getloadavg()[0]:.1f} (shared machine: throughput is indicative).",
        "",
        "| lam | soft test acc | binary test acc | LUTs xc7-lut6 | LUTs ice40-lut4 | "
        "fwd+bwd samples/s | train s | ONNX mismatches (pred / scores) | Verilog parity |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['lam']:g} | {r['soft_acc']:.4f} | {r['binary_acc']:.4f} | "
            f"{r['luts']['xc7-lut6']:.0f} | {r['luts']['ice40-lut4']:.0f} | "
            f"{r['samples_per_s']:.0f} | {r['train_s']:.1f} | "
            f"{r['onnx_pred_mismatch']} / {r['onnx_score_mismatch']} of {n_test} | "
            f"{r['verilog']['vectors']} of {n_test} equal |"
        )
    sims = sorted({r["verilog"]["simulator"] for r in results})
    lines += [
        "",
        "Verilog parity: `hwnas.hw.export_verilog` with 5-bit pixel codes (step 1, exact for "
        "pixels 0..16), simulated by `hwnas.hw.verify_verilog` in " + ", ".join(sims)
        + "; every class count equals PyTorch's binary popcount on every test sample.",
        "",
        "Test accuracy (binary) when the pixels reach the hardware as B-bit codes "
        "`q = round(x / step)`, thresholds quantised with them (`hwnas.hw.InputQuantizer`; "
        "an encoder bit is `q > code(t)`, exact for inputs on the grid):",
        "",
        "| lam | " + " | ".join(f"B = {k}" for k in results[0]["input_bits"]) + " |",
        "|---:|" + "---:|" * len(results[0]["input_bits"]),
    ]
    for r in results:
        lines.append(f"| {r['lam']:g} | "
                     + " | ".join(f"{v:.4f}" for v in r["input_bits"].values()) + " |")
    lines += [
        "",
        "LUT estimate per layer of what the Verilog builds (`hwnas.hw.lut_estimate`: constants "
        "propagated, pruned inputs and unused nodes removed, 5-bit comparators; formulas in "
        "`hwnas/cost/targets/DIFFLUT.md`; `reports/hardware.md` compares them with yosys):",
    ]
    for r in results:
        for target, report in r["reports"].items():
            lines += ["", f"lam = {r['lam']:g}, {target}:", ""]
            lines += [markdown_table(report)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data()
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "examples/digits_difflut.py", *given])
    results = []
    for lam in (0.0, args.lam):
        r = run(args, lam, data)
        results.append(r)
        print(
            f"lam={lam:g}: soft acc {r['soft_acc']:.4f}, binary acc {r['binary_acc']:.4f}, "
            f"LUTs xc7-lut6 {r['luts']['xc7-lut6']:.0f}, ice40-lut4 {r['luts']['ice40-lut4']:.0f}, "
            f"{r['samples_per_s']:.0f} samples/s fwd+bwd, train {r['train_s']:.1f} s, "
            f"ONNX mismatches: {r['onnx_pred_mismatch']} predictions, "
            f"{r['onnx_score_mismatch']} score rows of {len(data[1])}, Verilog "
            f"{r['verilog']['vectors']} vectors equal ({r['verilog']['seconds']:.1f} s)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as tmp:
        tmp.write_text(markdown(args, results, command, len(data[1])))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
