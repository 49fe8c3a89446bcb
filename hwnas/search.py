"""SearchModel: a traced copy of the user's model with one L0 gate per free channel group.

Gates mask the *inputs* of the layers that read a group's channels (convs and linears,
depthwise convs excepted: their outputs are the same channels, masked downstream). A
pruned channel therefore contributes exactly nothing wherever it is read, whatever sits
between its producer and its readers (BatchNorm's shift, activations with f(0) != 0,
residual adds): this is what removing the channel physically does, so the exported
model computes the same function as the search model in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.fx as fx
from torch import nn

from hwnas import cost as cost_registry
from hwnas.cost.targets import Target, load_target
from hwnas.gates import (
    HardConcreteGate,
    hard_concrete_deterministic,
    hard_concrete_sample,
    prob_nonzero,
)
from hwnas.graph import ChannelGroup, LayerInfo, channel_groups, layers, trace
from hwnas.profile import metrics_for

__all__ = ["SearchModel", "wrap"]

_MASKED_KINDS = ("conv", "linear")


class _GateValues:
    """The gate values of the current forward pass, shared by the mask modules."""

    def __init__(self) -> None:
        self.z: dict[int, torch.Tensor] = {}
        self.batch: int | None = None
        self.enabled = True


class ChannelMask(nn.Module):
    """Multiplies a layer's input channels by their group gates (inserted by :func:`wrap`).

    ``segments`` lists, in input-channel order, ``(group, positions)`` runs; frozen groups
    contribute ones. ``dim`` is the channel dim of the masked input.
    """

    def __init__(
        self,
        state: _GateValues,
        segments: list[tuple[int, np.ndarray]],
        free: set[int],
        group_sizes: list[int],
        dim: int,
        ndim: int,
    ) -> None:
        super().__init__()
        self._state = state
        self.groups = [g for g, _ in segments]
        self.free = [g in free for g, _ in segments]
        self.dim, self.ndim = dim, ndim
        self.identity = []
        for k, (_, pos) in enumerate(segments):
            identity = bool(np.array_equal(pos, np.arange(group_sizes[segments[k][0]])))
            self.identity.append(identity)
            self.register_buffer(f"pos{k}", torch.as_tensor(pos, dtype=torch.long),
                                 persistent=False)
        self.sizes = [len(pos) for _, pos in segments]

    def device_of_buffers(self) -> torch.device:
        return next(self.buffers()).device

    def channel_values(self) -> torch.Tensor:
        """Mask values per input channel: shape (channels,) or (batch, channels)."""
        parts = []
        state = self._state
        for k, g in enumerate(self.groups):
            if not self.free[k]:
                shape = (self.sizes[k],) if state.batch is None else (state.batch, self.sizes[k])
                parts.append(torch.ones(shape, device=self.device_of_buffers()))
                continue
            z = state.z[g]
            parts.append(z if self.identity[k] else z.index_select(-1, getattr(self, f"pos{k}")))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._state.enabled or not self._state.z:
            # gates bypassed, or read outside SearchModel.forward (a weight parametrization
            # then gives the unmasked weight)
            return x
        values = self.channel_values().to(x.dtype)
        per_example = values.dim() == 2
        shape = [1] * x.dim()
        shape[self.dim % x.dim()] = values.shape[-1]
        if per_example:
            shape[0] = values.shape[0]
        return x * values.reshape(shape)


class WeightMasked(nn.Module):
    """A conv or linear layer whose weight's input channels are scaled by their gates.

    ``layer`` is the user's layer, unchanged; :func:`hwnas.materialize` puts it back in
    place of this wrapper.
    """

    def __init__(self, layer: nn.Linear | nn.modules.conv._ConvNd, mask: ChannelMask) -> None:
        super().__init__()
        self.layer = layer
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        weight = self.mask(layer.weight)
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)  # type: ignore[operator]


class SearchModel(nn.Module):
    """The user's model, traced, with hard-concrete L0 gates on its free channel groups.

    Build it with :func:`wrap`. In training mode each forward samples the gates (one draw
    per batch, or one per example with ``per_example=True``); in eval mode the
    deterministic gates are used, which is the architecture :func:`hwnas.materialize`
    exports.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> search = hwnas.wrap(net, torch.randn(1, 1, 8, 8))
        >>> search.cost("params").requires_grad
        True
        >>> search.costs()["params"]
        382.0
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        groups: tuple[ChannelGroup, ...],
        cost_names: tuple[str, ...],
        target: Target,
        droprate_init: float,
        per_example: bool,
        channel_multiple: int = 1,
    ) -> None:
        super().__init__()
        #: Channels per gate: pruning keeps whole blocks of this many channels per group.
        self.channel_multiple = channel_multiple
        self.gm = gm
        self.groups = groups
        self.cost_names = cost_names
        self.target = target
        self.per_example = per_example
        #: Default ``mode`` of :meth:`cost` (regularizers call ``cost(name)``).
        self.cost_mode = "expected"
        self._state = _GateValues()
        self.free_groups = [g.index for g in groups if g.frozen is None]
        self._gate_of: dict[int, HardConcreteGate] = {
            g: HardConcreteGate(-(-groups[g].size // channel_multiple), droprate_init,
                                per_example=per_example)
            for g in self.free_groups
        }
        self.gates = nn.ModuleDict({str(g): gate for g, gate in self._gate_of.items()})
        self.layer_infos: list[LayerInfo] = [
            info for info in layers(gm) if info.module_type is not None
        ]
        self._nonempty_slot_sets = self._slot_sets()
        self._insert_masks()
        self._build_alive_index()

    # ------------------------------------------------------------------ construction
    def _insert_masks(self) -> None:
        """Mask the input channels of every layer that reads a free group.

        With one gate draw per batch the mask is folded into the layer's weight
        (:class:`WeightMasked` scales the weight's input-channel dim): conv(x * z) ==
        conv_{W * z}(x), and a weight is far smaller than an activation. With per-example
        gates (or a module called more than once) the mask multiplies the activation in a
        graph node inserted before the layer.
        """
        free = set(self.free_groups)
        graph = self.gm.graph
        uses: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                uses[str(node.target)] = uses.get(str(node.target), 0) + 1
        k = 0
        for node in list(graph.nodes):
            info: LayerInfo | None = node.meta.get("hwnas")
            if info is None or node.op != "call_module" or info.kind not in _MASKED_KINDS:
                continue
            if info.depthwise or info.in_slots is None:
                continue
            slot_groups = info.in_slots[0]
            if not any(int(g) in free for g in np.unique(slot_groups)):
                continue
            segments: list[tuple[int, np.ndarray]] = []
            start = 0
            ends = [int(e) for e in np.flatnonzero(np.diff(slot_groups)) + 1]
            for end in ends + [len(slot_groups)]:
                segments.append((int(slot_groups[start]), info.in_slots[1, start:end]))
                start = end
            ndim = len(info.out_shape or (0, 0))
            sizes = [g.size for g in self.groups]
            module = self.gm.get_submodule(str(node.target))
            assert isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
            if not self.per_example and uses[str(node.target)] == 1:
                # weight layout (out, in/groups, *kernel) for convs and (out, in) for linears
                mask = ChannelMask(self._state, segments, free, sizes, 1, module.weight.dim())
                self.gm.set_submodule(str(node.target), WeightMasked(module, mask))
                continue
            dim = 1 if info.kind == "conv" else -1
            mask = ChannelMask(self._state, segments, free, sizes, dim, ndim)
            name = f"hwnas_mask_{k}"
            k += 1
            self.gm.add_submodule(name, mask)
            x = node.args[0]
            with graph.inserting_before(node):
                masked = graph.call_module(name, (x,))
            masked.meta["hwnas_mask_of"] = node.name
            node.replace_input_with(x, masked)
        graph.lint()
        self.gm.recompile()

    def _slot_sets(self) -> list[np.ndarray]:
        """Channel sets that must keep at least one channel: each group, each layer's
        inputs and outputs, each piece of a channel split."""
        sets = [np.stack([np.full(g.size, g.index), np.arange(g.size)]) for g in self.groups]
        for info in self.layer_infos:
            sets.extend(s for s in (info.in_slots, info.out_slots) if s is not None)
        for node in self.gm.graph.nodes:
            chan = node.meta.get("hwnas_chan")
            if isinstance(chan, list):
                sets.extend(c[1] for c in chan if c is not None and c[1].ndim == 2)
        return sets

    def _build_alive_index(self) -> None:
        # Flat vector of per-channel "alive" values: free groups first (gate order), then
        # one shared constant 1 for every frozen channel.
        offsets: dict[int, int] = {}
        total = 0
        for g in self.free_groups:
            offsets[g] = total
            total += self.groups[g].size
        self._one_index = total

        def index(slots: np.ndarray | None) -> torch.Tensor:
            if slots is None:
                return torch.zeros(0, dtype=torch.long)
            out = [offsets[int(g)] + int(p) if int(g) in offsets else total
                   for g, p in zip(slots[0], slots[1], strict=True)]
            return torch.tensor(out, dtype=torch.long)

        self._alive_index = [(index(i.in_slots), index(i.out_slots)) for i in self.layer_infos]
        self._compiled_cache: dict[str, Any] = {}

        def segments(which: int) -> tuple[torch.Tensor, torch.Tensor]:
            flat = [pair[which] for pair in self._alive_index]
            layer = [torch.full((len(f),), k, dtype=torch.long) for k, f in enumerate(flat)]
            empty = torch.zeros(0, dtype=torch.long)
            return (torch.cat(flat) if flat else empty, torch.cat(layer) if layer else empty)

        self._segments = (segments(0), segments(1))
        # Channel sets that must keep a channel, as flat indices; a set with a frozen
        # (always kept) channel never needs a fix and is left out.
        flat: list[torch.Tensor] = []
        ids: list[torch.Tensor] = []
        for slots in self._nonempty_slot_sets:
            idx = index(slots)
            if len(idx) and not bool((idx == total).any()):
                flat.append(idx)
                ids.append(torch.full((len(idx),), len(ids), dtype=torch.long))
        self._set_index = (torch.cat(flat) if flat else torch.zeros(0, dtype=torch.long),
                           torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long), len(ids))

    # ------------------------------------------------------------------ forward
    def _to_channels(self, g: int, values: torch.Tensor) -> torch.Tensor:
        """Per-gate values of group ``g`` (last dim) repeated for every channel of its block."""
        m = self.channel_multiple
        if m == 1:
            return values
        return values.repeat_interleave(m, dim=-1)[..., : self.groups[g].size]

    def _gate_values(self, sample: bool, batch: int | None) -> dict[int, torch.Tensor]:
        """All gates in one draw (one op chain for every group, then split per group)."""
        if not self.free_groups:
            return {}
        log_alpha = torch.cat([self._gate_of[g].log_alpha for g in self.free_groups])
        if sample:
            shape = log_alpha.shape if batch is None else (batch, log_alpha.numel())
            z = hard_concrete_sample(log_alpha, shape)
        else:
            z = hard_concrete_deterministic(log_alpha)
        parts = z.split([self._gate_of[g].log_alpha.numel() for g in self.free_groups], dim=-1)
        return {g: self._to_channels(g, z_g) for g, z_g in zip(self.free_groups, parts,
                                                                strict=True)}

    @property
    def gates_enabled(self) -> bool:
        """False while gates are bypassed (plain training of the full model, e.g. warm-up)."""
        return self._state.enabled

    @gates_enabled.setter
    def gates_enabled(self, value: bool) -> None:
        self._state.enabled = bool(value)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        state = self._state
        if not state.enabled:
            return self.gm(*inputs)
        sample = self.gates.training
        batch = inputs[0].shape[0] if (self.per_example and sample) else None
        state.batch = batch
        state.z = self._gate_values(sample, batch)
        try:
            return self.gm(*inputs)
        finally:
            state.z = {}
            state.batch = None

    # ------------------------------------------------------------------ parameters
    def arch_parameters(self) -> Iterator[nn.Parameter]:
        """The gate logits (``log_alpha``): train them without weight decay."""
        return (gate.log_alpha for gate in self._gate_of.values())

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter of the wrapped model (not the gates)."""
        return self.gm.parameters()

    def channel_gate_values(self, group: int) -> torch.Tensor:
        """Deterministic gate value of every channel of ``group`` (blocks expanded)."""
        return self._to_channels(group, self.gate(group).deterministic())

    def gate(self, group: int) -> HardConcreteGate:
        """The gate of channel group ``group`` (KeyError for frozen or unknown groups)."""
        if str(group) not in self.gates:
            frozen = self.groups[group].frozen if 0 <= group < len(self.groups) else None
            raise KeyError(
                f"group {group} has no gate" + (f" (frozen: {frozen})" if frozen else "")
                + f"; gated groups: {self.free_groups}"
            )
        return self._gate_of[group]

    def gated_weights(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(weight, P(z != 0))`` pairs for every gated layer input, broadcastable."""
        expected = self._alive_vector("expected")
        for info, (idx_in, _) in zip(self.layer_infos, self._alive_index, strict=True):
            if info.kind not in _MASKED_KINDS or info.depthwise or info.module is None:
                continue
            alive = expected[idx_in]
            if info.in_slots is None or bool((idx_in == self._one_index).all()):
                continue
            weight = info.module.weight
            assert isinstance(weight, torch.Tensor)
            shape = [1] * weight.dim()
            shape[1] = weight.shape[1]
            if weight.shape[1] * info.groups != alive.numel():
                continue
            yield weight, alive.reshape(shape)

    # ------------------------------------------------------------------ costs
    def keep_masks(self) -> dict[int, torch.Tensor]:
        """Channels the deterministic architecture keeps, per free group.

        Every layer must keep at least one input and one output channel, and every piece
        of a channel split at least one channel (the exported model must stay a valid
        network): where the gates close all of them, the channel with the largest
        ``log_alpha`` is kept. Its gate value stays 0, so it contributes nothing.
        """
        if not self.free_groups:
            return {}
        keep = self._keep_flat()
        device = self._gate_of[self.free_groups[0]].log_alpha.device
        sizes = [self.groups[g].size for g in self.free_groups]
        return {g: k.to(device) for g, k in zip(self.free_groups, keep.split(sizes),
                                                 strict=True)}

    def _flat_channels(self, per_gate: torch.Tensor) -> torch.Tensor:
        """Concatenated per-gate values of all free groups, expanded to channels."""
        if self.channel_multiple == 1:
            return per_gate
        parts = per_gate.split([self._gate_of[g].log_alpha.numel() for g in self.free_groups])
        return torch.cat([self._to_channels(g, p) for g, p in zip(self.free_groups, parts,
                                                                  strict=True)])

    def _log_alpha(self) -> torch.Tensor:
        return torch.cat([self._gate_of[g].log_alpha for g in self.free_groups])

    def _keep_flat(self) -> torch.Tensor:
        """Channel-level keep mask of all free groups (CPU), see :meth:`keep_masks`."""
        log_alpha = self._flat_channels(self._log_alpha().detach()).cpu()
        keep = hard_concrete_deterministic(log_alpha) > 0
        set_index, set_id, n_sets = self._set_index
        if n_sets:
            counts = torch.zeros(n_sets).index_add_(0, set_id, keep[set_index].float())
            for k in torch.nonzero(counts == 0).flatten().tolist():
                idx = set_index[set_id == k]
                if not bool(keep[idx].any()):  # an earlier fix may have filled it
                    keep[idx[int(log_alpha[idx].argmax())]] = True
        return keep

    def _alive_vector(self, mode: str) -> torch.Tensor:
        if mode not in ("expected", "deterministic", "straight_through"):
            raise ValueError(
                f"`mode` must be 'expected', 'straight_through' or 'deterministic', "
                f"but got {mode!r}"
            )
        parts: list[torch.Tensor] = []
        if self.free_groups:
            if mode == "deterministic":
                parts = [self._keep_flat().float()]
            else:
                p = self._flat_channels(prob_nonzero(self._log_alpha()))
                if mode == "straight_through":
                    p = self._keep_flat().to(p) + p - p.detach()
                parts = [p]
        device = next(self.gm.parameters()).device if any(True for _ in self.gm.parameters()) \
            else torch.device("cpu")
        one = torch.ones(1, device=device)
        return torch.cat([p.to(device) for p in parts] + [one])

    def layer_costs(self, mode: str = "deterministic") -> pd.DataFrame:
        """Per-layer costs (one row per layer) for ``mode`` (see :meth:`cost`)."""
        rows = []
        alive_vec = self._alive_vector(mode).detach()
        for info, (idx_in, idx_out) in zip(self.layer_infos, self._alive_index, strict=True):
            alive = {"in": alive_vec[idx_in].sum(), "out": alive_vec[idx_out].sum()}
            row = {"layer": info.target, "type": getattr(info.module_type, "__name__", ""),
                   "in_channels": info.in_channels, "in_kept": float(alive["in"]),
                   "out_channels": info.out_channels, "out_kept": float(alive["out"])}
            for name in self._metrics():
                value = cost_registry.evaluate(name, info, alive, self.target)
                row[name] = 0.0 if value is None else float(value)
            rows.append(row)
        return pd.DataFrame(rows)

    def _metrics(self) -> list[str]:
        return metrics_for(self.target)

    def cost(self, name: str, mode: str | None = None) -> torch.Tensor:
        """Differentiable total cost ``name`` of the architecture.

        Args:
            name: A registered metric (``params``, ``ops``, ``luts``, ...).
            mode: ``None`` uses ``self.cost_mode`` (``"expected"`` unless changed).
                ``"expected"`` uses P(z != 0) per channel (Louizos' expected L0);
                ``"straight_through"`` has the value of the deterministic architecture
                (what export produces) and the gradient of the expected cost;
                ``"deterministic"`` is the exported architecture's cost, no gradient.
        """
        cost_registry.check_metric(name)
        if name == "luts" and not self.target.has_lut_model:
            cost_registry.formulas.lut_model(self.target)
        alive_vec = self._alive_vector(self.cost_mode if mode is None else mode)
        total = self._total(name, alive_vec)
        return total.to(alive_vec.dtype) if mode != "deterministic" else total

    def _total(self, name: str, alive_vec: torch.Tensor) -> torch.Tensor:
        """Cost ``name`` summed over layers for per-channel alive values ``alive_vec``."""
        bilinear, others = self._compiled(name)
        total = alive_vec.new_zeros((), dtype=torch.float64)
        if bilinear is not None:
            # Costs bilinear in the alive counts, for all those layers at once:
            # c0 + c1 * in + c2 * out + c3 * in * out (see _compiled).
            layers_idx, coef = bilinear
            dev = alive_vec.device
            a_in, a_out = self._layer_alive(alive_vec.double())
            a_in, a_out = a_in[layers_idx.to(dev)], a_out[layers_idx.to(dev)]
            coef = coef.to(dev)
            total = total + (coef[:, 0] + coef[:, 1] * a_in + coef[:, 2] * a_out
                             + coef[:, 3] * a_in * a_out).sum()
        for k in others:
            info = self.layer_infos[k]
            fn = cost_registry.lookup(name, info.module_type or type(None))
            assert fn is not None
            idx_in, idx_out = (i.to(alive_vec.device) for i in self._alive_index[k])
            alive = {"in": alive_vec[idx_in].sum(), "out": alive_vec[idx_out].sum()}
            total = total + fn(info, alive, self.target).double()
        return total

    def _layer_alive(self, alive_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Alive input and output channels of every layer: two segment sums."""
        (in_flat, in_layer), (out_flat, out_layer) = self._segments
        dev = alive_vec.device
        n = len(self.layer_infos)
        a_in = alive_vec.new_zeros(n).index_add(0, in_layer.to(dev), alive_vec[in_flat.to(dev)])
        a_out = alive_vec.new_zeros(n).index_add(0, out_layer.to(dev),
                                                 alive_vec[out_flat.to(dev)])
        return a_in, a_out

    def _compiled(self, name: str):
        """Split the layers of metric ``name`` into bilinear ones (coefficients) and others.

        A registered cost function is probed at (in, out) in {0, 1}^2, which fixes
        c0 + c1*in + c2*out + c3*in*out, and checked at two more points (the layer's
        full size and a third one); a function that passes is evaluated for all such
        layers in one vectorised expression, the others layer by layer. Convs and linears
        (params, MACs) are bilinear; the LUT estimate (log2 of the fan-in) is not.
        """
        cache = self._compiled_cache
        if name in cache:
            return cache[name]
        rows, idx, others = [], [], []
        for k, info in enumerate(self.layer_infos):
            fn = cost_registry.lookup(name, info.module_type or type(None))
            if fn is None:
                continue
            coef = _bilinear_coefficients(fn, info, self.target)
            if coef is None:
                others.append(k)
            else:
                rows.append(coef)
                idx.append(k)
        bilinear = None
        if rows:
            bilinear = (torch.tensor(idx, dtype=torch.long),
                        torch.tensor(rows, dtype=torch.float64))
        cache[name] = (bilinear, others)
        return cache[name]

    def costs(self) -> dict[str, float]:
        """Exact costs of the deterministic architecture (what export will produce)."""
        with torch.no_grad():
            return {name: float(self.cost(name, "deterministic")) for name in self._metrics()}

    def reference_costs(self) -> dict[str, float]:
        """Costs of the unpruned model (every channel alive)."""
        with torch.no_grad():
            ones = torch.ones_like(self._alive_vector("deterministic"), dtype=torch.float64)
            return {name: float(self._total(name, ones)) for name in self._metrics()}

    def enforce_targets_(self, targets: dict[str, float]) -> int:
        """Close gates, least likely first, until the exported costs meet ``targets``.

        The relaxed cost a regularizer drives under its target can land slightly above it
        once the gates are binarised. This projection closes the open channel with the
        smallest ``log_alpha`` (its gate is set to exactly 0) until every target is met
        or nothing more can be closed (each layer keeps one channel). Returns how many
        channels it closed.
        """
        for name in targets:
            cost_registry.check_metric(name)
        closed = 0
        with torch.no_grad():
            while any(self.cost(n, "deterministic") > t for n, t in targets.items()):
                keep = self.keep_masks()
                best: tuple[float, int, int] | None = None
                for g in self.free_groups:
                    gate = self._gate_of[g]
                    open_ = gate.keep_mask()
                    if int(open_.sum()) <= 1 or not bool(keep[g].any()):
                        continue
                    la = gate.log_alpha.masked_fill(~open_, float("inf"))
                    k = int(la.argmin())
                    if best is None or float(la[k]) < best[0]:
                        best = (float(la[k]), g, k)
                if best is None:
                    break
                _, g, k = best
                self._gate_of[g].log_alpha[k] = -10.0
                closed += 1
        return closed

    # ------------------------------------------------------------------ reporting
    def summary(self, by: str = "layer") -> pd.DataFrame:
        """Channels kept per layer (``by="layer"``) or per channel group (``by="group"``)."""
        if by == "group":
            keep = self.keep_masks()
            rows = []
            for g in self.groups:
                kept = int(keep[g.index].sum()) if g.index in keep else g.size
                rows.append({"group": g.index, "channels": g.size, "kept": kept,
                             "producers": ", ".join(g.producers), "frozen": g.frozen or ""})
            return pd.DataFrame(rows)
        if by != "layer":
            raise ValueError(f"`by` must be 'layer' or 'group', but got {by!r}")
        df = self.layer_costs("deterministic")
        groups = [int(i.out_slots[0, 0]) if i.out_slots is not None else -1
                  for i in self.layer_infos]
        df.insert(2, "group", groups)
        df["frozen"] = [self._layer_frozen(i) or "" for i in self.layer_infos]
        for col in ("in_kept", "out_kept"):
            df[col] = df[col].round().astype("int64")
        return df

    def _layer_frozen(self, info: LayerInfo) -> str | None:
        # Like LayerInfo.frozen (the reason of the first frozen group the layer writes), but
        # from self.groups, which also holds the groups frozen by wrap(exclude=...).
        own = info.out_slots if info.out_slots is not None else info.in_slots
        if own is None:
            return info.frozen
        return next((self.groups[int(g)].frozen for g in np.unique(own[0])
                     if self.groups[int(g)].frozen is not None), None)

    def export(self) -> nn.Module:
        """The pruned plain model; see :func:`hwnas.materialize`."""
        from hwnas.export import materialize

        return materialize(self)


def _bilinear_coefficients(fn, info: LayerInfo, target: Target) -> list[float] | None:
    """(c0, c1, c2, c3) with fn == c0 + c1*in + c2*out + c3*in*out, or None if it is not."""

    def at(a_in: float, a_out: float) -> float:
        alive = {"in": torch.tensor(a_in, dtype=torch.float64),
                 "out": torch.tensor(a_out, dtype=torch.float64)}
        return float(fn(info, alive, target))

    try:
        f00, f10, f01, f11 = at(0, 0), at(1, 0), at(0, 1), at(1, 1)
        coef = [f00, f10 - f00, f01 - f00, f11 - f10 - f01 + f00]
        for a_in, a_out in ((float(info.in_channels or 0), float(info.out_channels or 0)),
                            (3.0, 7.0)):
            expected = coef[0] + coef[1] * a_in + coef[2] * a_out + coef[3] * a_in * a_out
            if abs(at(a_in, a_out) - expected) > 1e-9 * max(1.0, abs(expected)):
                return None
    except Exception:  # a function that cannot take these probes is evaluated as is
        return None
    return coef


def wrap(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    costs: Iterable[str] = ("params", "ops"),
    target: str | Path | Target = "generic",
    exclude: Iterable[str] = (),
    droprate_init: float = 0.3,
    per_example: bool = False,
    leaf_modules: tuple[type | str, ...] = (),
    channel_multiple: int = 1,
) -> SearchModel:
    """Wrap a copy of ``model`` for channel search.

    Args:
        model: The model; it is deep-copied, never modified.
        example_inputs: Example inputs with batch size 1 (costs are per example).
        costs: Metrics the search is expected to use (validated against the registry).
        target: Hardware target name, TOML path or :class:`~hwnas.cost.Target`.
        exclude: Module names (as in ``model.named_modules()``) whose output channels
            must not be pruned.
        droprate_init: Initial probability that a gate is closed (Louizos' ``p``). At 0.3
            the gates start at P(open) = 0.7 (deterministic value 0.79), where they still
            move quickly; values near 0 start exactly at the full model but saturate the
            gates, so the search needs more epochs to close channels.
        per_example: Sample an independent gate per example (a (batch, channels) mask)
            instead of one per batch.
        leaf_modules: Passed to :func:`hwnas.trace`.
        channel_multiple: Channels per gate. With 16, every group keeps a multiple of 16
            channels (its last block may be shorter): the blocked layouts of CPU/GPU
            kernels (e.g. onnxruntime's NCHWc) then run the pruned layers at full speed.

    Returns:
        A :class:`SearchModel`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> search = hwnas.wrap(net, torch.randn(1, 4), costs=("params",))
        >>> search.summary(by="group")["kept"].tolist()
        [4, 16, 2]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, but got {type(model).__name__}")
    costs = tuple(costs)
    if isinstance(exclude, str):
        raise TypeError("`exclude` must be a collection of module names, not a single string")
    exclude = tuple(exclude)
    target = load_target(target)
    for name in costs:
        cost_registry.check_metric(name)
        if name == "luts" and not target.has_lut_model:
            cost_registry.formulas.lut_model(target)
    if not isinstance(channel_multiple, int) or channel_multiple < 1:
        raise ValueError(
            f"`channel_multiple` must be an integer >= 1, but got {channel_multiple!r}"
        )
    if not 0.0 < droprate_init < 1.0:
        raise ValueError(f"`droprate_init` must be in (0, 1), but got {droprate_init!r}")
    copied = copy.deepcopy(model)
    module_names = {name for name, _ in copied.named_modules() if name}
    unknown = [e for e in exclude if e not in module_names]
    if unknown:
        raise ValueError(
            f"`exclude` names no layer: {unknown}; layers are e.g. "
            f"{sorted(module_names)[:10]}"
        )
    was_training = copied.training
    copied.eval()
    gm = trace(copied, example_inputs, leaf_modules=leaf_modules)
    gm.train(was_training)
    groups = list(channel_groups(gm))
    if exclude:
        for node in gm.graph.nodes:
            info = node.meta.get("hwnas")
            if node.op == "call_module" and info is not None and info.out_slots is not None:
                if any(str(node.target) == e or str(node.target).startswith(e + ".")
                       for e in exclude):
                    for g in np.unique(info.out_slots[0]):
                        if groups[int(g)].frozen is None:
                            groups[int(g)] = _frozen(groups[int(g)], f"excluded: {node.target}")
    return SearchModel(gm, tuple(groups), costs, target, droprate_init, per_example,
                       channel_multiple)


def _frozen(group: ChannelGroup, reason: str) -> ChannelGroup:
    from dataclasses import replace

    return replace(group, frozen=reason)
