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
ALIGN = 16  # onnxruntime's NCHWc conv block on AVX-512 (8 on AVX2)


def _prune_uniformly_(search: hwnas.SearchModel, fraction: float, align: int = 1) -> None:
    """Close the last ``round(fraction * n)`` channels of every free group; with ``align``,
    round the kept count up to a multiple of ``align`` (groups narrower stay whole)."""
    for g in search.free_groups:
        n = search.gate(g).n
        keep = max(1, n - int(round(fraction * n)))
        keep = min(n, -(-keep // align) * align)
        values = torch.zeros(n)
        values[:keep] = 1.0
        search.gate(g).set_deterministic_(values)


def _mac_ratio(search: hwnas.SearchModel, fraction: float, reference: float, align: int) -> float:
    _prune_uniformly_(search, fraction, align)
    return search.costs()["ops"] / reference


def find_state(search: hwnas.SearchModel, target: float, align: int = 1) -> tuple[float, float]:
    """Bisect the pruned fraction so that the MAC ratio is closest to ``target``; leaves
    ``search`` in that state and returns (fraction, MAC ratio)."""
    reference = search.reference_costs()["ops"]
    lo, hi = 0.0, 1.0
    best = (abs(_mac_ratio(search, 0.0, reference, align) - target), 0.0)
    for _ in range(30):
        mid = (lo + hi) / 2
        ratio = _mac_ratio(search, mid, reference, align)
        best = min(best, (abs(ratio - target), mid))
        if ratio > target:
            lo = mid
        else:
            hi = mid
    ratio = _mac_ratio(search, best[1], reference, align)
    return best[1], ratio


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Idle pool threads of one session must not spin on the cores the next session needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    widths = hwnas.wrap(model, x).summary(by="group")
    widths = widths[widths["frozen"] == ""]["channels"].tolist()
    variants.append({"variant": "original", "fraction": 0.0, "mac_ratio": 1.0,
                     "kept": "/".join(map(str, widths)),
                     "path": result.path, "diff": result.max_abs_diff, "ops": result.ops,
                     "params": result.params})
    reference = result.ops
    for target, align in [(t, a) for a in (1, ALIGN) for t in TARGETS]:
        search = hwnas.wrap(model, x)
        fraction, ratio = find_state(search, target, align)
        kept = search.summary(by="group").set_index("group").loc[search.free_groups, "kept"]
        result = export_onnx(search, folder / f"{name}_{int(target * 100)}_{align}.onnx", x)
        assert result.ops == search.costs()["ops"]
        label = f"~{int(target * 100)} % MACs" + (f", x{align} channels" if align > 1 else "")
        variants.append({"variant": label, "fraction": fraction,
                         "kept": "/".join(map(str, kept.tolist())),
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


def _fmt_q(q: float) -> str:
    return f"{q:.2f}" if q <= GOAL else f"**{q:.2f}**"


def to_markdown(rows: list[dict[str, object]], command: str, args, load: float, secs: float) -> str:
    lines = [
        "# Pruned ONNX exports: latency against MACs",
        "",
        f"Command: `{command}`",
        "",
        "Each searched variant closes the same fraction of every free channel group (the last "
        "channels of each group; the fraction bisected to hit the target MAC ratio). The "
        f"`x{ALIGN} channels` variants round every kept count up to a multiple of {ALIGN}, the "
        "channel block of onnxruntime's NCHWc convolutions on AVX-512 (8 on AVX2). Every "
        "variant is exported with `hwnas.export.export_onnx`, which checks onnxruntime "
        "against PyTorch (`max diff`); the original is exported as the plain model. "
        f"onnxruntime {ort.__version__}, CPUExecutionProvider, 2 intra-op threads, 1 "
        "inter-op thread, no thread spinning (so that one session's idle pool does not steal "
        "the cores of the next), default graph optimisations (BatchNorm folded, NCHWc "
        "layout). The variants of one model are timed interleaved in one loop: "
        f"{args.iters_b1} rounds at batch 1 and {args.iters_b32} at batch 32 after a "
        f"warm-up; medians. CPU: {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, Python {platform.python_version()}, 1-minute load average "
        f"{load:.1f} at the start (other processes slow all variants alike; compare "
        f"ratios). Total run time {secs:.0f} s.",
        "",
        f"Goal: latency ratio (variant / original) within {GOAL}x of the MAC ratio, i.e. "
        f"latency ratio / MAC ratio <= {GOAL} (misses in bold).",
        "",
        "| model | variant | MAC ratio | latency b1 (ms) | latency b32 (ms) | latency ratio b1 "
        "| latency ratio b32 | latency ratio / MAC ratio b1 | latency ratio / MAC ratio b32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['mac_ratio']:.3f} | {r['b1']:.3f} "
            f"| {r['b32']:.3f} | {r['lat_ratio_b1']:.2f} | {r['lat_ratio_b32']:.2f} "
            f"| {_fmt_q(r['q_b1'])} | {_fmt_q(r['q_b32'])} |"  # type: ignore[arg-type]
        )
    lines += [
        "",
        "Variants: channels kept per free group, pruned fraction, exact costs of the export.",
        "",
        "| model | variant | kept channels | fraction | params | MACs | max diff |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['kept']} | {r['fraction']:.3f} "
            f"| {int(r['params']):,} | {int(r['ops']):,} | {r['diff']:.1e} |"
        )
    met = {b: [r for r in rows if r["variant"] != "original" and r[f"q_b{b}"] <= GOAL]
           for b in (1, 32)}
    n = sum(r["variant"] != "original" for r in rows)
    lines += [
        "",
        "## Verdict",
        "",
        f"The goal is met by {len(met[1])} of {n} variants at batch 1 and {len(met[32])} of "
        f"{n} at batch 32: "
        + "; ".join(f"{r['model']} {r['variant']} (b1 {r['q_b1']:.2f}, b32 {r['q_b32']:.2f})"
                    for r in rows if r["variant"] != "original") + ".",
        "",
        "Why latency does not follow MACs here:",
        "",
        "- Per-op overhead. At batch 1 these models take tens of microseconds (digits CNN) to "
        "a fraction of a millisecond (ResNet): kernel dispatch, waking the intra-op pool, "
        "layout reorders and the non-MAC ops (pooling, adds, ReLU, the input copy) are a "
        "large share of the time and do not shrink with the channel count.",
        f"- Channel blocks. onnxruntime runs these convs in the NCHWc layout, {ALIGN} channels "
        "per block on AVX-512: a layer with 23 channels costs what 32 cost. Pruned counts that "
        f"are not multiples of {ALIGN} save MACs on paper but little time; the "
        f"`x{ALIGN} channels` variants show what aligned counts give at the same MAC budget. "
        "A hardware-aware cost for this target would count MACs of padded channels.",
        "- Noise. The machine is shared (see the load average); interleaving makes the "
        "ratios comparable within one model, but single ratios can still move by 10-20 % "
        "between runs, most at batch 1.",
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
