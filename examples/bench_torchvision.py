"""Benchmark: hwnas over torchvision's models: exact costs, gated channels, exact export.

For every model of ``torchvision.models.list_models()`` in the chosen families that runs on
CPU at a small input (``weights=None``; detection models as their backbone), in a fresh
process each:

1. reference counts from the ops that run (``tests/flop_reference.py``): MACs =
   FlopCounterMode / 2 plus one per output of each op that adds a bias parameter; params =
   every parameter that enters a MAC op;
2. ``hwnas.profile``: its params and ops must equal the reference exactly;
3. ``hwnas.wrap``: the share of the *inner* channels (outputs of conv, linear and attention
   layers that are neither in a model-input nor in a model-output group) that get a gate;
4. seeded random gates (half of each group's gates closed, the others in [0.3, 1]), then
   ``hwnas.materialize``: the pruned model's outputs against the search model's (largest
   difference relative to the largest output) and its profiled costs against
   ``search.costs()``;
5. ``hwnas.export_onnx`` of the pruned model: checker + onnxruntime parity.

The table is written to ``reports/torchvision.md`` with the command that produced it.
torchvision is a benchmark/test dependency: ``pip install --no-deps "torchvision==0.28.*"``.

Run from the repository root::

    python examples/bench_torchvision.py                 # all (about an hour on 2 cores)
    python examples/bench_torchvision.py --models resnet18 vit_b_32 --out /tmp/tv.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from flop_reference import reference_counts  # noqa: E402  (tests/, does not import hwnas)
from tv_zoo import (  # noqa: E402
    FAMILIES,
    build,
    family,
    import_torchvision,
    inner_channels,
    inputs,
    names,
    set_random_gates,
)

#: Relative output difference (pruned vs search model) that still counts as parity.
PARITY = 1e-5
#: Share of inner channels with a gate that a model must reach.
GATED = 0.9


def _frozen_reasons(search: Any) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for g in search.groups:
        if g.frozen and g.frozen not in ("model input", "model output"):
            key = g.frozen.split(" at ")[0]
            counts[key] = counts.get(key, 0) + g.size
    return sorted(counts.items(), key=lambda kv: -kv[1])[:3]


def _rel_diff(a: Any, b: Any) -> float:
    la, lb = tree_leaves(a), tree_leaves(b)
    scale = max(float(t.abs().max()) for t in la)
    return max(float((x - y).abs().max()) for x, y in zip(la, lb, strict=True)) / max(scale, 1e-12)


def run_one(name: str, size: int, fraction: float, seed: int, onnx: bool) -> dict[str, Any]:
    import hwnas

    row: dict[str, Any] = {"model": name, "family": family(name)}
    times: dict[str, float] = {}

    def timed(key: str, fn: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        times[key] = time.perf_counter() - start
        return out

    model, x = build(name, size, seed)
    row["input"] = "x".join(map(str, x.shape))
    xs = inputs(x, name)
    ref = timed("reference", lambda: reference_counts(model, *xs))
    row.update(ref_params=ref.params, ref_macs=ref.macs, ref_biased=ref.biased_outputs,
               ref_ops=ref.ops)
    total = timed("profile", lambda: hwnas.profile(model, xs)).iloc[-1]
    row.update(params=int(total["params"]), ops=int(total["ops"]))
    search = timed("wrap", lambda: hwnas.wrap(model, xs))
    row["inner"], row["gated"] = inner_channels(search)
    row["frozen_top"] = _frozen_reasons(search)
    set_random_gates(search, fraction, seed)
    search.eval()
    pruned = timed("materialize", lambda: hwnas.materialize(search).eval())
    with torch.no_grad():
        row["parity"] = _rel_diff(search(*xs), pruned(*xs))
    costs = search.costs()
    p_total = hwnas.profile(pruned, xs).iloc[-1]
    row["cost_match"] = (costs["params"] == float(p_total["params"])
                         and costs["ops"] == float(p_total["ops"]))
    row["kept_params"] = int(p_total["params"])
    if onnx:
        with tempfile.TemporaryDirectory() as d:
            result = timed("onnx", lambda: hwnas.export_onnx(pruned, f"{d}/m.onnx", xs))
        row["onnx"] = True
        row["onnx_rel"] = result.max_rel_diff
    row["times"] = times
    return row


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    try:
        row = run_one(args.one, args.size, args.fraction, args.seed, not args.no_onnx)
    except Exception as e:  # reported in the table, with the first line of the error
        row = {"model": args.one, "family": family(args.one),
               "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        traceback.print_exc()
    Path(args.json).write_text(json.dumps(row, default=float))


def _run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "row.json"
        cmd = [sys.executable, __file__, "--one", name, "--json", str(out), "--size",
               str(args.size), "--fraction", str(args.fraction), "--seed", str(args.seed),
               "--threads", str(args.threads)] + (["--no-onnx"] if args.no_onnx else [])
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"model": name, "family": family(name),
                    "error": f"timed out after {args.timeout} s"}
        wall = time.perf_counter() - start
        if not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"model": name, "family": family(name),
                    "error": f"process exited with {done.returncode}: {tail[0][:300]}"}
        row = json.loads(out.read_text())
        row["wall"] = wall
        return row


# ------------------------------------------------------------------------------ report


def _checks(r: dict[str, Any]) -> dict[str, bool]:
    ok = "error" not in r
    gated = ok and r["inner"] > 0 and r["gated"] / r["inner"] >= GATED
    return {
        "params exact": ok and r["params"] == r["ref_params"],
        "ops exact": ok and r["ops"] == r["ref_ops"],
        f">= {GATED:.0%} inner channels gated": gated,
        "export parity": ok and r["parity"] <= PARITY and r["cost_match"],
        "ONNX verified": ok and bool(r.get("onnx")),
    }


def _row(r: dict[str, Any], c: dict[str, bool]) -> str:
    if "error" in r:
        return (f"| {r['model']} | {r['family']} | | | | | | | | | | | | | "
                f"{r['error'].replace('|', '/')} |")
    exact = "yes" if c["params exact"] and c["ops exact"] else "**no**"
    share = r["gated"] / r["inner"] if r["inner"] else float("nan")
    t = r["times"]
    times = "/".join(f"{t.get(k, float('nan')):.1f}" for k in
                     ("reference", "profile", "wrap", "materialize", "onnx"))
    notes = "; ".join(f"{k}: {v}" for k, v in r["frozen_top"]) if share < GATED else ""
    return (f"| {r['model']} | {r['family']} | {r['input']} | {r['params']:,} | "
            f"{r['ref_params']:,} | {r['ops']:,} | {r['ref_macs']:,} | {r['ref_biased']:,} | "
            f"{exact} | {r['inner']:,} | {share:.1%} | {r['parity']:.1e}"
            f"{'' if r['cost_match'] else ' (costs differ)'} | "
            f"{'yes' if r.get('onnx') else 'no'} | {times} | {notes} |")


#: Why a model cannot pass (by model-name prefix), for the exceptions section.
_WHY = {
    "mvit": "MViT's pooling attention runs inside three torch.fx-wrapped torchvision "
            "functions (`_unsqueeze`, `_squeeze`, `_add_rel_pos`) that hwnas has no rule "
            "for: they are opaque, so the relative-position einsums inside `_add_rel_pos` "
            "are not counted and the channels that pass through them are frozen. Rules "
            "for those three functions (as for Swin's `shifted_window_attention`) would "
            "make it exact.",
    "raft": "torch.fx cannot trace RAFT (its update loop branches on tensor values); "
            "hwnas needs a traced graph for costs and channel groups. Passing its "
            "data-dependent parts as `leaf_modules` makes it traceable, with those parts "
            "opaque (their channels frozen).",
}


def _exceptions(rows: list[dict[str, Any]], checks: dict[int, dict[str, bool]]) -> list[str]:
    lines = []
    for r in rows:
        failed = [k for k, ok in checks[id(r)].items() if not ok]
        if not failed:
            continue
        why = next((text for prefix, text in _WHY.items() if r["model"].startswith(prefix)),
                   r.get("error") or "; ".join(f"{k}: {v}" for k, v in r.get("frozen_top", ())))
        lines.append(f"- **{r['model']}** (fails: {', '.join(failed)}): {why}")
    return lines


_HEADER = [
    "| model | family | input | params | ref params | ops | ref MACs | ref biased outputs "
    "| exact | inner ch. | gated | parity (rel) | ONNX | times ref/prof/wrap/mat/onnx | notes |",
    "|---|---|---|---:|---:|---:|---:|---:|:-:|---:|---:|---:|:-:|---|---|",
]


def to_markdown(rows: list[dict[str, Any]], command: str, args: argparse.Namespace,
                wall: float) -> str:
    main = [r for r in rows if r["family"] in FAMILIES]
    other = [r for r in rows if r["family"] not in FAMILIES]
    parts = [(main, "classification, segmentation, detection backbones"),
             (other, "other families (" + ", ".join(sorted({r["family"] for r in other}))
              + ")")]
    parts = [(rs, label) for rs, label in parts if rs]
    checks = {id(r): _checks(r) for r in rows}
    keys = list(_checks(rows[0])) if rows else []
    lines = [
        "# hwnas on torchvision's models",
        "",
        f"Command: `{command}`",
        "",
        f"torchvision {import_torchvision().__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, torch threads per model "
        f"{args.threads or torch.get_num_threads()}; {len(rows)} models of "
        "`torchvision.models.list_models()` (families: " + ", ".join(args.families) + "; "
        f"detection models as their `.backbone`), `weights=None`, seed {args.seed}, input "
        f"1x3x{args.size}x{args.size} unless the model needs another (column *input*; video "
        f"1x3xTxHxW, optical flow a pair of images). Total wall time {wall / 60:.1f} min.",
        "",
        "| check | " + " | ".join(f"{label} ({len(rs)})" for rs, label in parts) + " |",
        "|---|" + "---:|" * len(parts),
    ]
    for key in keys + ["all of the above"]:
        cells = []
        for rs, _ in parts:
            ok = [all(checks[id(r)].values()) if key == "all of the above"
                  else checks[id(r)][key] for r in rs]
            cells.append(f"{sum(ok)} / {len(rs)}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- **params / ops**: `hwnas.profile` totals; *ref* = every parameter that enters a "
        "MAC op, and FlopCounterMode / 2 + one MAC per output of an op that adds a bias "
        "parameter (`tests/flop_reference.py`; CPU attention gets the counter's own "
        "attention formula). Exact means equal integers.",
        "- **inner channels**: output channels of conv, linear and attention layers outside "
        "the model-input and model-output groups; *gated* = in a free group (one gate per "
        "channel class; tied channels, e.g. one index in every head or every group of a "
        "grouped conv, share a gate). *notes* names the largest frozen groups of a model "
        f"below {GATED:.0%}.",
        f"- **parity**: seeded random gates ({args.fraction:.0%} of each group's gates "
        "closed, the others in [0.3, 1]); largest |search - pruned| relative to the largest "
        f"output, eval mode; passes at <= {PARITY:g} and when the pruned model's profiled "
        "params and ops equal `search.costs()` exactly.",
        "- **ONNX**: `hwnas.export_onnx` of the pruned model (onnx.checker, onnxruntime at "
        "batch 1 and 3, atol = rtol = 1e-4).",
        "- **times** (s): reference count, profile, wrap, materialize, ONNX export + checks.",
    ]
    exceptions = _exceptions(rows, checks)
    if exceptions:
        lines += ["", "## Exceptions", "", *exceptions]
    for rs, label in parts:
        lines += ["", f"## {label[0].upper()}{label[1:]}", "", *_HEADER]
        lines += [_row(r, checks[id(r)]) for r in rs]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="model names (default: every model of "
                        "the families)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES),
                        help=f"torchvision families (default: {' '.join(FAMILIES)}; also "
                             "video, quantization, optical_flow)")
    parser.add_argument("--size", type=int, default=64, help="input side (default 64)")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="share of each group's gates closed (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per model (default 2; 0: torch's default)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "torchvision.md")
    parser.add_argument("--from-rows", type=Path,
                        help="write the report from a run's saved rows (.json) instead")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        _child(args)
        return
    if args.from_rows:  # rewrite the report from the rows a run saved (same options)
        saved = json.loads(args.from_rows.read_text())
        args.out.write_text(to_markdown(saved["rows"], saved["command"], args, saved["wall"]))
        print(f"wrote {args.out}")
        return
    models = args.models or names(tuple(args.families))
    command = "python " + " ".join(
        shlex.quote(a) for a in ["examples/bench_torchvision.py", *sys.argv[1:]])
    start = time.perf_counter()
    rows = []
    for k, name in enumerate(models):
        row = _run_child(name, args)
        rows.append(row)
        status = row.get("error") or (
            f"params {row['params'] - row['ref_params']:+d} ops {row['ops'] - row['ref_ops']:+d} "
            f"gated {row['gated']}/{row['inner']} parity {row['parity']:.1e} "
            f"onnx {row.get('onnx', False)} {row.get('wall', 0):.0f}s")
        print(f"[{k + 1}/{len(models)}] {name}: {status}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - start
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "wall": wall, "rows": rows}, indent=1, default=float))
    args.out.write_text(to_markdown(rows, command, args, wall))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')} (the rows)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    np.seterr(all="ignore")
    main()
