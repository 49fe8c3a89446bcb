"""AliveIndex: where every layer's channels live in the flat gate vector, and what follows.

The gates of all free channel groups form one flat vector of ``n_gates`` entries (a group
of ``size`` channels has ``ceil(size / channel_multiple)`` of them); a mask reads entry
``n_gates`` of the gate vector, a constant 1, for a frozen channel. From that layout the
index computes, for any vector of per-gate "alive" values (expected, straight-through, 0/1):

- each layer's alive input and output channel counts (one product with a count matrix);
- every cost, with the layers whose cost is bilinear in (in, out) evaluated for all layers
  at once from cached coefficients (keyed on the metric, the target and the cost
  registry's version) and the others layer by layer;
- the keep mask of the deterministic architecture, with the rule that every layer input,
  layer output, group and split piece keeps at least one channel;
- the projection that closes the least likely gates until the costs meet their targets.

It is a value object: built once from the traced graph, never changed afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from hwnas import cost as cost_registry
from hwnas.cost.target import Target
from hwnas.errors import HwnasError
from hwnas.graph.ir import CHANNELS_KEY, ChannelGroup, ChannelSlots, LayerInfo
from hwnas.search.fused import QUADRATIC_LIMIT, SET_LIMIT, DenseSets, QuadraticCosts
from hwnas.search.gates import KEEP_THRESHOLD, hard_concrete_deterministic

__all__ = ["AliveIndex", "bilinear_coefficients"]


#: Above this many entries the (2 * layers, gates) count matrix is not stored densely.
_DENSE_LIMIT = 2**22


@dataclass(frozen=True)
class _Counts:
    """How many of each layer's input and output channels each gate entry is, on a device.

    ``a = const + counts @ alive`` gives the alive inputs (first half) and outputs (second
    half) of every layer; ``counts`` is dense when small, else applied as segment sums.
    """

    const: torch.Tensor
    dense: torch.Tensor | None
    flat: torch.Tensor
    row: torch.Tensor

    def apply(self, alive: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return torch.addmv(self.const, self.dense, alive)
        return self.const.index_add(0, self.row, alive[self.flat])


@dataclass(frozen=True)
class _Plan:
    """Costs of a tuple of metrics: ``c0 + coef @ [a_in, a_out, a_in * a_out]`` plus the
    layers whose cost functions are not bilinear (evaluated one by one)."""

    c0: torch.Tensor
    coef: torch.Tensor
    others: tuple[tuple[int, int], ...]


class AliveIndex:
    """The flat gate layout of a search (see the module docstring).

    Args:
        layers: The costed layers (LayerInfo with a module type), in graph order.
        groups: Every channel group of the traced model (frozen ones included).
        channel_multiple: Channels per gate entry.
        gm: The traced graph (its split pieces must each keep a channel).
    """

    def __init__(self, layers: Sequence[LayerInfo], groups: Sequence[ChannelGroup],
                 channel_multiple: int, gm: fx.GraphModule) -> None:
        self.layers = list(layers)
        self.groups = tuple(groups)
        self.channel_multiple = channel_multiple
        self.free_groups = [g.index for g in groups if g.frozen is None]
        self.offsets: dict[int, int] = {}
        self.gates_per_group: dict[int, int] = {}
        total = 0
        for g in self.free_groups:
            n = -(-groups[g].size // channel_multiple)
            self.offsets[g], self.gates_per_group[g] = total, n
            total += n
        #: Number of gate entries; entry ``n_gates`` of a gate vector is the constant 1.
        self.n_gates = total
        self.layer_index = [(self.slot_index(i.in_slots), self.slot_index(i.out_slots))
                            for i in self.layers]
        self._group_of_gate = torch.tensor(
            [g for g in self.free_groups for _ in range(self.gates_per_group[g])],
            dtype=torch.long)
        self._sets = self._keep_sets(gm)
        self._sets_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._dense_sets: dict[torch.device, DenseSets | None] = {}
        self._forms: dict[tuple[object, ...], QuadraticCosts | None] = {}
        self._counts: dict[tuple[torch.device, torch.dtype], _Counts] = {}
        self._plans: dict[tuple[object, ...], _Plan] = {}

    # ------------------------------------------------------------------ layout
    def slot_index(self, slots: np.ndarray | None) -> torch.Tensor:
        """Gate entry of each ``(group, position)`` slot; ``n_gates`` for frozen channels."""
        if slots is None:
            return torch.zeros(0, dtype=torch.long)
        m = self.channel_multiple
        out = np.full(slots.shape[1], self.n_gates, dtype=np.int64)
        for g, off in self.offsets.items():
            sel = slots[0] == g
            out[sel] = off + slots[1][sel] // m
        return torch.from_numpy(out)

    def gated_inputs(self) -> list[tuple[nn.Module, torch.Tensor]]:
        """The conv/linear layers whose input channels are gated (grouped convs read the
        same gates in every group): ``(module, gate entry of each weight input column)``."""
        found = []
        for info, (idx_in, _) in zip(self.layers, self.layer_index, strict=True):
            if info.kind not in ("conv", "linear") or info.depthwise or info.module is None:
                continue
            weight = info.module.weight
            if not isinstance(weight, torch.Tensor) or not bool((idx_in < self.n_gates).any()) \
                    or weight.shape[1] * info.groups != len(idx_in):
                continue
            found.append((info.module, idx_in[: weight.shape[1]].clone()))
        return found

    def group_gates(self, g: int) -> slice:
        """The gate entries of free group ``g``."""
        start = self.offsets[g]
        return slice(start, start + self.gates_per_group[g])

    def to_channels(self, g: int, per_gate: torch.Tensor) -> torch.Tensor:
        """Per-gate values of group ``g`` (last dim) repeated for every channel of a block."""
        m = self.channel_multiple
        if m == 1:
            return per_gate
        return per_gate.repeat_interleave(m, dim=-1)[..., : self.groups[g].size]

    def _keep_sets(self, gm: fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Gate-entry sets that must keep one entry: groups, layer inputs/outputs, pieces.

        A set that holds a frozen (always kept) channel never needs a fix and is left out.
        """
        slot_sets = [np.stack([np.full(g.size, g.index), np.arange(g.size)]) for g in self.groups]
        for info in self.layers:
            slot_sets.extend(s for s in (info.in_slots, info.out_slots) if s is not None)
        for node in gm.graph.nodes:
            chan = node.meta.get(CHANNELS_KEY)
            if isinstance(chan, tuple):
                slot_sets.extend(c.slots for c in chan if isinstance(c, ChannelSlots) and c.flat)
        flat: list[torch.Tensor] = []
        ids: list[torch.Tensor] = []
        seen: set[tuple[int, ...]] = set()
        for slots in slot_sets:
            idx = torch.unique(self.slot_index(slots))
            key = tuple(idx.tolist())
            if len(idx) and not bool((idx == self.n_gates).any()) and key not in seen:
                seen.add(key)
                flat.append(idx)
                ids.append(torch.full((len(idx),), len(ids), dtype=torch.long))
        empty = torch.zeros(0, dtype=torch.long)
        return (torch.cat(flat) if flat else empty, torch.cat(ids) if ids else empty, len(ids))

    def _static(self, k: int, which: int) -> int:
        """Channels of layer ``k``'s input (0) or output (1) when no slots are recorded (a
        matmul over tokens): the fixed size the tracer recorded, else 0."""
        info = self.layers[k]
        return (info.in_channels if which == 0 else info.out_channels) or 0

    def _counts_on(self, device: torch.device, dtype: torch.dtype = torch.float64) -> _Counts:
        found = self._counts.get((device, dtype))
        if found is None and dtype != torch.float64:
            c = self._counts_on(device)
            found = _Counts(c.const.to(dtype), None if c.dense is None else c.dense.to(dtype),
                            c.flat, c.row)
            self._counts[(device, dtype)] = found
        if found is None:
            n_layers, n = len(self.layers), self.n_gates
            rows, flat = [], []
            const = torch.zeros(2 * n_layers, dtype=torch.float64)
            for which in (0, 1):
                for k, pair in enumerate(self.layer_index):
                    idx = pair[which]
                    gated = idx[idx < n]
                    const[which * n_layers + k] = float(len(idx) - len(gated)) if len(idx) \
                        else float(self._static(k, which))
                    flat.append(gated)
                    rows.append(torch.full((len(gated),), which * n_layers + k, dtype=torch.long))
            flat_t = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.long)
            row_t = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
            dense = None
            if 2 * n_layers * n <= _DENSE_LIMIT:
                dense = torch.zeros(2 * n_layers, n, dtype=torch.float64)
                dense.index_put_((row_t, flat_t), torch.ones(len(flat_t), dtype=torch.float64),
                                 accumulate=True)
                dense = dense.to(device)
            found = _Counts(const.to(device), dense, flat_t.to(device), row_t.to(device))
            self._counts[(device, dtype)] = found
        return found

    # ------------------------------------------------------------------ keep
    def keep(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Per-gate keep mask (bool, on ``log_alpha``'s device) of the deterministic
        architecture: :meth:`keep_values` > 0."""
        return self.keep_values(log_alpha) > 0

    def keep_values(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """1 for each gate the deterministic architecture keeps, 0 for a pruned one (in
        ``log_alpha``'s dtype and device), computed without reading a value back to the
        host.

        A gate is kept when its deterministic value is > 0, i.e. ``log_alpha >``
        :data:`~hwnas.search.gates.KEEP_THRESHOLD`. Every keep set (a layer's inputs or
        outputs, a group, a split piece) that would keep nothing keeps its gate with the
        largest ``log_alpha`` (the first one on a tie); its value stays 0, so it
        contributes nothing. All sets are fixed at once, from the same gates.
        """
        la = log_alpha.detach()
        keep = (la > KEEP_THRESHOLD).to(la.dtype)
        set_index, set_id, n_sets = self._sets_on(la.device)
        if not n_sets:
            return keep
        dense = self._dense_sets_on(la.device)
        if dense is not None:
            return dense.keep(keep, la)
        kept = torch.zeros(n_sets, dtype=la.dtype, device=la.device).index_add_(
            0, set_id, keep[set_index])
        values = la[set_index]
        best = values.new_full((n_sets,), -math.inf).scatter_reduce(
            0, set_id, values, "amax", include_self=True)
        position = torch.arange(len(set_index), device=la.device)
        candidate = torch.where(values == best[set_id], position, len(set_index))
        first = torch.full((n_sets,), len(set_index), device=la.device).scatter_reduce(
            0, set_id, candidate, "amin", include_self=True)
        chosen = ((position == first[set_id]) & (kept[set_id] == 0)).to(la.dtype)
        return torch.maximum(keep, torch.zeros_like(keep).scatter_reduce_(
            0, set_index, chosen, "amax"))

    def _dense_sets_on(self, device: torch.device) -> DenseSets | None:
        if device not in self._dense_sets:
            set_index, set_id, n_sets = self._sets
            self._dense_sets[device] = (
                DenseSets(set_index, set_id, n_sets, self.n_gates, device)
                if n_sets * self.n_gates <= SET_LIMIT else None)
        return self._dense_sets[device]

    def _sets_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        found = self._sets_cache.get(device)
        if found is None:
            set_index, set_id, n_sets = self._sets
            found = (set_index.to(device), set_id.to(device), n_sets)
            self._sets_cache[device] = found
        return found

    # ------------------------------------------------------------------ costs
    def layer_alive(self, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Alive input and output channels of every layer (float64) for per-gate values
        ``alive`` (``n_gates`` entries)."""
        a = self._counts_on(alive.device).apply(alive.double())
        n = len(self.layers)
        return a[:n], a[n:]

    def _plan(self, names: tuple[str, ...], target: Target, device: torch.device,
              dtype: torch.dtype = torch.float64) -> _Plan:
        key = (names, target, cost_registry.version(), device, dtype)
        found = self._plans.get(key)
        if found is None and dtype != torch.float64:
            p = self._plan(names, target, device)
            found = _Plan(p.c0.to(dtype), p.coef.to(dtype), p.others)
            self._plans[key] = found
        if found is None:
            n = len(self.layers)
            c0 = torch.zeros(len(names), dtype=torch.float64)
            coef = torch.zeros(len(names), 3 * n, dtype=torch.float64)
            others = []
            for m, name in enumerate(names):
                for k, info in enumerate(self.layers):
                    fn = cost_registry.lookup(name, info.cost_key)
                    if fn is None:
                        continue
                    c = (bilinear_coefficients(fn, info, target)
                         if cost_registry.is_pure(fn) else None)
                    if c is None:
                        others.append((m, k))
                        continue
                    c0[m] += c[0]
                    coef[m, k], coef[m, n + k], coef[m, 2 * n + k] = c[1], c[2], c[3]
            found = _Plan(c0.to(device), coef.to(device), tuple(others))
            self._plans[key] = found
        return found

    def totals(self, names: Sequence[str], alive: torch.Tensor, target: Target) -> torch.Tensor:
        """Costs ``names`` for per-gate values ``alive`` (``n_gates``), in ``alive``'s
        dtype: float64 for the exact costs, float32 in the search step.

        Where every costed layer is bilinear in (in, out) and the search is small, the
        costs are one quadratic form (:class:`~hwnas.search.fused.QuadraticCosts`);
        otherwise the bilinear layers cost one matrix-vector product for all metrics at
        once and the others are evaluated layer by layer.
        """
        names = tuple(names)
        form = self._form(names, target, alive.device, alive.dtype)
        if form is not None:
            return form(alive)
        a = self._counts_on(alive.device, alive.dtype).apply(alive)
        n = len(self.layers)
        plan = self._plan(names, target, alive.device, alive.dtype)
        out = torch.addmv(plan.c0, plan.coef, torch.cat([a, a[:n] * a[n:]]))
        if plan.others:
            extra = [alive.new_zeros(()) for _ in names]
            for m, k in plan.others:
                info = self.layers[k]
                fn = cost_registry.lookup(names[m], info.cost_key)
                assert fn is not None
                value = fn(info, {"in": a[k], "out": a[n + k]}, target)
                extra[m] = extra[m] + torch.as_tensor(value, device=alive.device).to(out.dtype)
            out = out + torch.stack(extra)
        return out

    def _form(self, names: tuple[str, ...], target: Target, device: torch.device,
              dtype: torch.dtype) -> QuadraticCosts | None:
        """The quadratic form of ``names``, or None where it does not apply (a layer whose
        cost is not bilinear, a search too large to store ``Q`` densely)."""
        key = (names, target, cost_registry.version(), device, dtype)
        if key not in self._forms:
            plan = self._plan(names, target, torch.device("cpu"))
            counts = self._counts_on(torch.device("cpu"))
            fits = len(names) * self.n_gates ** 2 <= QUADRATIC_LIMIT
            self._forms[key] = (
                QuadraticCosts.from_counts(counts.const, counts.dense, plan.c0, plan.coef,
                                           dtype).to(device)
                if fits and not plan.others and counts.dense is not None else None)
        return self._forms[key]

    # ------------------------------------------------------------------ projection
    def enforce(self, log_alpha: torch.Tensor, costs: Callable[[], Mapping[str, float]],
                targets: Mapping[str, float]) -> int:
        """Close open gates, least likely first, until ``costs()`` meets ``targets``.

        ``log_alpha`` is changed in place (a closed gate gets -10, deterministic value 0).
        A group keeps at least one open gate. Returns how many gates were closed.
        """
        closed = 0
        if self.n_gates == 0:
            return 0
        with torch.no_grad():
            while any(costs()[n] > t for n, t in targets.items()):
                la = log_alpha.detach()[: self.n_gates].cpu()
                open_ = hard_concrete_deterministic(la) > 0
                per_group = torch.zeros(len(self.groups)).index_add_(
                    0, self._group_of_gate, open_.float())
                eligible = open_ & (per_group[self._group_of_gate] > 1)
                if not bool(eligible.any()):
                    break
                k = int(la.masked_fill(~eligible, float("inf")).argmin())
                log_alpha[k] = -10.0
                closed += 1
        return closed


def bilinear_coefficients(fn: cost_registry.CostFn, info: LayerInfo,
                          target: Target) -> list[float] | None:
    """(c0, c1, c2, c3) with fn == c0 + c1*in + c2*out + c3*in*out, or None if it is not.

    The function is probed at (in, out) in {1, 2}^2 (channel counts a layer can have), which
    fixes the four coefficients, and checked at the layer's full size and at (3, 7). A
    function that gives a non-finite value is not bilinear; one that raises is reported
    with the layer it failed on.
    """

    def at(a_in: float, a_out: float) -> float:
        alive = {"in": torch.tensor(a_in, dtype=torch.float64),
                 "out": torch.tensor(a_out, dtype=torch.float64)}
        try:
            return float(fn(info, alive, target))
        except Exception as e:
            raise HwnasError(
                f"cost function {getattr(fn, '__qualname__', fn)!r} failed on layer "
                f"{info.target!r} ({getattr(info.cost_key, '__name__', info.cost_key)}) at "
                f"in={a_in:g}, out={a_out:g}: {type(e).__name__}: {e}"
            ) from e

    f11, f21, f12, f22 = at(1, 1), at(2, 1), at(1, 2), at(2, 2)
    if not all(np.isfinite([f11, f21, f12, f22])):
        return None
    c3 = f22 - f21 - f12 + f11
    c1 = f21 - f11 - c3
    c2 = f12 - f11 - c3
    coef = [f11 - c1 - c2 - c3, c1, c2, c3]
    for a_in, a_out in ((float(info.in_channels or 1), float(info.out_channels or 1)),
                        (3.0, 7.0)):
        expected = coef[0] + coef[1] * a_in + coef[2] * a_out + coef[3] * a_in * a_out
        value = at(a_in, a_out)
        if not abs(value - expected) <= 1e-9 * max(1.0, abs(expected)):
            return None
    return coef
