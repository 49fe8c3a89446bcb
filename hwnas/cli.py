"""The ``hwnas`` command line: demo, search, profile, export, targets."""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "run_search"]


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--input-shape must be comma-separated integers like 1,3,32,32, but got {text!r}"
        ) from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"--input-shape must be positive, but got {text!r}")
    return shape


def _loaders(data: Any) -> tuple[Any, Any]:
    if hasattr(data, "train") and hasattr(data, "test"):
        return data.train, data.test
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise TypeError(
        "the [data] factory must return an object with .train and .test loaders or a "
        f"(train, val) tuple, but returned {type(data).__name__}"
    )


def run_search(config, progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Run a whole search from a :class:`~hwnas.config.SearchConfig`; write its outputs.

    Writes to ``config.output_dir``: ``checkpoint.pt`` (resumable fit state),
    ``search.pt`` (config + weights, read by ``hwnas export``), ``model.onnx``
    (verified), and the report (``report.md``, ``report.html``, figures, CSVs).
    Returns a summary dict (paths, costs, targets, accuracy). With ``resume`` an
    existing ``checkpoint.pt`` continues an interrupted search; otherwise it is replaced.
    """
    import torch

    import hwnas
    from hwnas.config import load_factory
    from hwnas.onnx import export_onnx
    from hwnas.report import write_report
    from hwnas.train import (
        EarlyStopping,
        FitConfig,
        evaluate,
        fit,
        relative_targets,
        shard_loader,
    )

    s = config.search
    rank0 = _init_distributed()
    torch.manual_seed(s.seed)
    model = load_factory(config.model.factory)(**config.model.kwargs)
    train, val = _loaders(load_factory(config.data.factory)(**config.data.kwargs))
    train = shard_loader(train, seed=s.seed)
    example = torch.randn(config.model.input_shape)
    search = hwnas.wrap(model, example, costs=tuple(s.targets), target=s.target,
                        droprate_init=s.droprate_init, channel_multiple=s.channel_multiple,
                        leaf_modules=tuple(config.model.leaf_modules))
    targets = relative_targets(search, s.targets)
    fit_config = FitConfig(
        warmup_epochs=s.warmup_epochs, search_epochs=s.search_epochs,
        finetune_epochs=s.finetune_epochs, lr=s.lr, arch_lr=s.arch_lr,
        weight_decay=s.weight_decay, cost_mode=s.cost_mode, seed=s.seed, progress=progress,
        device=_device(),
        early_stopping=EarlyStopping(patience=s.patience) if s.patience else None,
    )
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if not resume and rank0 and (out / "checkpoint.pt").exists():
        (out / "checkpoint.pt").unlink()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank reads the checkpoint before rank 0 has removed it
    result = fit(search, train, val, targets=targets, config=fit_config,
                 checkpoint=out / "checkpoint.pt")
    assert result.model is not None
    exported = result.model.eval().cpu()
    search.cpu()
    if not rank0:  # only rank 0 writes files
        return {"folder": out, "paths": {}, "onnx": None, "costs": result.costs,
                "targets": targets, "accuracy": None, "before": None, "after": None}
    torch.save({"format": "hwnas-search", "config": config.to_dict(),
                "search": search.state_dict(), "model": exported.state_dict()},
               out / "search.pt")
    onnx_result = export_onnx(exported, out / "model.onnx", example)
    before = hwnas.profile(model, example, s.target)
    after = hwnas.profile(exported, example, s.target)
    accuracy = evaluate(exported, val).get("accuracy")
    notes = {
        "model": config.model.factory,
        "target hardware": s.target,
        "test accuracy (exported, fine-tuned)": f"{accuracy:.4f}" if accuracy is not None else "",
        "ONNX": f"{onnx_result.path.name}, opset {onnx_result.opset}, max |ORT - torch| "
                f"{onnx_result.max_abs_diff:.2e} at batch {onnx_result.batch_sizes}",
    }
    paths = write_report(out, result.history, before, after, targets=targets,
                         title=f"hwnas search: {config.model.factory}", notes=notes)
    return {"folder": out, "paths": paths, "onnx": onnx_result, "costs": result.costs,
            "targets": targets, "accuracy": accuracy, "before": before, "after": after}


def _device() -> str | None:
    """``cuda:LOCAL_RANK`` when a GPU is there, else None (the model's device: CPU)."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def _init_distributed() -> bool:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); True on rank 0."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return not dist.is_initialized() or dist.get_rank() == 0


def _print_before_after(summary: dict[str, Any]) -> None:
    if summary["before"] is None:
        return
    before = summary["before"].iloc[-1]
    after = summary["after"].iloc[-1]
    print("\n| cost | original | target | exported | met |")
    print("|---|---:|---:|---:|:---:|")
    for name, target in summary["targets"].items():
        value = float(after[name])
        print(f"| {name} | {float(before[name]):,.0f} | {target:,.0f} | {value:,.0f} | "
              f"{'yes' if value <= target else 'NO'} |")
    if summary["accuracy"] is not None:
        print(f"\ntest accuracy of the exported model: {summary['accuracy']:.4f}")
    print(f"ONNX: {summary['onnx'].path} (checked with onnx.checker and onnxruntime)")
    print(f"report: {summary['paths'].get('report.html', summary['folder'])}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from hwnas.config import DEMO_CONFIG, parse_config

    config = parse_config(DEMO_CONFIG)
    if args.out:
        from dataclasses import replace

        config = replace(config, output=replace(config.output, folder=args.out))
    if args.quick:
        from dataclasses import replace

        config = replace(config, search=replace(config.search, warmup_epochs=2,
                                                search_epochs=3, finetune_epochs=1))
    print("hwnas demo: digits CNN, DUCCIO search to 50% params and 50% MACs, "
          f"target {config.search.target}")
    summary = run_search(config, progress=not args.no_progress, resume=False)
    _print_before_after(summary)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from hwnas.config import load_config

    config = load_config(args.config)
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, but got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.nproc}", "-m", "hwnas", "search", args.config]
        if args.no_progress:
            command.append("--no-progress")
        if args.fresh:
            command.append("--fresh")
        return subprocess.run(command).returncode
    try:
        summary = run_search(config, progress=not args.no_progress, resume=not args.fresh)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    _print_before_after(summary)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch

    import hwnas
    from hwnas.config import load_factory

    model = load_factory(args.factory)()
    df = hwnas.profile(model, torch.randn(args.input_shape), target=args.target)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(df.to_string(index=False))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    import hwnas
    from hwnas.config import load_factory
    from hwnas.onnx import export_onnx
    from hwnas.search import materialize

    path = Path(args.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a search result written by `hwnas search` "
                         f"(torch.load failed: {e})") from e
    if not isinstance(state, dict) or state.get("format") != "hwnas-search":
        raise ValueError(f"{str(path)!r} is not a search result written by `hwnas search` "
                         "(expected search.pt in the output folder)")
    cfg = state["config"]
    model = load_factory(cfg["model"]["factory"])(**cfg["model"]["kwargs"])
    example = torch.randn(tuple(cfg["model"]["input_shape"]))
    search = hwnas.wrap(model, example, costs=tuple(cfg["search"]["targets"]),
                        target=cfg["search"]["target"],
                        channel_multiple=cfg["search"].get("channel_multiple", 1),
                        leaf_modules=tuple(cfg["model"]["leaf_modules"]))
    search.load_state_dict(state["search"])
    exported = materialize(search.eval())
    exported.load_state_dict(state["model"])
    result = export_onnx(exported, args.onnx, example)
    print(f"wrote {result.path}: opset {result.opset}, params {result.params:,.0f}, "
          f"MACs {result.ops:,.0f}, max |ORT - torch| {result.max_abs_diff:.2e}")
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from hwnas.cost import known_targets, load_target

    for name in known_targets():
        t = load_target(name)
        print(f"{name:12s} {t.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwnas",
        description="Hardware-aware channel search for PyTorch: wrap, set cost targets "
                    "(params, MACs, FPGA LUTs), export verified ONNX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the built-in digits search end to end (no download)",
                       description="Search the digits CNN to 50%% params and 50%% MACs with "
                                   "DUCCIO, export ONNX and write a report.")
    p.add_argument("--out", default=None, help="report folder (default reports/demo)")
    p.add_argument("--quick", action="store_true", help="a few epochs only (smoke test)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("search", help="search your own model from a TOML config",
                       description="Run warm-up, search and fine-tune as described by a TOML "
                                   "config; see hwnas.config for the schema.")
    p.add_argument("config", help="path to the TOML config")
    p.add_argument("--fresh", action="store_true",
                   help="start over instead of resuming from OUT/checkpoint.pt")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (DistributedDataParallel via torchrun; "
                        "gloo on CPU, NCCL on GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("profile", help="per-layer params / MACs / LUTs of a model",
                       description="Trace a model and print one row per layer with its costs.")
    p.add_argument("factory", help="MODULE:FUNCTION or FILE.py:FUNCTION returning the model")
    p.add_argument("--input-shape", type=_shape, required=True, help="e.g. 1,3,32,32")
    p.add_argument("--target", default="generic", help="hardware target name or .toml path")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("export", help="export a search result to verified ONNX",
                       description="Rebuild the pruned model from search.pt and export ONNX.")
    p.add_argument("checkpoint", help="search.pt written by `hwnas search` / `hwnas demo`")
    p.add_argument("--onnx", required=True, help="destination .onnx file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("targets", help="list the shipped hardware targets")
    p.set_defaults(func=_cmd_targets)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hwnas`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        print(f"hwnas {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
