"""The ``hwnas`` command line: argparse and dispatch only (the runs are in :mod:`hwnas.cli.runs`).

Exit codes: 0 success; 1 the search finished but the exported model misses a cost target
(``--allow-unmet`` makes that 0; the outputs are written either way and the report says
which target was missed); 2 an error, printed as one line ``hwnas COMMAND: error: ...``
(``--debug`` shows the traceback); 130 interrupted (a search resumes from its checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

from hwnas.errors import HwnasError

__all__ = ["build_parser", "main"]

EXIT_UNMET = 1
EXIT_ERROR = 2


def _version() -> str:
    from hwnas import __version__  # the package is imported already (hwnas.cli is in it)

    return __version__


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


def _print_summary(summary: Any, allow_unmet: bool) -> int:
    """The before/after table, accuracies and paths; the exit code for the targets."""
    if summary.before is None:  # not rank 0
        return 0
    before = summary.before.iloc[-1]
    after = summary.after.iloc[-1]
    print("\n| cost | original | target | exported | met |")
    print("|---|---:|---:|---:|:---:|")
    for name, target in summary.targets.items():
        print(f"| {name} | {float(before[name]):,.0f} | {target:,.0f} | "
              f"{float(after[name]):,.0f} | {'yes' if summary.met.get(name) else 'NO'} |")
    sizes = summary.sizes
    if summary.test_accuracy is not None:
        was = (f"; unpruned after warm-up {summary.test_accuracy_before:.4f}"
               if summary.test_accuracy_before is not None else "")
        print(f"\ntest accuracy of the exported model: {summary.test_accuracy:.4f}{was} "
              f"(untouched test split, {sizes.get('test'):,} examples)")
    if summary.val_accuracy is not None:
        used = "used for early stopping" if summary.early_stopping else "early stopping off"
        print(f"validation accuracy: {summary.val_accuracy:.4f} ({sizes.get('validation'):,} "
              f"examples, {used})")
    print(f"ONNX: {summary.onnx.path} (checked with onnx.checker and onnxruntime)")
    print(f"report: {summary.paths.get('report.html', summary.folder)}")
    if summary.all_met:
        return 0
    missed = ", ".join(k for k, ok in summary.met.items() if not ok)
    if allow_unmet:
        print(f"note: cost target(s) not met: {missed} (--allow-unmet)")
        return 0
    print(f"hwnas: cost target(s) not met: {missed}; the outputs are written, see the report "
          "(--allow-unmet exits 0)", file=sys.stderr)
    return EXIT_UNMET


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.lut:
        from hwnas.cli.lut_demo import cmd_demo_lut

        return cmd_demo_lut(args)
    if args.precision:
        from hwnas.cli.precision_demo import demo_precision

        return _print_summary(demo_precision(args), args.allow_unmet)
    from hwnas.cli.runs import demo_config, run_search, with_overrides

    config = with_overrides(demo_config(out=args.out, quick=args.quick), args.device,
                            args.amp)
    print("hwnas demo: digits CNN, DUCCIO search to 50% params and 50% MACs, "
          f"target {config.search.target}")
    summary = run_search(config, progress=not args.no_progress, resume=False)
    return _print_summary(summary, args.allow_unmet)


def _cmd_search(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from hwnas.cli.runs import run_search, with_overrides
    from hwnas.cli.schema import load_config
    from hwnas.errors import InvalidValueError

    config = with_overrides(load_config(args.config), args.device, args.amp)
    if args.nproc < 1:
        raise InvalidValueError(f"--nproc must be >= 1, but got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.nproc}", "-m", "hwnas", "search", args.config]
        for flag in ("no_progress", "fresh", "allow_unmet", "debug", "trust"):
            if getattr(args, flag, False):
                command.append("--" + flag.replace("_", "-"))
        for option in ("device", "amp"):
            if getattr(args, option) is not None:
                command += ["--" + option, getattr(args, option)]
        return subprocess.run(command).returncode
    try:
        summary = run_search(config, progress=not args.no_progress, resume=not args.fresh,
                             trust=args.trust)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return _print_summary(summary, args.allow_unmet)


def _cmd_profile(args: argparse.Namespace) -> int:
    from hwnas._internal.files import atomic_write
    from hwnas.cli.runs import check_output_file, profile_factory

    csv = check_output_file(args.csv, "--csv") if args.csv else None
    df = profile_factory(args.factory, args.input_shape, args.target)
    if csv is not None:
        with atomic_write(csv) as tmp:
            df.to_csv(tmp, index=False)
    print(df.to_string(index=False))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from hwnas.cli.runs import export_search_result

    onnx, program = export_search_result(args.checkpoint, args.onnx, args.torch, args.trust)
    if onnx is not None:
        print(f"wrote {onnx.path}: opset {onnx.opset}, params {onnx.params:,.0f}, MACs "
              f"{onnx.ops:,.0f}, max |ORT - torch| {onnx.max_abs_diff:.2e}")
    if program is not None:
        print(f"wrote {program.path}: torch.export program (load with hwnas.load or "
              f"torch.export.load(path).module()), max |program - torch| "
              f"{program.max_abs_diff:.2e}")
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from hwnas.cost import known_targets, load_target

    for name in known_targets():
        t = load_target(name)
        print(f"{name:12s} {t.description}")
    return 0


def _add_trust_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", action="store_true",
                   help="load a file that holds more than tensors and plain data (an older "
                        "hwnas's, or one of unknown origin: it could run code)")


def _add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="auto (CUDA when available; the default), cpu, cuda or cuda:N; "
                        "overrides [search] device")
    p.add_argument("--amp", default=None, choices=("fp32", "bf16", "fp16"),
                   help="automatic mixed precision of the training steps (torch.autocast); "
                        "overrides [search] precision")


def build_parser() -> argparse.ArgumentParser:
    """The parser: one small function per command adds its sub-parser."""
    parser = argparse.ArgumentParser(
        prog="hwnas",
        description="Hardware-aware channel search for PyTorch: wrap, set cost targets "
                    "(params, MACs, FPGA LUTs), export verified ONNX.",
        epilog="Exit codes: 0 success, 1 cost targets not met (see --allow-unmet), "
               "2 error (one line; --debug for the traceback).",
    )
    parser.add_argument("--version", action="version", version=f"hwnas {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_search, _add_profile, _add_export, _add_targets, _add_hw):
        add(sub)
    for command in sub.choices.values():  # `hwnas CMD ... --debug` works for every command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    return parser


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the built-in digits search end to end (no download)",
                       description="Search the digits CNN to 50% params and 50% MACs with "
                                   "DUCCIO, export ONNX and write a report.")
    p.add_argument("--out", default=None, help="report folder (default reports/demo)")
    p.add_argument("--quick", action="store_true", help="a few epochs only (smoke test)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (one line per epoch and per step stays)")
    p.add_argument("--allow-unmet", action="store_true",
                   help="exit 0 even when a cost target is not met")
    p.add_argument("--lut", action="store_true",
                   help="the DiffLUT variant: train a LUT network on digits, export Verilog, "
                        "simulate it, synthesize it with yosys (report folder reports/demo-lut)")
    p.add_argument("--target", default=None, help="with --lut: target (default xc7-lut6)")
    p.add_argument("--precision", action="store_true",
                   help="search bit widths too (2-8 bits per layer, weights and activations) "
                        "to 10%% of the 8-bit model's LUTs; writes the QONNX and QDQ files and "
                        "the bits per layer beside the report (folder reports/demo-precision); "
                        "not --amp, the dtype of training")
    _add_device_arguments(p)
    p.set_defaults(func=_cmd_demo)


def _add_search(sub: Any) -> None:
    p = sub.add_parser("search", help="search your own model from a TOML config",
                       description="Run warm-up, search and fine-tune as described by a TOML "
                                   "config; see hwnas.cli.schema for the schema.")
    p.add_argument("config", help="path to the TOML config")
    p.add_argument("--fresh", action="store_true",
                   help="start over instead of resuming from OUT/checkpoint.pt")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (DistributedDataParallel via torchrun; "
                        "gloo on CPU, NCCL on GPU)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (one line per epoch and per step stays)")
    p.add_argument("--allow-unmet", action="store_true",
                   help="exit 0 even when a cost target is not met")
    _add_device_arguments(p)
    _add_trust_argument(p)
    p.set_defaults(func=_cmd_search)


def _add_profile(sub: Any) -> None:
    p = sub.add_parser("profile", help="per-layer params / MACs / LUTs of a model",
                       description="Trace a model and print one row per layer with its costs.")
    p.add_argument("factory", help="MODULE:FUNCTION or FILE.py:FUNCTION returning the model")
    p.add_argument("--input-shape", type=_shape, required=True, help="e.g. 1,3,32,32")
    p.add_argument("--target", default="generic", help="hardware target name or .toml path")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.set_defaults(func=_cmd_profile)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a search result to verified ONNX or PyTorch",
                       description="Rebuild the pruned model from search.pt and export it: "
                                   "ONNX (--onnx) and/or a torch.export program (--torch), "
                                   "each verified against PyTorch. In Python, hwnas.load(path) "
                                   "gives the pruned model as an nn.Module.")
    p.add_argument("checkpoint", help="search.pt written by `hwnas search` / `hwnas demo`")
    p.add_argument("--onnx", default=None, help="destination .onnx file")
    p.add_argument("--torch", default=None,
                   help="destination .pt2 file: a torch.export program (no pickled code; "
                        "torch.export.load(path).module() runs it without hwnas)")
    _add_trust_argument(p)
    p.set_defaults(func=_cmd_export)


def _add_targets(sub: Any) -> None:
    p = sub.add_parser("targets", help="list the shipped hardware targets")
    p.set_defaults(func=_cmd_targets)


def _add_hw(sub: Any) -> None:
    from hwnas.cli import hw

    p = sub.add_parser("synth", help="synthesize Verilog or a LUT network with yosys",
                       description="Run yosys with the target's script and print the LUTs, "
                                   "carries, muxes and flip-flops of its stat; --pnr places "
                                   "and routes on the target's iCE40 part.")
    hw.add_synth_arguments(p)
    p.set_defaults(func=hw.cmd_synth)
    p = sub.add_parser("calibrate", help="fit a target's LUT costs to yosys runs",
                       description="Synthesize the micro-benchmarks (one at a time), fit the "
                                   "LUT cost models and write them into a target file.")
    hw.add_calibrate_arguments(p)
    p.set_defaults(func=hw.cmd_calibrate)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hwnas`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except HwnasError as e:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(e).split())  # one line, whatever the message holds
        print(f"hwnas {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"hwnas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
