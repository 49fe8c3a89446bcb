"""Mixed precision: the digits search in fp32 beside bf16 (and fp16 on CUDA), same seeds.

For each seed and precision: warm-up, DUCCIO search to 50% params and 50% MACs, and
fine-tuning with early stopping on the validation split, through ``hwnas.fit`` with
``FitConfig(precision=...)``; the exported model's test accuracy (the untouched test split,
evaluated in float32, as the exported ONNX model runs), its costs, and the wall time.
The precisions of one seed run one after the other in one process.

Writes reports/precision.md.

Run: python examples/bench_precision.py [--seeds 0 1 2] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import hwnas
from hwnas._internal.devices import describe_device, resolve_device
from hwnas.training.evaluation import evaluate
from hwnas.zoo.datasets import digits
from hwnas.zoo.models import digits_cnn

ROOT = Path(__file__).resolve().parents[1]


def run(seed: int, precision: str, device: str, epochs: tuple[int, int, int]) -> dict:
    data = digits(batch_size=64, seed=seed, val_size=0.1)
    torch.manual_seed(seed)
    search = hwnas.wrap(digits_cnn(), data.example, costs=("params", "ops"))
    targets = hwnas.relative_targets(search, {"params": 0.5, "ops": 0.5})
    config = hwnas.FitConfig(warmup_epochs=epochs[0], search_epochs=epochs[1],
                             finetune_epochs=epochs[2], seed=seed, device=device,
                             precision=precision, progress=False,
                             early_stopping=hwnas.EarlyStopping(patience=3))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hwnas.TargetsNotMetWarning)  # the table says it
        result = hwnas.fit(search, data.train, data.val, targets=targets, config=config)
    seconds = time.perf_counter() - t0
    assert result.model is not None
    model = result.model.float()
    return {"seed": seed, "precision": precision, "seconds": seconds,
            "test": evaluate(model, data.test)["accuracy"],
            "val": evaluate(model, data.val)["accuracy"],
            "params": result.costs["params"], "ops": result.costs["ops"],
            "met": all(result.met.values())}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, nargs=3, default=[10, 20, 10],
                        metavar=("WARMUP", "SEARCH", "FINETUNE"))
    parser.add_argument("--out", default=str(ROOT / "reports" / "precision.md"))
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    rows = [run(seed, p, str(device), tuple(args.epochs)) for seed in args.seeds
            for p in precisions]
    command = "python examples/bench_precision.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv)
    lines = ["# Mixed precision: the digits search in fp32 and bf16", "",
             f"Command: `{command.strip()}`", "",
             f"Device: {describe_device(device)}, torch {torch.__version__}. Each run: "
             f"{args.epochs[0]} warm-up, {args.epochs[1]} search and up to {args.epochs[2]} "
             "fine-tune epochs (early stopping on the validation split, patience 3), "
             "DUCCIO to 50% params and 50% MACs, `FitConfig(precision=...)`: the forward "
             "pass and the loss under `torch.autocast`; weights, gate logits, costs and the "
             "regularizer in float32/float64. Accuracies of the exported model in float32 "
             "(as its ONNX file runs); test: the untouched test split (360 images).", ""]
    if device.type != "cuda":
        lines += ["fp16 is not run here: the CPU has no fast fp16 kernels (hwnas warns and "
                  "runs it, tens of times slower). No GPU figures: this machine has no CUDA "
                  "device.", ""]
    lines += ["| seed | precision | test accuracy | validation accuracy | params | MACs | "
              "targets met | wall time (s) |", "|---:|---|---:|---:|---:|---:|:---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['precision']} | {r['test']:.4f} | {r['val']:.4f} | "
                     f"{r['params']:,.0f} | {r['ops']:,.0f} | {'yes' if r['met'] else 'NO'} "
                     f"| {r['seconds']:.1f} |")
    lines += ["", "| precision | mean test accuracy | min | max |", "|---|---:|---:|---:|"]
    for p in precisions:
        acc = [r["test"] for r in rows if r["precision"] == p]
        lines.append(f"| {p} | {statistics.mean(acc):.4f} | {min(acc):.4f} | {max(acc):.4f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
