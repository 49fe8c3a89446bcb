"""Channel search: a traced model with L0 gates on its free channel groups.

- :mod:`~hwnas.search.gates`: hard-concrete gates (formulas and the one gate API);
- :mod:`~hwnas.search.l0`: connection-level L0 masks on any module (:class:`L0`);
- :mod:`~hwnas.search.masks`: the mask modules; :mod:`~hwnas.search.surgery` the graph
  surgery that inserts and removes them;
- :mod:`~hwnas.search.alive`: :class:`AliveIndex`, the flat gate layout, keep-one sets,
  the fast cost path and the target projection;
- :mod:`~hwnas.search.model`: :class:`SearchModel`; :mod:`~hwnas.search.wrap`:
  :func:`wrap`; :mod:`~hwnas.search.materialize`: :func:`materialize`, the only bridge to
  :mod:`hwnas.pruning` (the cutting table), which never imports the search.
"""

from hwnas.search.alive import AliveIndex
from hwnas.search.gates import GateSlice, HardConcreteGate
from hwnas.search.l0 import L0, L0Mask
from hwnas.search.masks import ChannelMask, GatedBatchNorm, WeightMasked
from hwnas.search.materialize import materialize
from hwnas.search.model import SearchModel
from hwnas.search.wrap import wrap

__all__ = ["L0", "AliveIndex", "ChannelMask", "GateSlice", "GatedBatchNorm", "HardConcreteGate",
           "L0Mask", "SearchModel", "WeightMasked", "materialize", "wrap"]
