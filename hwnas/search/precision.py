"""Bit widths as a searched dimension: :class:`PrecisionSpace` (what ``wrap(precision=...)``
takes) and :class:`BitSearch` (the ``search.precision`` submodule it adds).

Every conv / linear module of the model gets a learnable choice of its weight bits (per
layer, or per output channel with ``per_channel=True``) and of its input activation's bits,
each from a candidate set such as ``(2, 3, 4, 6, 8)``. Zero bits is not a candidate: a
channel at 0 bits is a pruned channel, which the L0 channel gate already searches, so the
costs count each channel as ``P(alive) x bits``.

Relaxations (``PrecisionSpace.relaxation``):

- ``"softmax"`` (default; PLiNIO's MPS, Risso et al. 2022): one logit per candidate; the
  forward mixes the candidates' fake-quantised tensors with ``softmax(logits / T)``, the
  costs take the expectation over the candidates, export takes the argmax.
- ``"hard_softmax"``: the same logits, but the forward uses the argmax candidate alone
  (straight through: the values of the choice export will make, the softmax's gradient),
  so the weights are trained at the bits they will be exported with.
- ``"ste"`` (HGQ-style): one continuous bit width per row; the forward uses the nearest
  candidate, the gradient flows through the linear interpolation between the two
  candidates around it (quantisers and costs alike).

Both give a mixing matrix over the candidates, so quantisers and costs consume one thing.
``reports/mixed_precision.md`` compares them (same seeds and epochs); the reason the
default is the softmax is there.

Costs (:meth:`BitSearch.totals`, for ``bitops``, ``weight_memory`` and ``luts``), per
quantised layer with ``n`` alive weights per output channel, summed over output channels
``c`` with alive value ``a_c``:
``bitops = a_c (n + bias) positions E[W_c] E[A]``, ``weight_memory = a_c n E[W_c]``,
``luts = a_c sum_ij P(W_c = W_i) P(A = A_j) mac_luts(n; W_i, A_j)`` (the calibrated model,
:func:`hwnas.cost.bits.mac_luts_grid`). The cost modes are the channel gates': the
expectation, its straight-through version (the argmax's value, the expectation's gradient)
and the exported choice exactly (integer counts, LUTs rounded per layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas._internal.devices import device_of
from hwnas.cost.bits import BITS_METRICS
from hwnas.errors import InvalidValueError
from hwnas.search.bitspace import RELAXATIONS, SCALES, PrecisionSpace, QLayer, mixing
from hwnas.search.precision_costs import bit_costs, bits_table
from hwnas.search.quant_graph import (
    QuantHost,
    calibrate,
    export_quantized,
    insert_quantizers,
    quantizable_layers,
)

__all__ = ["RELAXATIONS", "SCALES", "BitSearch", "PrecisionSpace", "QLayer", "mixing"]

#: The phases that start with a calibration (:meth:`BitSearch.prepare`), in order.
_PHASES = {"warmup": 1, "search": 2}
#: Initial logit of the largest candidate over the others (softmax): P = 0.65 of 5.
_INIT_LOGIT = 2.0


class BitSearch(nn.Module):
    """The searched bit widths of a :class:`~hwnas.SearchModel` (``search.precision``).

    Built by :func:`hwnas.wrap` with ``precision=``. Holds the architecture parameters
    (``weight_arch`` ``(rows, Kw)``, ``act_arch`` ``(layers, Ka)``; one column under
    ``"ste"``), passes the mixing weights to the graph's quantisers
    (:mod:`hwnas.search.quant_graph`), costs the searched bits and exports the chosen ones.

    Example:
        >>> import torch, hwnas
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> s = hwnas.wrap(net, torch.rand(1, 4), costs=("bitops",),
        ...                precision=hwnas.PrecisionSpace(weight_bits=(2, 8)))
        >>> s.precision.table(s)[["layer", "weight_bits", "activation_bits"]].values.tolist()
        [['0', '8', 8], ['2', '8', 8]]
    """

    w_values: Tensor
    a_values: Tensor
    calibrated_phase: Tensor

    def __init__(self, space: PrecisionSpace, layers: Sequence[QLayer]) -> None:
        super().__init__()
        self.space = space
        self.layers = tuple(layers)
        n_rows = sum(q.rows for q in self.layers)
        self.register_buffer("w_values", torch.tensor([float(b) for b in space.weight_bits]))
        self.register_buffer("a_values",
                             torch.tensor([float(b) for b in space.activation_bits]))
        self.weight_arch = nn.Parameter(self._init_arch(n_rows, len(space.weight_bits),
                                                        space.weight_bits))
        self.act_arch = nn.Parameter(self._init_arch(len(self.layers),
                                                     len(space.activation_bits),
                                                     space.activation_bits))
        self.register_buffer("calibrated_phase", torch.zeros((), dtype=torch.long))
        #: Per-layer constants of the costs, per (device, dtype) (built once there).
        self.cost_constants: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    def _init_arch(self, rows: int, k: int, bits: tuple[int, ...]) -> Tensor:
        if self.space.relaxation == "ste":
            return torch.full((rows, 1), float(bits[-1]))
        out = torch.zeros(rows, k)
        out[:, -1] = _INIT_LOGIT
        return out

    def _apply(self, fn: Any, recurse: bool = True) -> BitSearch:
        super()._apply(fn, recurse)
        for p in (self.weight_arch, self.act_arch):  # float32 in any dtype, like the gates
            if p.dtype != torch.float32:
                p.data = p.data.float()
                if p.grad is not None:
                    p.grad = p.grad.float()
        for name in ("w_values", "a_values"):
            setattr(self, name, getattr(self, name).float())
        return self

    def prepare(self, phase: str, search: QuantHost, batches: Iterable[Any],
                device: torch.device | str | None = None) -> bool:
        """What :func:`hwnas.fit` calls when a phase starts: the first time the warm-up or
        the search starts (the state says, so a resumed run does not repeat it), calibrate
        on ``batches``. Returns whether it calibrated."""
        code = _PHASES.get(phase, 0)
        if code == 0 or int(self.calibrated_phase) >= code:
            return False
        self.calibrate(search, batches, device)
        self.calibrated_phase.fill_(code)
        return True

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        """The bit-width parameters (trained with the gates: arch learning rate, no decay)."""
        return iter([self.weight_arch, self.act_arch])

    # ------------------------------------------------------------------ mixing weights
    def mixes(self, how: str) -> tuple[Tensor, Tensor]:
        """Weight ``(rows, Kw)`` and activation ``(layers, Ka)`` mixing weights."""
        s = self.space
        return (mixing(self.weight_arch, self.w_values, s.relaxation, s.temperature, how),
                mixing(self.act_arch, self.a_values, s.relaxation, s.temperature, how))

    def values(self, mode: str) -> Tensor:
        """The flat mixing vector a forward passes to the graph (``hwnas_bits``):
        relaxed for ``"sample"``, the chosen bits for ``"deterministic"``, the largest
        candidates for ``"off"`` (the full model)."""
        if mode == "off":
            w = torch.zeros_like(self.weight_arch[:, :1]).expand(-1, len(self.w_values))
            a = torch.zeros_like(self.act_arch[:, :1]).expand(-1, len(self.a_values))
            w, a = (F.pad(t[:, 1:], (0, 1), value=1.0) for t in (w, a))  # the largest: 1
            return torch.cat([w.flatten(), a.flatten()]).float()
        how = "hard" if mode == "deterministic" else (  # the forward of "sample":
            "soft" if self.space.relaxation == "softmax" else "straight_through")
        w, a = self.mixes(how)
        return torch.cat([w.flatten(), a.flatten()])

    def choices(self) -> list[tuple[Tensor, int]]:
        """The exported bits of every quantised layer: ``(weight bits per output channel
        (int64, CPU), activation bits)``."""
        with torch.no_grad():
            w, a = self.mixes("hard")
            w_bits = (w.cpu() @ self.w_values.cpu()).round().long()
            a_bits = (a.cpu() @ self.a_values.cpu()).round().long().tolist()
        out = []
        for j, q in enumerate(self.layers):
            rows = w_bits[q.row0:q.row0 + q.rows]
            out.append((rows.expand(q.out_channels).clone() if q.rows == 1 else rows,
                        int(a_bits[j])))
        return out

    def candidate_index(self) -> tuple[Tensor, Tensor]:
        """Index of the chosen candidate per weight row and per layer (CPU)."""
        with torch.no_grad():
            w, a = self.mixes("hard")
        return w.argmax(-1).cpu(), a.argmax(-1).cpu()

    # ------------------------------------------------------------------ costs
    def owns(self, name: str) -> bool:
        """Whether ``name`` depends on the searched bits."""
        return name in BITS_METRICS

    def totals(self, search: QuantHost, names: Sequence[str], alive: Tensor,
               mode: str) -> Tensor:
        """``search.costs_of`` with the bit-dependent metrics at the searched bits."""
        own = [n for n in names if self.owns(n)]
        rest = [n for n in names if not self.owns(n)]
        values: dict[str, Tensor] = {}
        if rest:
            values.update(zip(rest, search.index.totals(rest, alive, search.target),
                              strict=True))
        if own:
            values.update(bit_costs(self, search, own, alive, mode))
        return torch.stack([values[n].to(alive.dtype) for n in names])

    def table(self, search: QuantHost) -> pd.DataFrame:
        """One row per quantised layer: kept channels, chosen bits, exact costs."""
        return bits_table(self, search)

    # ------------------------------------------------------------------ graph, data, export
    @classmethod
    def attach(cls, search: QuantHost, space: PrecisionSpace,
               example_inputs: tuple[Tensor, ...]) -> BitSearch:
        """Quantise the conv / linear modules of ``search`` (see
        :mod:`hwnas.search.quant_graph`) and set ``search.precision``; the weights'
        scales are calibrated, the activations' roughly, on ``example_inputs``."""
        space = space.for_target(search.target.quant_scales)
        found = quantizable_layers(search.gm, search.layer_infos)
        if not found:
            raise InvalidValueError("`precision` needs a conv or linear module to quantise "
                                    "(called once, zero padding), but the model has none")
        records = insert_quantizers(search.gm, found, space.weight_bits,
                                    space.activation_bits, space.per_channel, space.pow2)
        layers = [QLayer(k, t, out, row0, rows, bias) for k, t, out, row0, rows, bias in records]
        bs = cls(space, layers).to(device_of(search.gm))
        search.precision = bs
        calibrate(search, [(example_inputs, None)], 1, training=False)  # rough: one example
        return bs

    def calibrate(self, search: QuantHost, batches: Iterable[Any],
                  device: torch.device | str | None = None) -> None:
        """Set every quantiser's scales (and the activations' signedness) from data: the
        first ``calibration_batches`` of ``batches`` (``(inputs, targets)`` pairs) through
        the full model. :func:`hwnas.fit` calls it once, when the search phase starts."""
        calibrate(search, batches, self.space.calibration_batches, device)

    def export(self, search: QuantHost) -> fx.GraphModule:
        """The pruned model with BatchNorm folded and the chosen bits (quantised layers)."""
        return export_quantized(search, self)

    def extra_repr(self) -> str:
        s = self.space
        return (f"layers={len(self.layers)}, weight_bits={s.weight_bits}, "
                f"activation_bits={s.activation_bits}, per_channel={s.per_channel}, "
                f"scale={s.scale!r}, relaxation={s.relaxation!r}")
