"""The outputs of a search with a ``[precision]`` table, beside the usual report: the
QONNX and the QDQ file of the quantised model (both verified), and its bits per layer
(``bits.csv``, ``bits.md``), optionally with yosys on one searched layer at its bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from hwnas._internal.files import atomic_write
from hwnas.errors import InvalidValueError

__all__ = ["QUANTIZED_OUTPUTS", "check_inputs", "synth_lines", "write_quantized"]

#: Files :func:`write_quantized` writes into the output folder.
QUANTIZED_OUTPUTS = ("model.qonnx.onnx", "model.qdq.onnx", "bits.csv", "bits.md")


def check_inputs(loaders: Any, limit: int = 256) -> torch.Tensor:
    """Up to ``limit`` inputs of the test split (else validation, else training) to check the
    exports on."""
    for loader in (loaders.test, loaders.val, loaders.train):
        if loader is None:
            continue
        xs = []
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            xs.append(x)
            if sum(len(t) for t in xs) >= limit:
                break
        if xs:
            return torch.cat(xs)[:limit].float().cpu()
    raise InvalidValueError("the exports need inputs to check on, but every loader is empty")


def _verification(r: Any) -> str:
    how = "bit-exact" if r.bit_exact else (
        f"max |diff| {r.max_abs_diff:.2e}, codes within {r.max_code_diff} step "
        f"({100 * r.code_mismatch:.2f}% differ)")
    return f"{r.path.name}: {r.runtime} on {r.samples} inputs, {how}"


def write_quantized(folder: Path, search: Any, model: nn.Module, inputs: torch.Tensor
                    ) -> dict[str, Any]:
    """Write the QONNX and QDQ files of ``model`` (checked on ``inputs``: QONNX on the first
    8, the qonnx executor runs one node at a time) and the bits per layer of ``search``.

    Returns the paths by file name, ``"table"`` (the bits per layer) and ``"notes"`` (one
    line per export)."""
    from hwnas.export.qdq import export_qdq
    from hwnas.export.qonnx import export_qonnx

    qonnx = export_qonnx(model, folder / "model.qonnx.onnx", inputs[:8])
    qdq = export_qdq(model, folder / "model.qdq.onnx", inputs)
    table: pd.DataFrame = search.precision.table(search)
    with atomic_write(folder / "bits.csv") as tmp:
        table.to_csv(tmp, index=False)
    notes = [_verification(qonnx), _verification(qdq)]
    lines = ["# Bits per layer", "", table.to_markdown(index=False), "", "## Exports", ""]
    lines += [f"- {n}" for n in notes]
    with atomic_write(folder / "bits.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    paths = {name: folder / name for name in QUANTIZED_OUTPUTS}
    return {"paths": paths, "table": table, "notes": notes, "exports": (qonnx, qdq)}


def synth_lines(model: nn.Module, target: Any) -> list[str]:
    """yosys on the last quantised layer of ``model`` at its bits, beside the estimates."""
    from hwnas.cost.bits import QuantizedLayer, layer_lut_estimates
    from hwnas.cost.target import load_target
    from hwnas.hw.synth import synthesize

    target = load_target(target)
    found: list[tuple[str, Any]] = [(n, m) for n, m in model.named_modules()
                                    if isinstance(m, QuantizedLayer)]
    name, layer = found[-1]
    synth = synthesize(layer, target)
    exact, smooth = layer_lut_estimates(layer.quant_params(), target)
    w_bits, a_bits = layer.bits()
    luts = max(synth.luts, 1)
    return ["", f"## yosys on layer `{name}` at its bits", "",
            f"{type(layer).__name__}, weight {tuple(layer.weight.shape)}, weight bits "
            f"{sorted(set(w_bits.tolist()))}, activation bits {a_bits}; {synth.yosys}, "
            f"`{synth.script}` (one output position, fully unrolled, weights as constants):",
            "", "| count | LUTs | vs yosys |", "|---|---:|---:|",
            f"| yosys `stat` | {synth.luts:,} | |",
            f"| estimate from its integer weights | {exact:,.0f} | {(exact - luts) / luts:+.1%} |",
            f"| smooth estimate at its bits (the search's cost) | {smooth:,.0f} | "
            f"{(smooth - luts) / luts:+.1%} |"]
