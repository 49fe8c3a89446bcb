"""Benchmark: time of ``hwnas.profile`` (trace + channel groups + costs) next to a forward pass.

For each model the profile and a plain eval-mode forward pass (``torch.no_grad``, batch 1)
are timed in the same process, interleaved: one warm-up of each, then ``--repeats`` rounds
of (profile, forward). The table reports medians and their ratio, and is written to
``reports/profile.md`` with the command that produced it.

Run from the repository root::

    python examples/bench_profile.py
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import hwnas

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from zoo import ZOO, build  # noqa: E402  (the test zoo, importable from tests/)

DEFAULT_MODELS = ["resnet18", "resnet", "mobilenetv2", "shufflenet", "densenet", "squeezenet"]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, repeats: int) -> dict[str, object]:
    model, x = build(name)
    model.eval()

    def run_profile():
        return hwnas.profile(model, x)

    def run_forward():
        with torch.no_grad():
            return model(x)

    df = run_profile()  # warm-up (and the numbers for the table)
    run_forward()
    t_profile, t_forward = [], []
    for _ in range(repeats):
        t_profile.append(_time(run_profile))
        t_forward.append(_time(run_forward))
    total = df[df["layer"] == "total"].iloc[0]
    p_ms = statistics.median(t_profile) * 1e3
    f_ms = statistics.median(t_forward) * 1e3
    return {
        "model": name,
        "input": "x".join(map(str, ZOO[name].input_shape)),
        "layers": len(df) - 1,
        "params": int(total["params"]),
        "macs": int(total["ops"]),
        "profile_ms": p_ms,
        "forward_ms": f_ms,
        "ratio": p_ms / f_ms,
    }


def to_markdown(
    rows: list[dict[str, object]], command: str, repeats: int, load: float
) -> str:
    lines = [
        "# hwnas.profile timing",
        "",
        f"Command: `{command}`",
        "",
        f"Median of {repeats} runs after one warm-up, profile and forward interleaved in one "
        f"process. Profile = `hwnas.profile(model, x)` (fx trace, one interpreted run for "
        f"shapes and channel groups, cost table); forward = `model(x)` in eval mode under "
        f"`torch.no_grad()`, batch 1. CPU: {platform.processor() or platform.machine()}, "
        f"torch threads: {torch.get_num_threads()}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, 1-minute load average {load:.1f} at the start "
        f"(other processes on the machine slow both columns alike; compare the ratio).",
        "",
        "| model | input | layers | params | MACs | profile time ms | forward time ms | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['layers']} | {r['params']:,} | {r['macs']:,} "
            f"| {r['profile_ms']:.1f} | {r['forward_ms']:.1f} | {r['ratio']:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(ZOO))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: stable timings on a shared machine; 0 keeps "
             "torch's default)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "profile.md")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, but got {args.repeats}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, but got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(
        shlex.quote(a) for a in ["examples/bench_profile.py", *sys.argv[1:]]
    )
    load = os.getloadavg()[0]
    rows = []
    for name in args.models:
        row = bench(name, args.repeats)
        print(
            f"{name:>14}: profile {row['profile_ms']:8.1f} ms  forward {row['forward_ms']:8.1f} ms"
            f"  ratio {row['ratio']:5.1f}",
            flush=True,
        )
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(rows, command, args.repeats, load))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
