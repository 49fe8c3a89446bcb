"""SearchModel: a traced copy of the user's model with L0 gates on its free channel groups.

The model holds one :class:`~hwnas.search.gates.HardConcreteGate` whose entries are the gates of
all free groups, laid out by an :class:`~hwnas.search.alive.AliveIndex`. A forward draws the
gate values once (the one sampling path, :meth:`SearchModel.gate_values`) and passes them to
the graph as its last input; the masks of :mod:`hwnas.search.masks` read them there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
import torch
import torch.fx as fx
from torch import nn

from hwnas import cost as cost_registry
from hwnas._internal.devices import device_of
from hwnas.cost.target import Target
from hwnas.errors import InvalidValueError, UnknownNameError
from hwnas.graph import layers
from hwnas.graph.ir import ChannelGroup, LayerInfo
from hwnas.search.alive import AliveIndex
from hwnas.search.gates import GateSlice, HardConcreteGate, prob_nonzero
from hwnas.search.masks import GateReader
from hwnas.search.summary import group_table, kept_table, layer_table
from hwnas.search.surgery import insert_masks

if TYPE_CHECKING:
    from hwnas.search.precision import BitSearch

__all__ = ["COST_MODES", "DEFAULT_COST_MODE", "GATE_MODES", "SearchModel"]

#: How :meth:`SearchModel.cost` reads the gates.
COST_MODES = ("expected", "straight_through", "deterministic")
#: The default of :attr:`SearchModel.cost_mode` and of ``FitConfig.cost_mode``: the value
#: of the exported architecture with the gradient of the expected cost.
DEFAULT_COST_MODE = "straight_through"
#: How :meth:`SearchModel.forward` sets the gates.
GATE_MODES = ("sample", "deterministic", "off")


class SearchModel(nn.Module):
    """The user's model, traced, with hard-concrete L0 gates on its free channel groups.

    Build it with :func:`wrap`. In training mode each forward samples the gates (one draw
    per batch, or one per example with ``per_example=True``); in eval mode the
    deterministic gates are used, which is the architecture :meth:`export` produces.
    ``forward(*inputs, gates=...)`` overrides this for one call: ``"sample"``,
    ``"deterministic"`` or ``"off"`` (the full model, every channel at 1).

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

    def __init__(self, gm: fx.GraphModule, groups: tuple[ChannelGroup, ...],
                 cost_names: tuple[str, ...], target: Target, droprate_init: float,
                 per_example: bool, channel_multiple: int = 1) -> None:
        super().__init__()
        self.groups = groups
        self.cost_names = cost_names
        #: The hardware target the costs are computed for (may be replaced).
        self.target = target
        self.per_example = per_example
        #: Channels per gate: pruning keeps whole blocks of this many channels per group.
        self.channel_multiple = channel_multiple
        self.layer_infos: list[LayerInfo] = [i for i in layers(gm) if i.cost_key is not None]
        self.index = AliveIndex(self.layer_infos, groups, channel_multiple, gm)
        self.free_groups = list(self.index.free_groups)
        self.gates = HardConcreteGate(max(self.index.n_gates, 1), droprate_init,
                                      per_example=per_example)
        self.gm = gm
        #: The graph also takes keep flags (a masked LayerNorm / GroupNorm reads them).
        self.needs_keep = insert_masks(gm, self.index.slot_index, self.index.n_gates,
                                       per_example)
        self._cost_mode = DEFAULT_COST_MODE
        #: The example inputs of ``wrap`` (batch 1, on the CPU): what reports and exports of
        #: this search are profiled and traced with.
        self.example_inputs: tuple[torch.Tensor, ...] = ()
        #: Checkpoint path -> fingerprint of this search when the fit writing that
        #: checkpoint began (hwnas.training.checkpoint.start_fingerprint).
        self.run_origins: dict[str, str] = {}
        self._gated_inputs = self.index.gated_inputs()
        #: Whether a mask reads entry ``n_gates`` of the gate vector (the constant 1 of a
        #: frozen channel beside gated ones); without one, the vector has no such entry.
        self._reads_one = any(bool((buf == self.index.n_gates).any())
                              for m in gm.modules() if isinstance(m, GateReader)
                              for buf in m.buffers(recurse=False))
        self.precision: BitSearch | None = None  # the searched bits (wrap(precision=...))
        self.to(device_of(gm))  # the model's device decides (gates, masks' index buffers)

    def _apply(self, fn: Any, recurse: bool = True) -> SearchModel:
        """``.to()``, ``.cuda()``, ``.half()``, ...: everything moves, but the gate logits
        stay float32 whatever the model's dtype (a bf16 logit cannot hold a gate that is
        nearly closed or open apart from one that is closed or open)."""
        super()._apply(fn, recurse)
        self._gated_inputs = [(m, fn(idx)) for m, idx in self._gated_inputs]
        la = self.gates.log_alpha
        if la.dtype != torch.float32:
            la.data = la.data.float()
            if la.grad is not None:
                la.grad = la.grad.float()
        return self

    # ------------------------------------------------------------------ modes
    @property
    def cost_mode(self) -> str:
        """Default ``mode`` of :meth:`cost` (regularizers call ``cost(name)``):
        :data:`DEFAULT_COST_MODE`, as in ``FitConfig``, unless changed."""
        return self._cost_mode

    @cost_mode.setter
    def cost_mode(self, mode: str) -> None:
        if mode not in COST_MODES:
            raise InvalidValueError(f"`cost_mode` must be one of {COST_MODES}, but got {mode!r}")
        self._cost_mode = mode

    # ------------------------------------------------------------------ forward
    def _log_alpha(self) -> torch.Tensor:
        la = self.gates.log_alpha
        return la if la.numel() == self.index.n_gates else la[: self.index.n_gates]

    def gate_values(self, mode: str, batch: int | None = None) -> torch.Tensor | None:
        """The gate vector a forward passes to the graph, with the trailing constant 1 where
        a mask reads it.

        ``"sample"`` draws hard-concrete gates (``(batch, n + 1)`` for per-example gates),
        ``"deterministic"`` gives the eval gates, ``"off"`` gives None (no masking).
        """
        if mode not in GATE_MODES:
            raise InvalidValueError(f"`gates` must be one of {GATE_MODES}, but got {mode!r}")
        if mode == "off":
            return None
        n = self.index.n_gates
        if mode == "sample":
            z = self.gates.sample(batch if self.per_example else None)
        else:
            z = self.gates.deterministic()
        if z.shape[-1] != n:
            z = z[..., :n]
        if not self._reads_one:  # no mask reads a frozen channel: no constant needed
            return z
        return nn.functional.pad(z, (0, 1), value=1.0)  # the constant 1 frozen channels read

    def forward(self, *inputs: torch.Tensor, gates: str | None = None) -> Any:
        """Run the model with sampled (training) or deterministic (eval) gates.

        Args:
            inputs: The model's inputs.
            gates: Override for this call: ``"sample"``, ``"deterministic"`` or ``"off"``.
        """
        mode = gates or ("sample" if self.training else "deterministic")
        batch = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        z = self.gate_values(mode, batch)
        keep = (self.keep_values(mode, z),) if self.needs_keep else ()
        bits = () if self.precision is None else (self.precision.values(mode),)
        return self.gm(*inputs, z, *keep, *bits)

    def keep_values(self, mode: str, z: torch.Tensor | None) -> torch.Tensor | None:
        """1 for a kept channel's gate entry, 0 for a pruned one (what a masked norm reads):
        ``z > 0`` for sampled gates, the exported architecture's keep mask for
        deterministic ones (where a kept channel can have gate value 0)."""
        if z is None:
            return None
        if mode == "sample":
            return (z > 0).to(z.dtype)
        keep = self.index.keep_values(self._log_alpha()).to(device=z.device, dtype=z.dtype)
        return nn.functional.pad(keep, (0, 1), value=1.0) if self._reads_one else keep

    # ------------------------------------------------------------------ parameters
    def arch_parameters(self) -> Iterator[nn.Parameter]:
        """The gate logits (``log_alpha``): train them without weight decay.

        Empty when the model has no free channel group (nothing to search). With a
        precision search, the bit-width parameters follow.
        """
        gates = [cast(nn.Parameter, self.gates.log_alpha)] if self.index.n_gates else []
        return iter(gates + ([] if self.precision is None else [*self.precision.arch_parameters()]))

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter of the wrapped model (not the gates)."""
        return self.gm.parameters()

    def gate(self, group: int) -> GateSlice:
        """The gate entries of channel group ``group`` (a view of :attr:`gates`)."""
        if group not in self.index.offsets:
            frozen = self.groups[group].frozen if 0 <= group < len(self.groups) else None
            raise UnknownNameError(
                f"group {group} has no gate" + (f" (frozen: {frozen})" if frozen else "")
                + f"; gated groups: {self.free_groups}"
            )
        s = self.index.group_gates(group)
        return GateSlice(self.gates, s.start, s.stop)

    def channel_gate_values(self, group: int) -> torch.Tensor:
        """Deterministic gate value of every channel of ``group`` (blocks expanded)."""
        return self.index.to_channels(group, self.gate(group).deterministic())

    def expected_l0(self) -> torch.Tensor:
        """Expected number of open gate entries, differentiable (Louizos' L0)."""
        return prob_nonzero(self._log_alpha()).sum()

    def gated_weights(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(weight, P(z != 0))`` pairs for every gated layer input, broadcastable."""
        la = self._log_alpha()
        alive = torch.cat([prob_nonzero(la), la.new_ones(1)])
        for module, idx in self._gated_inputs:
            weight = cast(torch.Tensor, module.weight)
            shape = [1] * weight.dim()
            shape[1] = weight.shape[1]
            yield weight, alive[idx].reshape(shape)

    # ------------------------------------------------------------------ costs
    def keep_masks(self) -> dict[int, torch.Tensor]:
        """Channels the deterministic architecture keeps, per free group.

        Every layer must keep at least one input and one output channel, and every piece
        of a channel split at least one channel (the exported model must stay a valid
        network): where the gates close all of them, the gate with the largest
        ``log_alpha`` is kept. Its gate value stays 0, so it contributes nothing.
        """
        keep = self.index.keep(self._log_alpha())
        return {g: self.index.to_channels(g, keep[self.index.group_gates(g)])
                for g in self.free_groups}

    def alive_vector(self, mode: str) -> torch.Tensor:
        """Per-gate alive values for ``mode`` (see :meth:`cost`).

        The deterministic values (the exported architecture: 0/1, no gradient) are float64
        on the CPU, so exact costs are counted exactly there on any device; the
        differentiable ones are float32 on the gates' device (what the search step uses:
        no float64 and no host read on a GPU)."""
        if mode not in COST_MODES:
            raise InvalidValueError(f"`mode` must be one of {COST_MODES}, but got {mode!r}")
        la = self._log_alpha()
        if mode == "deterministic":
            return self.index.keep(la.detach().cpu()).double()
        p = prob_nonzero(la)
        if mode == "straight_through":
            # exactly the 0/1 keep value, with the gradient of P(z != 0)
            p = p + (self.index.keep_values(la) - p).detach()
        return p

    def costs_of(self, names: Sequence[str], mode: str | None = None) -> torch.Tensor:
        """The costs ``names`` as one vector, evaluated together (see :meth:`cost`): float32
        on the gates' device for the differentiable modes, float64 (exact) for
        ``"deterministic"``."""
        for name in names:
            self.check_cost(name)
        alive = self.alive_vector(mode := self._cost_mode if mode is None else mode)
        if self.precision is not None:  # bitops, weight_memory, luts at the searched bits
            return self.precision.totals(self, list(names), alive, mode)
        return self.index.totals(list(names), alive, self.target)

    def cost(self, name: str, mode: str | None = None) -> torch.Tensor:
        """Differentiable total cost ``name`` of the architecture (float32; float64 for
        ``"deterministic"``).

        Args:
            name: A registered metric (``params``, ``ops``, ``luts``, ...).
            mode: ``None`` uses :attr:`cost_mode` (``"expected"`` unless changed).
                ``"expected"`` uses P(z != 0) per channel (Louizos' expected L0);
                ``"straight_through"`` has the value of the deterministic architecture
                (what export produces) and the gradient of the expected cost;
                ``"deterministic"`` is the exported architecture's cost, no gradient.
        """
        return self.costs_of([name], mode)[0]

    def check_cost(self, name: str) -> None:
        """The costs a search answers are the ones ``wrap(costs=...)`` asked for."""
        if name not in self.cost_names:
            cost_registry.check_metric(name)  # an unknown name: the error lists the known
            asked = ", ".join(map(repr, self.cost_names))
            raise UnknownNameError(
                f"cost {name!r} was not asked for: this search was wrapped with costs=("
                f"{asked}); wrap with costs=({asked}, {name!r}) to use it")

    def costs(self) -> dict[str, float]:
        """Exact costs of the deterministic architecture (what export will produce), for
        the costs ``wrap(costs=...)`` asked for."""
        names = list(self.cost_names)
        with torch.no_grad():
            values = self.costs_of(names, "deterministic")
        return dict(zip(names, (float(v) for v in values), strict=True))

    def reference_costs(self) -> dict[str, float]:
        """Costs of the unpruned model (every channel alive), for the asked costs."""
        names = list(self.cost_names)
        with torch.no_grad():
            ones = torch.ones(self.index.n_gates, dtype=torch.float64)  # exact, on the CPU
            values = self.index.totals(names, ones, self.target)
        return dict(zip(names, (float(v) for v in values), strict=True))

    def enforce_targets_(self, targets: Mapping[str, float]) -> int:
        """Close gates, least likely first, until the exported costs meet ``targets``.

        The relaxed cost a regularizer drives under its target can land slightly above it
        once the gates are binarised. This projection closes the open gate with the
        smallest ``log_alpha`` (its gate is set to exactly 0) until every target is met
        or nothing more can be closed (each group keeps one gate). Returns how many gates
        it closed.
        """
        for name in targets:
            self.check_cost(name)
        names = list(targets)
        return self.index.enforce(
            self.gates.log_alpha,
            lambda: dict(zip(names, self.costs_of(names, "deterministic").tolist(), strict=True)),
            targets)

    # ------------------------------------------------------------------ reporting
    def layer_costs(self, mode: str = "deterministic") -> pd.DataFrame:
        """Per-layer costs (one row per layer) for ``mode`` (see :meth:`cost`)."""
        with torch.no_grad():
            a_in, a_out = self.index.layer_alive(self.alive_vector(mode))
        return layer_table(self.layer_infos, a_in, a_out, self.target)

    def summary(self, by: str = "layer") -> pd.DataFrame:
        """Channels kept per layer (``by="layer"``) or per channel group (``by="group"``),
        with the reason of every frozen group."""
        if by == "group":
            return group_table(self.groups, self.keep_masks())
        if by != "layer":
            raise InvalidValueError(f"`by` must be 'layer' or 'group', but got {by!r}")
        return kept_table(self.layer_costs("deterministic"), self.layer_infos, self.groups)

    def export(self) -> fx.GraphModule:
        """The pruned plain model; see :func:`hwnas.materialize` (with a precision search:
        quantised at the chosen bits, :func:`hwnas.search.quant_graph.export_quantized`)."""
        from hwnas.search.materialize import materialize  # the bridge to hwnas.pruning

        return materialize(self) if self.precision is None else self.precision.export(self)
