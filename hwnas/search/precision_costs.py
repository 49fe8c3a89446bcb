"""The bit-dependent costs of a precision search (:class:`~hwnas.search.precision.BitSearch`)
and its per-layer table. The formulas are in :mod:`hwnas.search.precision`.

Everything is evaluated for all quantised layers at once, on the device of the alive
values and without reading a value back to the host (the per-layer constants are built
once per device and dtype). In ``"deterministic"`` mode the mixing weights are the
exported one-hot choice and the alive values the exported channels (float64, CPU), so the
counts are exact; LUTs are then rounded per layer, like the registered ``luts`` cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from hwnas import cost as cost_registry
from hwnas.cost.bits import bits_label, mac_luts_grid
from hwnas.graph.ir import kept_slots
from hwnas.search.quant_graph import BitChoices, QuantHost

__all__ = ["bit_costs", "bits_table", "layer_bit_costs"]

_HOW = {"expected": "soft", "straight_through": "straight_through", "deterministic": "hard"}


def _constants(bs: BitChoices, search: QuantHost, device: torch.device,
               dtype: torch.dtype) -> dict[str, Tensor]:
    key = (device, dtype)
    found = bs.cost_constants.get(key)
    if found is None:
        infos = [search.layer_infos[q.k] for q in bs.layers]
        rows = [j for j, q in enumerate(bs.layers) for _ in range(q.rows)]
        gates = [search.index.layer_index[q.k][1][: q.out_channels] for q in bs.layers
                 if q.rows > 1]
        found = {
            "qk": torch.tensor([q.k for q in bs.layers], dtype=torch.long),
            "row_layer": torch.tensor(rows, dtype=torch.long),
            "row_gate": torch.cat(gates) if gates else torch.zeros(0, dtype=torch.long),
            "depthwise": torch.tensor([i.depthwise for i in infos], dtype=torch.bool),
            "groups": torch.tensor([float(i.groups) for i in infos], dtype=dtype),
            "kernel": torch.tensor([float(i.kernel_size) for i in infos], dtype=dtype),
            "bias": torch.tensor([float(q.bias) for q in bs.layers], dtype=dtype),
            "positions": torch.tensor([float(i.positions) for i in infos], dtype=dtype),
            "w_values": torch.tensor([float(b) for b in bs.space.weight_bits], dtype=dtype),
            "a_values": torch.tensor([float(b) for b in bs.space.activation_bits], dtype=dtype),
        }
        found = {k: v.to(device) for k, v in found.items()}
        bs.cost_constants[key] = found
    return found


def layer_bit_costs(bs: BitChoices, search: QuantHost, names: Sequence[str], alive: Tensor,
                    mode: str) -> dict[str, Tensor]:
    """Per quantised layer ``(layers,)``: each of ``names`` (bitops, weight_memory, luts)
    for per-gate alive values ``alive`` (float64) in cost ``mode``."""
    p_w, p_a = bs.mixes(_HOW[mode])
    if mode == "deterministic":
        p_w, p_a = p_w.detach(), p_a.detach()
    p_w, p_a = p_w.to(alive.device, alive.dtype), p_a.to(alive.device, alive.dtype)
    c = _constants(bs, search, alive.device, alive.dtype)
    a_in, a_out = (a.to(alive.dtype) for a in search.index.layer_alive(alive))
    qk, j = c["qk"], c["row_layer"]
    n = torch.where(c["depthwise"], torch.ones_like(c["kernel"]), a_in[qk] / c["groups"])
    n = n * c["kernel"]
    if bs.space.per_channel:
        rows_alive = torch.cat([alive, alive.new_ones(1)])[c["row_gate"]]
    else:
        rows_alive = a_out[qk]
    e_w = p_w @ c["w_values"]
    e_a = p_a @ c["a_values"]
    per_layer = len(bs.layers)
    out: dict[str, Tensor] = {}

    def by_layer(per_row: Tensor) -> Tensor:
        return per_row.new_zeros(per_layer).index_add(0, j, per_row)

    if "bitops" in names:
        ops = (n + c["bias"]) * c["positions"] * e_a
        out["bitops"] = by_layer(rows_alive * ops[j] * e_w)
    if "weight_memory" in names:
        out["weight_memory"] = by_layer(rows_alive * n[j] * e_w)
    if "luts" in names:
        grid = mac_luts_grid(n, bs.space.weight_bits, bs.space.activation_bits, search.target,
                             c["bias"][:, None, None])
        per_row = torch.einsum("ri,rik,rk->r", p_w, grid[j], p_a[j])
        luts = by_layer(rows_alive * per_row)
        out["luts"] = torch.round(luts) if mode == "deterministic" else luts
    return out


def bit_costs(bs: BitChoices, search: QuantHost, names: Sequence[str], alive: Tensor,
              mode: str) -> dict[str, Tensor]:
    """Totals of ``names``: the quantised layers at their searched bits, every other layer
    by its registered cost function at the target's bits."""
    per_layer = layer_bit_costs(bs, search, names, alive, mode)
    quantised = {q.k for q in bs.layers}
    a_in = a_out = None
    totals = {}
    for name in names:
        total = per_layer[name].sum()
        for k, info in enumerate(search.layer_infos):
            fn = None if k in quantised else cost_registry.lookup(name, info.cost_key)
            if fn is None:
                continue
            if a_in is None:
                a_in, a_out = search.index.layer_alive(alive)
            assert a_out is not None
            value = fn(info, {"in": a_in[k], "out": a_out[k]}, search.target)
            total = total + torch.as_tensor(value, device=alive.device).to(alive.dtype)
        totals[name] = total
    return totals


def bits_table(bs: BitChoices, search: QuantHost) -> pd.DataFrame:
    """One row per quantised layer of the exported architecture: layer, type, kept input and
    output channels, weight bits (``"2-8"`` when the kept channels differ), activation bits,
    exact ``bitops``, ``weight_memory`` and (on a LUT target) ``luts``."""
    names = ["bitops", "weight_memory"] + (["luts"] if search.target.has_lut_model else [])
    with torch.no_grad():
        alive = search.alive_vector("deterministic")
        a_in, a_out = search.index.layer_alive(alive)
        costs = layer_bit_costs(bs, search, names, alive, "deterministic")
        keep = {g: m.cpu().numpy() for g, m in search.keep_masks().items()}
    rows = []
    for j, (q, (w_bits, a_bits)) in enumerate(zip(bs.layers, bs.choices(), strict=True)):
        info = search.layer_infos[q.k]
        kept = np.ones(q.out_channels, dtype=bool)
        if info.out_slots is not None:
            kept = kept_slots(info.out_slots, keep)[: q.out_channels]
        row: dict[str, object] = {
            "layer": info.label, "type": getattr(info.module_type, "__name__", info.target),
            "in_kept": int(round(float(a_in[q.k]))), "out_kept": int(round(float(a_out[q.k]))),
            "weight_bits": bits_label(w_bits[torch.from_numpy(kept)]) if kept.any() else "",
            "activation_bits": a_bits}
        for name in names:
            value = float(costs[name][j])
            row[name] = int(value) if value == round(value) else value
        rows.append(row)
    return pd.DataFrame(rows)
