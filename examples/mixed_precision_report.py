"""The report of examples/mixed_precision.py: the figure (accuracy vs LUTs per dataset,
every run and the Pareto front), the tables and the goal, all computed from the runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARGIN = 0.003  # "within 0.3 points of uniform 8-bit"
GOAL = 1.5


def _ok(runs: list[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["spec"]["dataset"] == dataset and "error" not in r]


def _uniform(r: dict[str, Any]) -> bool:
    return r["spec"]["w_bits"] is not None


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto front (fewest LUTs for an accuracy): points no other beats in both."""
    front, best = [], -1.0
    for luts, acc in sorted(points):
        if acc > best:
            front.append((luts, acc))
            best = acc
    return front


def goal(runs: list[dict[str, Any]], dataset: str) -> dict[str, Any] | None:
    """The issue's goal on one dataset, from the runs."""
    rs = _ok(runs, dataset)
    ref = [r for r in rs if r["spec"]["family"] == "uniform, no search"
           and r["spec"]["w_bits"] == 8]
    if not ref:
        return None
    floor = ref[0]["test_accuracy"] - MARGIN
    uni = [r for r in rs if _uniform(r) and r["test_accuracy"] >= floor]
    mix = [r for r in rs if r["spec"]["family"] == "mixed (softmax)"
           and r["test_accuracy"] >= floor]
    best_u = min(uni, key=lambda r: r["luts"]) if uni else None
    best_m = min(mix, key=lambda r: r["luts"]) if mix else None
    ratio = best_u["luts"] / best_m["luts"] if best_u and best_m else None
    return {"ref": ref[0], "floor": floor, "uniform": best_u, "mixed": best_m, "ratio": ratio,
            "met": ratio is not None and ratio >= GOAL}


def figure(runs: list[dict[str, Any]], datasets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8),
                             squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        rs = _ok(runs, ds)
        families: dict[str, list[dict[str, Any]]] = {}
        for r in rs:
            families.setdefault(r["spec"]["family"], []).append(r)
        for fam, members in sorted(families.items()):
            pts = sorted((r["luts"], 100 * r["test_accuracy"]) for r in members)
            style = {"marker": "o", "linestyle": "-", "linewidth": 1, "markersize": 4}
            if fam.startswith("mixed"):
                main = fam == "mixed (softmax)"
                style = {"marker": "D", "linestyle": "-" if main else "--",
                         "linewidth": 2.2 if main else 1.4, "markersize": 6 if main else 4,
                         "color": "black" if main else ("tab:gray" if "ste" in fam
                                                        else "tab:olive")}
            elif fam == "uniform, no search":
                style = {"marker": "*", "linestyle": "none", "markersize": 11}
            ax.plot(*zip(*pts, strict=True), label=fam, **style)
        front = _front([(r["luts"], 100 * r["test_accuracy"]) for r in rs])
        ax.step(*zip(*front, strict=True), where="post", color="tab:red", alpha=0.4,
                linewidth=4, label="Pareto front (all runs)")
        g = goal(runs, ds)
        if g is not None:
            ax.axhline(100 * g["floor"], color="tab:red", linestyle=":", linewidth=1,
                       label="uniform 8-bit - 0.3 points")
        ax.set_xscale("log")
        ax.set_xlabel("LUTs on xc7-lut6 (exported model, calibrated estimate)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(ds)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(max(min(100 * r["test_accuracy"] for r in rs) - 1, 50), 100.5)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bits(r: dict[str, Any]) -> str:
    return " ".join(f"{layer['weight_bits']}/{layer['activation_bits']}"
                    for layer in r["layers"])


def _kept(r: dict[str, Any]) -> str:
    return " ".join(str(layer["out_kept"]) for layer in r["layers"])


def runs_table(runs: list[dict[str, Any]], ds: str) -> list[str]:
    lines = ["| run | LUT target | LUTs | of 8-bit | bitops | weight bits | test acc | val acc "
             "| bits per layer (w/a) | channels kept |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in sorted(_ok(runs, ds), key=lambda r: (r["spec"]["family"], -r["luts"])):
        s = r["spec"]
        target = "-" if s["fraction"] is None else f"{s['fraction']:g} x 8-bit"
        lines.append(
            f"| {s['family']} | {target} | {r['luts']:,.0f} | "
            f"{r['luts'] / r['reference_luts']:.4f} | {r['bitops']:,.0f} | "
            f"{r['weight_memory']:,.0f} | {100 * r['test_accuracy']:.2f} | "
            f"{100 * r['val_accuracy']:.2f} | {_bits(r)} | {_kept(r)} |")
    for r in runs:
        if r["spec"]["dataset"] == ds and "error" in r:
            lines.append(f"| {r['key']} | failed: {r['error']} |||||||||")
    return lines


def goal_lines(runs: list[dict[str, Any]], ds: str) -> list[str]:
    g = goal(runs, ds)
    if g is None:
        return ["(no uniform 8-bit run)"]
    ref = g["ref"]
    lines = [f"- uniform 8-bit, no search: test accuracy {100 * ref['test_accuracy']:.2f}%, "
             f"{ref['luts']:,.0f} LUTs; within 0.3 points: >= {100 * g['floor']:.2f}%."]
    for name in ("uniform", "mixed"):
        r = g[name]
        if r is None:
            lines.append(f"- cheapest {name} run within 0.3 points: none")
            continue
        lines.append(f"- cheapest {name} run within 0.3 points: {r['spec']['family']}, target "
                     f"{r['spec']['fraction']}, {r['luts']:,.0f} LUTs, "
                     f"{100 * r['test_accuracy']:.2f}%")
    if g["ratio"] is None:
        lines.append("- goal (>= 1.5x fewer LUTs than the cheapest uniform): NOT MET (no "
                     "mixed run within 0.3 points)" if g["uniform"] else "- no comparison")
    else:
        lines.append(f"- ratio cheapest uniform / cheapest mixed: **{g['ratio']:.2f}x**; goal "
                     f">= {GOAL}x: **{'met' if g['met'] else 'NOT met'}**")
    return lines


def relaxation_lines(runs: list[dict[str, Any]]) -> list[str]:
    rs = [r for r in _ok(runs, "digits") if r["spec"]["family"].startswith("mixed")]
    if not rs:
        return []
    lines = ["| relaxation | LUT target | LUTs | target met | test acc | val acc | seconds | "
             "bits per layer (w/a) |", "|---|---:|---:|:---:|---:|---:|---:|---|"]
    for r in sorted(rs, key=lambda r: (-r["spec"]["fraction"], r["spec"]["relaxation"])):
        s = r["spec"]
        target = s["fraction"] * r["reference_luts"]
        lines.append(f"| {s['relaxation']} | {s['fraction']:g} | {r['luts']:,.0f} | "
                     f"{'yes' if r['luts'] <= target else 'NO'} | "
                     f"{100 * r['test_accuracy']:.2f} | {100 * r['val_accuracy']:.2f} | "
                     f"{r['seconds']:.0f} | {_bits(r)} |")
    return lines


def check_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in runs:
        if "synth" not in r:
            continue
        s, sy = r["spec"], r["synth"]
        lines.append(f"**{s['dataset']}, {s['family']} at target {s['fraction']:g}**")
        lines.append("")
        lines += ["| export | runtime | examples | bit-exact | max abs diff | max code diff "
                  "| codes differing | accumulators < 2^24 |",
                  "|---|---|---:|:---:|---:|---:|---:|:---:|"]
        for e in r["exports"]:
            lines.append(f"| {e['format']} | {e['runtime']} | {e['samples']} | "
                         f"{'yes' if e['bit_exact'] else 'no'} | {e['max_abs_diff']:.3g} | "
                         f"{e['max_code_diff']} | {e['code_mismatch']:.4f} | "
                         f"{'yes' if e['exact_bound'] else 'no'} |")
        w = sorted(set(sy["w_bits"]))
        err = (sy["estimate_weights"] - sy["yosys_luts"]) / sy["yosys_luts"]
        err_s = (sy["estimate_smooth"] - sy["yosys_luts"]) / sy["yosys_luts"]
        lines += ["", f"yosys on layer `{sy['layer']}` ({sy['type']}, weight {sy['shape']}, "
                  f"weight bits {w}, activation bits {sy['a_bits']}; {sy['yosys']}, "
                  f"`{sy['script']}`, {sy['seconds']:.0f} s):", "",
                  "| count | LUTs | vs yosys |", "|---|---:|---:|",
                  f"| yosys `stat` | {sy['yosys_luts']:,} | |",
                  f"| estimate from its integer weights | {sy['estimate_weights']:,.0f} | "
                  f"{err:+.1%} |",
                  f"| smooth estimate at its bits (what the search optimises) | "
                  f"{sy['estimate_smooth']:,.0f} | {err_s:+.1%} |", ""]
    return lines


def _relaxation_verdict(runs: list[dict[str, Any]]) -> str:
    by_target: dict[float, dict[str, dict[str, Any]]] = {}
    for r in _ok(runs, "digits"):
        s = r["spec"]
        if s["family"].startswith("mixed"):
            by_target.setdefault(s["fraction"], {})[s["relaxation"]] = r
    names = sorted({k for d in by_target.values() for k in d})
    full = [d for d in by_target.values() if len(d) == len(names)]
    if len(names) < 2 or not full:
        return "The relaxation experiment has not run."
    best = {n: sum(max(d, key=lambda k: d[k]["test_accuracy"]) == n for d in full)
            for n in names}
    met = {n: sum(d[n]["luts"] <= d[n]["spec"]["fraction"] * d[n]["reference_luts"]
                  for d in full) for n in names}
    mean = {n: sum(d[n]["test_accuracy"] for d in full) / len(full) for n in names}
    secs = {n: sum(d[n]["seconds"] for d in full) for n in names}
    return "Measured here, over the " + str(len(full)) + " targets: " + "; ".join(
        f"{n}: best test accuracy at {best[n]}, mean {100 * mean[n]:.2f}%, targets met "
        f"{met[n]}, {secs[n]:.0f} s" for n in names) + "."


_WHY = """Why the softmax is the default (PLiNIO's MPS, Risso et al. 2022): the candidate set is
discrete and uneven ({2, 3, 4, 6, 8}) and the calibrated LUT model is defined at integer
bit widths only (its weight moments are counted over the integers of W bits), so the
expectation over the candidates is exact at every candidate and needs no continuous
extension of the hardware model, and every candidate keeps a gradient of the task loss
through the whole search. Its known weakness is the gap between the mixture it trains and
the argmax it exports; `"hard_softmax"` removes it (the forward uses the exported
candidate alone, the softmax gives the gradient). The straight-through relaxation
(continuous bits rounded to the nearest candidate, HGQ-style) needs a continuous extension
of the hardware model (here the linear interpolation between the two candidates around
the bit width) and moves one candidate at a time. The default was chosen before these runs;
the table above is one seed on one small model, not enough to overturn it, and all three
stay available (`PrecisionSpace(relaxation=...)`)."""


def write_report(out: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    datasets = [d for d in ("digits", "mnist") if _ok(runs, d)]
    png = out.with_suffix(".png")
    if datasets:
        figure(runs, datasets, png)
    sizes = {d: _ok(runs, d)[0]["sizes"] for d in datasets}
    lines = ["# Mixed-precision search vs uniform bit widths", "",
             f"Command: `{meta['command']}` ({meta['machine']}).", "",
             "Every run: seed 0, the same epochs per dataset (warm-up, search, fine-tune: "
             + ", ".join(f"{d} {tuple(meta['epochs'][d])}" for d in datasets)
             + "; the runs without search train for the warm-up and search epochs), "
             "power-of-two scales, costs on `xc7-lut6`. LUT targets: "
             + ", ".join(f"{f:g}" for f in meta["fractions"])
             + " x the LUTs of the model at uniform 8 bits. LUTs: the exported model's "
             "(the calibrated MAC model at its bits, `search.costs()`); accuracy: the "
             "untouched test split of the exported, fine-tuned model. Data: "
             + "; ".join(f"{d} {s['train']} train / {s['validation']} validation / "
                         f"{s['test']} test" for d, s in sizes.items())
             + ". With 360 (digits) and 1000 (MNIST) test images, 0.3 points is 1 and 3 "
             "images: one seed cannot tell such differences from noise.", "",
             f"![accuracy vs LUTs]({png.name})", ""]
    for ds in datasets:
        lines += [f"## {ds}", "", "Goal: at an accuracy within 0.3 points of uniform 8-bit, "
                  "at least 1.5x fewer LUTs than the cheapest uniform bit width (with the "
                  "same channel search) that also stays within 0.3 points.", ""]
        lines += goal_lines(runs, ds) + [""] + runs_table(runs, ds) + [""]
    lines += ["## Relaxation: softmax over candidates vs straight-through bits (digits)", ""]
    lines += relaxation_lines(runs) + ["", _relaxation_verdict(runs), "", _WHY, ""]
    if meta.get("step_ms"):
        ms = meta["step_ms"]
        lines += [f"Step time on digits (batch 64, one thread, DUCCIO on LUTs, median of "
                  f"{ms['steps']} steps): channel search {ms['channels']:.1f} ms, with the bit "
                  f"search (five candidates each for weights and activations) "
                  f"{ms['bits']:.1f} ms ({ms['bits'] / ms['channels']:.2f}x).", ""]
    checks = check_lines(runs)
    if checks:
        lines += ["## Exports and synthesis of a searched model", ""] + checks
    out.write_text("\n".join(lines) + "\n")
