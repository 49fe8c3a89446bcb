"""End-to-end search on scikit-learn digits: warm-up, DUCCIO to 50% params and 50% MACs,
export, ONNX; writes reports/digits_search.md.

Run: python examples/digits_search.py [--search-epochs 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import hwnas
from hwnas.export.onnx import export_onnx
from hwnas.search import materialize
from hwnas.training.config import EarlyStopping, FitConfig
from hwnas.training.evaluation import evaluate
from hwnas.training.fit import fit, relative_targets
from hwnas.zoo.datasets import digits
from hwnas.zoo.models import digits_cnn

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup-epochs", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "reports" / "digits_search.md"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = digits(batch_size=64, seed=args.seed, val_size=0.1)
    sizes = data.sizes()
    model = digits_cnn()
    search = hwnas.wrap(model, data.example, costs=("params", "ops"))
    targets = relative_targets(search, {"params": 0.5, "ops": 0.5})
    config = FitConfig(
        warmup_epochs=args.warmup_epochs, search_epochs=args.search_epochs,
        finetune_epochs=0, lr=1e-3, arch_lr=0.1, seed=args.seed, progress=not args.quiet,
    )
    t0 = time.perf_counter()
    result = fit(search, data.train, data.val, targets=targets, config=config)
    search_time = time.perf_counter() - t0
    reference = search.reference_costs()
    costs = search.costs()
    exported = materialize(search.eval())
    warm = result.history[result.history.phase == "warmup"]
    val_warm = float(warm["val_accuracy"].iloc[-1]) if len(warm) else float("nan")

    # Fine-tune the exported model with early stopping on the validation split, through
    # fit's last phase; the test split is only read for the numbers reported below.
    ft_config = FitConfig(warmup_epochs=0, search_epochs=0, finetune_epochs=args.finetune_epochs,
                          lr=5e-4, seed=args.seed, progress=not args.quiet,
                          early_stopping=EarlyStopping(patience=3))
    ft = fit(search, data.train, data.val, config=ft_config)

    def accuracies(net) -> tuple[float, float]:
        return evaluate(net, data.val)["accuracy"], evaluate(net, data.test)["accuracy"]

    acc_search = accuracies(search)
    acc_export = accuracies(exported)
    acc_ft = accuracies(ft.model)

    with tempfile.TemporaryDirectory() as d:
        onnx_result = export_onnx(ft.model, Path(d) / "digits.onnx", data.example)

    met = {k: costs[k] <= targets[k] for k in targets}
    lines = [
        "# Digits search (DUCCIO, 50% params and 50% MACs)",
        "",
        f"Command: `python examples/digits_search.py --search-epochs {args.search_epochs} "
        f"--warmup-epochs {args.warmup_epochs} --finetune-epochs {args.finetune_epochs} "
        f"--seed {args.seed}`",
        "",
        f"Data: scikit-learn digits, test split 20% (random_state=0); a validation split of "
        f"10% carved from the training data (seed {args.seed}): {sizes['train']} train / "
        f"{sizes['validation']} validation / {sizes['test']} test images. Early stopping "
        "and every other choice use the validation split; the test split is read only for "
        "the test accuracies below.",
        "Model: Conv(1,32,3)-BN-ReLU-Conv(32,64,3)-BN-ReLU-MaxPool2-Conv(64,64,3)-BN-ReLU-"
        "GAP-Linear(64,10). Adam lr 1e-3 (weights), 0.1 (gates), batch 64.",
        "",
        "| cost | original | target | exported | ratio | met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for k in targets:
        lines.append(f"| {k} | {reference[k]:,.0f} | {targets[k]:,.0f} | {costs[k]:,.0f} | "
                     f"{costs[k] / reference[k]:.3f} | {'yes' if met[k] else 'NO'} |")
    lines += [
        "",
        "| accuracy | validation (chosen on) | test (untouched) |",
        "|---|---:|---:|",
        f"| after warm-up ({args.warmup_epochs} epochs), full model | {val_warm:.4f} | - |",
        f"| search model, eval gates | {acc_search[0]:.4f} | {acc_search[1]:.4f} |",
        f"| exported model, before fine-tuning | {acc_export[0]:.4f} | {acc_export[1]:.4f} |",
        f"| exported model, after fine-tuning (early stopping on validation) | "
        f"{acc_ft[0]:.4f} | {acc_ft[1]:.4f} |",
        "",
        f"ONNX: opset {onnx_result.opset}, onnxruntime max |diff| vs PyTorch "
        f"{onnx_result.max_abs_diff:.2e} at batch sizes {onnx_result.batch_sizes}.",
        f"Warm-up + search wall time: {search_time:.1f} s on this machine.",
        "",
        "Per-epoch history (warm-up and search; val_accuracy on the validation split):",
        "",
        result.history[[c for c in ("epoch", "phase", "task_loss", "reg_loss", "val_accuracy",
                                    "cost_params", "cost_ops", "closed_by_projection")
                        if c in result.history.columns]].to_markdown(index=False,
                                                                     floatfmt=".4g"),
        "",
        "Channels kept per layer:",
        "",
        search.summary()[["layer", "type", "out_channels", "out_kept"]].to_markdown(index=False),
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return {"costs": costs, "targets": targets, "acc_export": acc_export[1],
            "acc_ft": acc_ft[1], "met": met, "sizes": sizes}


if __name__ == "__main__":
    summary = main(sys.argv[1:])
    sys.exit(0 if all(summary["met"].values()) and summary["acc_export"] >= 0.97 else 1)
