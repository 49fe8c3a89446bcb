"""Benchmark: onnxruntime latency of pruned exports against their MAC ratio.

For the digits CNN (zoo ``digits_cnn``, input 1x1x8x8) and a small ResNet (zoo ``resnet``,
1x3x32x32) this builds the original model and two searched variants whose deterministic
gates keep about 50 % and 25 % of the original MACs. The gate states prune the same
fraction of every free channel group (the last channels of each group are closed); the
fraction is bisected until ``search.costs()["ops"]`` is as close as it gets to the target.
Every variant is exported with :func:`hwnas.export.export_onnx` (the original as the plain
model), which checks onnxruntime against PyTorch. All sessions use 2 intra-op threads and
1 inter-op thread and are timed interleaved in one loop (warm-up, then ``--iters-b1``
rounds at batch 1 and ``--iters-b32`` rounds at batch 32); the table reports medians.

The goal: a variant's latency ratio (pruned / original) within 1.2x of its MAC ratio.

Run from the repository root::

    python examples/bench_export.py
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import hwnas
from hwnas.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from zoo import ZOO, build  # noqa: E402  (the test zoo, importable from tests/)

MODELS = ["digits_cnn", "resnet"]
TARGETS = [0.5, 0.25]
GOAL = 1.2


def _prune_uniformly_(search: hwnas.SearchModel, fraction: float) -> None:
    """Close the last ``round(fraction * n)`` channels of every free group."""
    for g in search.free_groups:
        n = search.gate(g).n
        keep = max(1, n - int(round(fraction * n)))
        values = torch.zeros(n)
        values[:keep] = 1.0
        search.gate(g).set_deterministic_(values)


def _mac_ratio(search: hwnas.SearchModel, fraction: float, reference: float) -> float:
    _prune_uniformly_(search, fraction)
    return search.costs()["ops"] / reference


def find_state(search: hwnas.SearchModel, target: float) -> tuple[float, float]:
    """Bisect the pruned fraction so that the MAC ratio is closest to ``target``."""
    reference = search.reference_costs()["ops"]
    lo, hi = 0.0, 1.0
    best = (abs(_mac_ratio(search, 0.0, reference) - target), 0.0)
    for _ in range(30):
        mid = (lo + hi) / 2
        ratio = _mac_ratio(search, mid, reference)
        best = min(best, (abs(ratio - target), mid))
        if ratio > target:
            lo = mid
        else:
            hi = mid
    ratio = _mac_ratio(search, best[1], reference)
    return best[1], ratio


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time_interleaved(
    sessions: list[ort.InferenceSession], feeds: list[dict[str, np.ndarray]], iters: int,
    warmup: int,
) -> list[float]:
    """Median ms per session; one round runs every session once, in turn."""
    times: list[list[float]] = [[] for _ in sessions]
    for it in range(warmup + iters):
        for k, (session, feed) in enumerate(zip(sessions, feeds, strict=True)):
            start = time.perf_counter()
            session.run(None, feed)
            elapsed = time.perf_counter() - start
            if it >= warmup:
                times[k].append(elapsed)
    return [statistics.median(t) * 1e3 for t in times]


def bench(name: str, folder: Path, iters_b1: int, iters_b32: int) -> list[dict[str, object]]:
    model, x = build(name)
    model.eval()
    variants: list[dict[str, object]] = []
    result = export_onnx(model, folder / f"{name}_original.onnx", x)
    variants.append({"variant": "original", "fraction": 0.0, "mac_ratio": 1.0,
                     "path": result.path, "diff": result.max_abs_diff, "ops": result.ops,
                     "params": result.params})
    reference = result.ops
    for target in TARGETS:
        search = hwnas.wrap(model, x)
        fraction, ratio = find_state(search, target)
        result = export_onnx(search, folder / f"{name}_{int(target * 100)}.onnx", x)
        assert result.ops == search.costs()["ops"]
        variants.append({"variant": f"~{int(target * 100)} % MACs", "fraction": fraction,
                         "mac_ratio": result.ops / reference, "path": result.path,
                         "diff": result.max_abs_diff, "ops": result.ops,
                         "params": result.params})
        assert abs(result.ops / reference - ratio) < 1e-12
    sessions = [_session(v["path"]) for v in variants]  # type: ignore[arg-type]
    input_name = sessions[0].get_inputs()[0].name
    rng = np.random.default_rng(0)
    for batch, iters in ((1, iters_b1), (32, iters_b32)):
        data = rng.standard_normal((batch, *ZOO[name].input_shape[1:])).astype(np.float32)
        feeds = [{s.get_inputs()[0].name: data} for s in sessions]
        assert all(s.get_inputs()[0].name == input_name for s in sessions)
        medians = _time_interleaved(sessions, feeds, iters, warmup=max(5, iters // 10))
        for v, ms in zip(variants, medians, strict=True):
            v[f"b{batch}"] = ms
    for v in variants:
        v["model"] = name
        for batch in (1, 32):
            v[f"lat_ratio_b{batch}"] = v[f"b{batch}"] / variants[0][f"b{batch}"]
            v[f"q_b{batch}"] = v[f"lat_ratio_b{batch}"] / v["mac_ratio"]
    return variants


def _verdict(q: float) -> str:
    return "met" if q <= GOAL else "not met"


def to_markdown(rows: list[dict[str, object]], command: str, args, load: float, secs: float) -> str:
    lines = [
        "# Pruned ONNX exports: latency against MACs",
        "",
        f"Command: `{command}`",
        "",
        "Each searched variant closes the same fraction of every free channel group (the "
        "fraction bisected to hit the target MAC ratio; `fraction` below) and is exported "
        "with `hwnas.export.export_onnx`, which also checks onnxruntime against PyTorch "
        "(largest difference in the `max diff` column). onnxruntime "
        f"{ort.__version__}, CPUExecutionProvider, 2 intra-op threads, 1 inter-op thread, "
        "default graph optimisations (BatchNorm folded into the convs). The models of one "
        "table block are timed interleaved in one loop: "
        f"{args.iters_b1} rounds at batch 1 and {args.iters_b32} at batch 32 after a warm-up; "
        "medians. "
        f"CPU: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}, 1-minute load average {load:.1f} at the start "
        "(other processes slow all variants alike; compare ratios). "
        f"Total run time {secs:.0f} s.",
        "",
        f"Goal: latency ratio (variant / original) within {GOAL}x of the MAC ratio, i.e. "
        f"latency ratio / MAC ratio <= {GOAL}.",
        "",
        "| model | variant | fraction | params | MACs | MAC ratio | max diff | latency b1 (ms) "
        "| latency b32 (ms) | latency ratio b1 | latency ratio b32 | latency ratio / MAC ratio "
        "b1 | latency ratio / MAC ratio b32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['fraction']:.3f} | {int(r['params']):,} "
            f"| {int(r['ops']):,} | {r['mac_ratio']:.3f} | {r['diff']:.1e} | {r['b1']:.3f} "
            f"| {r['b32']:.3f} | {r['lat_ratio_b1']:.2f} | {r['lat_ratio_b32']:.2f} "
            f"| {r['q_b1']:.2f} | {r['q_b32']:.2f} |"
        )
    lines += ["", "## Verdict", ""]
    for r in rows:
        if r["variant"] == "original":
            continue
        lines.append(
            f"- {r['model']}, {r['variant']} (MAC ratio {r['mac_ratio']:.2f}): batch 1 "
            f"{_verdict(r['q_b1'])} ({r['q_b1']:.2f}x), batch 32 {_verdict(r['q_b32'])} "
            f"({r['q_b32']:.2f}x)."
        )
    lines += [
        "",
        "Where the goal is not met, the cause is fixed per-inference cost that MACs do not "
        "count: at batch 1 these models run in tens of microseconds to about a millisecond, "
        "so onnxruntime's per-op dispatch, thread-pool hand-off and memory traffic of the "
        "non-MAC ops (pooling, adds, ReLU, the input copy) are a large share of the time and "
        "do not shrink with the channel count; narrow convs also use the vectorised kernels "
        "less efficiently. Batch 32 amortises the per-op overhead and is the fairer test of "
        "whether fewer MACs give proportionally less time.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=sorted(ZOO))
    parser.add_argument("--iters-b1", type=int, default=200)
    parser.add_argument("--iters-b32", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "export.md")
    args = parser.parse_args(argv)
    command = "python examples/bench_export.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:]) else "")
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    start = time.perf_counter()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            rows += bench(name, Path(d), args.iters_b1, args.iters_b32)
    secs = time.perf_counter() - start
    text = to_markdown(rows, command, args, load, secs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
