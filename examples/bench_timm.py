"""Benchmark: hwnas over one model of every timm architecture family.

``timm.list_models()`` grouped by family (``tests/timm_zoo.py``: the defining module and the
name's leading word), the family's smallest model by parameter count, ``pretrained=False``,
at the smallest input side (from 64 px) at which it runs; each in a fresh process:

1. reference counts of the ops that run (``tests/flop_reference.py``: FlopCounterMode / 2
   plus one MAC per biased output; every parameter entering a MAC op) and forward hooks on
   every conv and linear module (``tests/hook_reference.py``);
2. ``hwnas.profile``: its params / ops totals against the FlopCounterMode reference, and
   its rows of conv / linear modules against the hooks, module by module;
3. ``hwnas.wrap``: the share of inner channels that get a gate, the largest frozen groups;
4. seeded random gates, ``hwnas.materialize``: outputs against the search model, and
   ``search.costs()`` against the exported model (its profile, FlopCounterMode and hooks);
5. ``hwnas.export_onnx`` of the exported model (onnx.checker, onnxruntime, batch 1 and 3).

Run from the repository root (timm: ``pip install -e ".[test]"``)::

    python examples/bench_timm.py --jobs 2                       # every family
    python examples/bench_timm.py --models lcnet_035 levit_128s --out /tmp/timm.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))
from bench_torchvision import GATED, PARITY, _frozen_reasons, _rel_diff  # noqa: E402
from flop_reference import reference_counts  # noqa: E402
from hook_reference import hook_counts  # noqa: E402
from timm_zoo import build, families, family_of, import_timm, representative  # noqa: E402
from tv_zoo import inner_channels, set_random_gates  # noqa: E402

_FUNCTIONAL = ("linear", "conv1d", "conv2d", "conv3d")


def _hooks_agree(model: Any, x: torch.Tensor, df: Any) -> bool:
    """The profile's conv / linear modules equal the hooks, module by module, and no conv
    or linear runs as a function call (``F.linear`` on a module's weight), which hooks miss."""
    hooks = hook_counts(model, x)
    rows = df.iloc[:-1]
    mine = {r["layer"]: (int(r["params"]), int(r["ops"])) for _, r in rows.iterrows()
            if r["layer"] in hooks.params or r["type"] in _FUNCTIONAL}
    return mine == {k: (hooks.params[k], hooks.ops[k]) for k in hooks.params}


def run_one(name: str, fraction: float, seed: int, row: dict[str, Any]) -> dict[str, Any]:
    """Fill ``row`` (its ``stage`` says how far it got) with the measurements of ``name``."""
    import hwnas

    row.update(model=name, family=family_of(name))
    times: dict[str, float] = row.setdefault("times", {})
    timed = partial(_timed, times)
    row["stage"] = "build"
    model, x = build(name, seed=seed)
    row["input"] = "x".join(map(str, x.shape))
    row["stage"] = "profile"
    ref = timed("reference", lambda: reference_counts(model, x))
    row.update(ref_params=ref.params, ref_ops=ref.ops)
    df = timed("profile", lambda: hwnas.profile(model, x))
    row.update(params=int(df.iloc[-1]["params"]), ops=int(df.iloc[-1]["ops"]),
               hooks=_hooks_agree(model, x, df))
    row["stage"] = "wrap"
    search = timed("wrap", lambda: hwnas.wrap(model, x))
    row["inner"], row["gated"] = inner_channels(search)
    row["frozen_top"] = _frozen_reasons(search)
    set_random_gates(search, fraction, seed)
    search.eval()
    row["stage"] = "materialize"
    pruned = timed("materialize", lambda: hwnas.materialize(search).eval())
    with torch.no_grad():
        row["parity"] = _rel_diff(search(x), pruned(x))
    costs = search.costs()
    p_df = hwnas.profile(pruned, x)
    p_ref = reference_counts(pruned, x)
    row["costs"] = (costs["params"], costs["ops"])
    row["exported_ref"] = (p_ref.params, p_ref.ops)
    row["cost_match"] = (costs["params"] == float(p_df.iloc[-1]["params"]) == p_ref.params
                         and costs["ops"] == float(p_df.iloc[-1]["ops"]) == p_ref.ops
                         and _hooks_agree(pruned, x, p_df))
    row["stage"] = "onnx"
    with tempfile.TemporaryDirectory() as d:
        result = timed("onnx", lambda: hwnas.export_onnx(pruned, f"{d}/m.onnx", x))
    row["onnx"] = True  # export_onnx raises where onnxruntime differs (atol = rtol = 1e-4)
    row["onnx_rel"] = result.max_rel_diff
    return row


def _timed(times: dict[str, float], key: str, fn: Any) -> Any:
    """``fn()``, its seconds recorded as ``times[key]``."""
    start = time.perf_counter()
    try:
        return fn()
    finally:
        times[key] = time.perf_counter() - start


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    row: dict[str, Any] = {"model": args.one, "family": family_of(args.one)}
    try:
        run_one(args.one, args.fraction, args.seed, row)
    except Exception as e:  # the row keeps what was measured before the failing stage
        first = (str(e).splitlines() or [""])[0][:300]
        row["error"] = f"{row.get('stage', 'build')}: {type(e).__name__}: {first}"
        traceback.print_exc()
    Path(args.json).write_text(json.dumps(row, default=float))


def _subprocess_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Model ``name`` measured in a fresh process (its row, or the reason it gave none)."""
    folder = Path(tempfile.mkdtemp())
    flags = {"--one": name, "--json": folder / "row.json", "--fraction": args.fraction,
             "--seed": args.seed, "--threads": args.threads}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, *map(str, chain(*flags.items()))],
                              capture_output=True, text=True, timeout=args.timeout)
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    except subprocess.TimeoutExpired:
        last = [f"timed out after {args.timeout} s"]
    found = folder / "row.json"
    row = json.loads(found.read_text()) if found.exists() else {
        "model": name, "family": family_of(name), "error": last[0][:300]}
    shutil.rmtree(folder, ignore_errors=True)
    return {**row, "wall": time.perf_counter() - start}


# ------------------------------------------------------------------------------ report


def checks(r: dict[str, Any]) -> dict[str, bool]:
    """Each check on a row; a stage that did not run (an error before it) fails its checks."""
    profiled = "params" in r
    return {
        "profile = FlopCounterMode": profiled and (r["params"], r["ops"]) == (
            r["ref_params"], r["ref_ops"]),
        "profile = forward hooks": bool(r.get("hooks")),
        f">= {GATED:.0%} inner channels gated": r.get("inner", 0) > 0
        and r["gated"] / r["inner"] >= GATED,
        "export parity": r.get("parity", float("inf")) <= PARITY,
        "costs() = exported model": bool(r.get("cost_match")),
        "ONNX verified": "onnx_rel" in r,
    }


def _cells(r: dict[str, Any], c: dict[str, bool]) -> str:
    if "params" not in r:
        return f"| {r['model']} | {r['family']} | | | | | | | | | {r['error'].replace('|', '/')} |"
    share = r["gated"] / r["inner"] if r.get("inner") else float("nan")
    t = r.get("times", {})
    times = "/".join(f"{t.get(k, float('nan')):.1f}" for k in
                     ("reference", "profile", "wrap", "materialize", "onnx"))
    notes = "; ".join(f"{k}: {v}" for k, v in r.get("frozen_top", ())) if share < GATED else ""
    notes = r.get("error", "").replace("|", "/") or notes
    exact = "yes" if c["profile = FlopCounterMode"] else (
        f"**{r['params'] - r['ref_params']:+,} / {r['ops'] - r['ref_ops']:+,}**")
    yn = {True: "yes", False: "**no**"}
    return (f"| {r['model']} | {r['family']} | {r['input']} | {r['params']:,} | {exact} | "
            f"{yn[c['profile = forward hooks']]} | {r.get('inner', 0):,} | {share:.1%} | "
            f"{r.get('parity', float('nan')):.1e} | {yn[c['costs() = exported model']]} | "
            f"{yn[c['ONNX verified']]} | {times} | {notes} |")


def to_markdown(rows: list[dict[str, Any]], command: str, threads: int, wall: float,
                why: dict[str, str], missing: list[str] | None = None) -> str:
    cs = {r["model"]: checks(r) for r in rows}
    keys = list(checks({"error": ""}))
    lines = [
        "# hwnas on timm's models (one per architecture family)", "",
        f"Command: `{command}`", "",
        f"timm {import_timm().__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {threads} torch thread(s) per "
        f"model; {len(rows)} families of `timm.list_models()` (module + leading name word, "
        "`test_*` left out), the smallest model of each, `pretrained=False`, seed 0, input "
        f"1x3xSxS at the smallest S from 64 px that runs. Wall time {wall / 60:.1f} min.", "",
        "| check | models |", "|---|---:|",
        *(f"| {k} | {sum(cs[r['model']][k] for r in rows)} / {len(rows)} |" for k in keys),
        f"| all of the above | {sum(all(cs[r['model']].values()) for r in rows)} / "
        f"{len(rows)} |", "",
        "- **profile = FlopCounterMode**: `hwnas.profile` params and ops (MACs + one per "
        "biased output) equal `tests/flop_reference.py` exactly; otherwise the differences.",
        "- **profile = forward hooks**: every conv / linear module that runs has the params "
        "and MACs its forward hook counts (`tests/hook_reference.py`).",
        f"- **inner channels gated**: outputs of conv, linear and attention layers outside "
        f"the model-input / model-output groups that get a gate; *notes* names the largest "
        f"frozen groups below {GATED:.0%}.",
        f"- **export parity**: seeded random gates (half of each group closed), largest "
        f"|search - exported| relative to the largest output <= {PARITY:g}.",
        "- **costs() = exported model**: `search.costs()` equals the exported model's "
        "profile, its FlopCounterMode reference and its forward hooks.",
        "- **ONNX**: `hwnas.export_onnx` (checker, onnxruntime at batch 1 and 3).",
        "- **times** (s): reference, profile, wrap, materialize, ONNX.",
    ]
    failed = [r for r in rows if not all(cs[r["model"]].values())]
    if failed:
        lines += ["", "## Exceptions", ""]
        for r in failed:
            bad = ", ".join(k for k, ok in cs[r["model"]].items() if not ok)
            cause = why.get(r["model"]) or r.get("error") or "; ".join(
                f"{k}: {v}" for k, v in r.get("frozen_top", ()))
            lines.append(f"- **{r['model']}** ({r['family']}; fails: {bad}): {cause}")
    if missing:
        lines += ["", f"## Not reached ({len(missing)} families)", "",
                  "The run was stopped before these representatives (the largest, as the "
                  "run goes from the smallest model up): " + ", ".join(missing) + "."]
    lines += ["", "## Models", "",
              "| model | family | input | params | profile - FlopCounterMode (params / ops) "
              "| hooks | inner ch. | gated | parity | costs = exported | ONNX | times | "
              "notes |", "|---|---|---|---:|---:|:-:|---:|---:|---:|:-:|:-:|---|---|"]
    lines += [_cells(r, cs[r["model"]]) for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="model names (default: one per family)")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model")
    parser.add_argument("--jobs", type=int, default=1, help="models run at once")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "timm.md")
    parser.add_argument("--merge", type=Path, help="rows (.json) of an earlier run: its rows "
                        "for models not run now are kept")
    parser.add_argument("--why", type=Path, help="JSON: model -> cause of its exception")
    parser.add_argument("--from-rows", type=Path, help="write the report from a run's rows "
                        "(.json, or the .rows.jsonl a stopped run leaves) instead of running")
    parser.add_argument("--command", help="with --from-rows: the command to name")
    for hidden in ("--one", "--json"):  # a child process: one model, its row to a file
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one or args.from_rows:
        if args.one:
            _child(args)
        else:
            _write(args, *_saved(args.from_rows))
        return
    models = args.models or [representative(v) for v in families().values()]
    command = "python " + " ".join(shlex.quote(a) for a in ["examples/bench_timm.py",
                                                              *sys.argv[1:]])
    start = time.perf_counter()

    partial = args.out.with_suffix(".rows.jsonl")  # each row as it comes (a stopped run)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")

    def one(name: str) -> dict[str, Any]:
        row = _subprocess_row(name, args)
        print(f"{name}: {row.get('error') or all(checks(row).values())}", flush=True)
        with partial.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, models))
    wall = time.perf_counter() - start
    if args.merge:
        saved = json.loads(args.merge.read_text())
        fresh = {r["model"]: r for r in rows}
        rows = [fresh.pop(r["model"], r) for r in saved["rows"]] + list(fresh.values())
        command, wall = f"{saved['command']}, then `{command}` for the models it names", \
            saved["wall"] + wall
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "wall": wall, "rows": rows}, indent=1, default=float))
    _write(args, rows, command, wall)


def _saved(path: Path) -> tuple[list[dict[str, Any]], str, float]:
    """Rows, command and wall time of a run's .json (or its partial .rows.jsonl)."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return rows, "(a stopped run)", sum(r.get("wall", 0.0) for r in rows) / 2
    saved = json.loads(path.read_text())
    return saved["rows"], saved["command"], saved["wall"]


def _write(args: argparse.Namespace, rows: list[dict[str, Any]], command: str,
           wall: float) -> None:
    why = json.loads(args.why.read_text()) if args.why else {}
    done = {r["model"] for r in rows}
    missing = [m for m in args.models or [] if m not in done]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(rows, args.command or command, args.threads, wall, why,
                                    missing))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    np.seterr(all="ignore")
    main()
