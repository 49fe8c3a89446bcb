"""Benchmark: onnxruntime latency of pruned exports against their MAC ratio.

For the digits CNN (zoo ``digits_cnn``, input 1x1x8x8) and a small ResNet (zoo ``resnet``,
1x3x32x32) this builds the original model and two searched variants whose deterministic
gates keep about 50 % and 25 % of the original MACs. The gate states prune the same
fraction of every free channel group (the last channels of each group are closed); the
fraction is bisected until ``search.costs()["ops"]`` is as close as it gets to the target.
Every variant is exported with :func:`hwnas.export_onnx` (the original as the plain
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
from hwnas.export.onnx import export_onnx

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


def _kernels(path: Path) -> str:
    """How onnxruntime runs the convs of ``path``: blocked (NCHWc) convs / all convs, and
    the number of NCHWc -> NCHW reorders in its optimised graph."""
    import onnx

    with tempfile.TemporaryDirectory() as d:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    convs = [n for n in nodes if n.op_type in ("Conv", "FusedConv")]
    nchwc = sum(n.domain.endswith("nchwc") for n in convs)
    reorders = sum(n.op_type == "ReorderOutput" for n in nodes)
    return f"{nchwc}/{len(convs)}, {reorders}"


def bench(name: str, folder: Path, iters_b1: int, iters_b32: int) -> list[dict[str, object]]:
    model, x = build(name)
    model.eval()
    result = export_onnx(model, folder / f"{name}_original.onnx", x)
    groups = hwnas.wrap(model, x).summary(by="group")
    variants: list[dict[str, object]] = [{
        "variant": "original", "fraction": 0.0, "mac_ratio": 1.0, "path": result.path,
        "kept": "/".join(map(str, groups[groups["frozen"] == ""]["channels"].tolist())),
        "diff": result.max_abs_diff, "ops": result.ops, "params": result.params,
    }]
    reference = result.ops
    for align in (1, ALIGN):
        for target in TARGETS:
            search = hwnas.wrap(model, x)
            fraction, ratio = find_state(search, target, align)
            summary = search.summary(by="group").set_index("group")
            kept = "/".join(map(str, summary.loc[search.free_groups, "kept"].tolist()))
            if any(v["kept"] == kept for v in variants):
                continue  # the aligned state closest to this target is one we already have
            result = export_onnx(search, folder / f"{name}_{int(target * 100)}_{align}.onnx", x)
            assert result.ops == search.costs()["ops"]
            assert abs(result.ops / reference - ratio) < 1e-12
            label = f"~{int(target * 100)} % MACs"
            if align > 1:
                label = f"x{align} channels, closest to {int(target * 100)} %"
            variants.append({
                "variant": label, "fraction": fraction, "mac_ratio": ratio, "path": result.path,
                "kept": kept, "diff": result.max_abs_diff, "ops": result.ops,
                "params": result.params,
            })
    for v in variants:
        v["model"] = name
        v["kernels"] = _kernels(v["path"])  # type: ignore[arg-type]
    sessions = [_session(v["path"]) for v in variants]  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for batch, iters in ((1, iters_b1), (32, iters_b32)):
        data = rng.standard_normal((batch, *ZOO[name].input_shape[1:])).astype(np.float32)
        feeds = [{s.get_inputs()[0].name: data} for s in sessions]
        medians = _time_interleaved(sessions, feeds, iters, warmup=max(5, iters // 10))
        for v, ms in zip(variants, medians, strict=True):
            v[f"b{batch}"] = ms
    for v in variants:
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
        "variant is exported with `hwnas.export_onnx`, which checks onnxruntime "
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
        "| model | variant | kept channels | fraction | params | MACs | max diff "
        "| NCHWc convs / convs, reorders |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['kept']} | {r['fraction']:.3f} "
            f"| {int(r['params']):,} | {int(r['ops']):,} | {r['diff']:.1e} | {r['kernels']} |"
        )
    pruned = [r for r in rows if r["variant"] != "original"]

    def names_(batch: int, ok: bool) -> str:
        picked = [f"{r['model']} {r['variant']} ({r[f'q_b{batch}']:.2f})" for r in pruned
                  if (r[f"q_b{batch}"] <= GOAL) == ok]  # type: ignore[operator]
        return "; ".join(picked) or "none"

    lines += ["", "## Verdict", ""]
    for batch in (1, 32):
        lines.append(f"- Batch {batch}: met by {names_(batch, True)}. Not met by "
                     f"{names_(batch, False)}.")
    lines += [
        "",
        "Why latency does not follow MACs here:",
        "",
        "- Per-op overhead. At batch 1 these models take tens of microseconds (digits CNN) to "
        "a fraction of a millisecond (ResNet): kernel dispatch, waking the intra-op pool, "
        "layout reorders and the non-MAC ops (pooling, adds, ReLU, the input copy) are a "
        "large share of the time and do not shrink with the channel count.",
        "- Channel blocks. onnxruntime's fast CPU convs use a blocked layout (NCHWc, "
        f"{ALIGN} channels per block on AVX-512). With kept counts that are not multiples of "
        "the block, its graph optimiser reorders the activations back to NCHW after the convs "
        "or keeps plain NCHW convs (last column of the variants table: the original and the "
        "aligned variants have one reorder, the unaligned ones up to one per conv). The "
        "unaligned variants then save MACs on paper but much less time, and can even be "
        f"slower than the original. The `x{ALIGN} channels` variants keep aligned counts; "
        "where the model's groups are only 16 or 32 wide (ResNet) alignment cannot reach the "
        "MAC targets, and the closest aligned state is listed with its own MAC ratio. A "
        "hardware-aware search for this target should cost channels in blocks (or round the "
        "kept counts to the block) rather than count MACs one channel at a time: "
        "`hwnas.wrap(model, x, channel_multiple=16)` gives every group one gate per block of "
        "16 channels, so a search only produces aligned widths.",
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
