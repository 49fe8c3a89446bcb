"""Epoch times of the digits search with 1 and 2 processes (DDP over gloo, CPU).

Runs `hwnas search CONFIG` and `hwnas search CONFIG --nproc 2` on the same config (the
same global batch of 64), reads each run's history.csv and writes reports/ddp.md.

Run: python examples/bench_ddp.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[model]
factory = "hwnas.zoo.models:digits_cnn"
input_shape = [1, 1, 8, 8]

[data]
factory = "hwnas.zoo.datasets:digits"
kwargs = {{batch_size = 64}}

[search]
targets = {{params = 0.5, ops = 0.5}}
warmup_epochs = 2
search_epochs = 3
finetune_epochs = 1
patience = 0

[output]
folder = "{folder}"
"""


def run(nproc: int, workdir: Path) -> tuple[pd.DataFrame, float, dict]:
    folder = workdir / f"nproc{nproc}"
    cfg = workdir / f"nproc{nproc}.toml"
    cfg.write_text(CONFIG.format(folder=folder))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hwnas", "search", str(cfg), "--nproc", str(nproc),
                    "--no-progress"], check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    history = pd.read_csv(folder / "history.csv")
    costs = pd.read_csv(folder / "costs.csv")
    return history, wall, dict(zip(costs["cost"], costs["after"], strict=True))


def main() -> None:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        results = {n: run(n, Path(d)) for n in (1, 2)}
    lines = [
        "# Distributed search: 1 vs 2 processes (DDP, gloo, CPU)",
        "",
        "Command: `python examples/bench_ddp.py` (runs `hwnas search CONFIG` and "
        "`hwnas search CONFIG --nproc 2`, OMP_NUM_THREADS=1 per process).",
        "",
        "Digits CNN, global batch 64 (32 per rank with 2 processes), 2 warm-up, 3 search and "
        "1 fine-tune epochs. Mean seconds per epoch by phase, from each run's history.csv.",
        "",
        "| phase | 1 process (s/epoch) | 2 processes (s/epoch) | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for phase in ("warmup", "search", "finetune"):
        t1 = results[1][0].query("phase == @phase")["seconds"].mean()
        t2 = results[2][0].query("phase == @phase")["seconds"].mean()
        lines.append(f"| {phase} | {t1:.2f} | {t2:.2f} | {t1 / t2:.2f}x |")
    lines += [
        f"| whole command (wall, incl. start-up, export, report) | {results[1][1]:.1f} | "
        f"{results[2][1]:.1f} | {results[1][1] / results[2][1]:.2f}x |",
        "",
        "Exported costs: 1 process "
        + ", ".join(f"{k} {v:,.0f}" for k, v in results[1][2].items())
        + "; 2 processes " + ", ".join(f"{k} {v:,.0f}" for k, v in results[2][2].items()) + ".",
        "",
        "This machine has 2 CPU cores: they are the ceiling for 2 processes, each with one "
        "thread, and gloo's all-reduce of every gradient runs on the same cores. On GPUs "
        "(NCCL) or several machines the same command scales with the hardware. "
        f"Load average (1 min) when the run started: {load:.2f} (other work shares the "
        "cores; times vary with it).",
        "",
    ]
    out = ROOT / "reports" / "ddp.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
