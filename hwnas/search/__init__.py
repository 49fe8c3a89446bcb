"""Channel search: a traced model with L0 gates on its free channel groups.

- :mod:`~hwnas.search.masks`: the mask modules and the graph surgery that inserts them;
- :mod:`~hwnas.search.alive`: :class:`AliveIndex`, the flat gate layout, keep-one sets,
  the fast cost path and the target projection;
- :mod:`~hwnas.search.model`: :class:`SearchModel`, :func:`wrap` and :func:`materialize`.

``search`` imports :mod:`hwnas.pruning` (the cutting table), never the reverse.
"""

from hwnas.search.alive import AliveIndex
from hwnas.search.masks import ChannelMask, GatedBatchNorm, WeightMasked
from hwnas.search.model import SearchModel, materialize, wrap

__all__ = ["AliveIndex", "ChannelMask", "GatedBatchNorm", "SearchModel", "WeightMasked",
           "materialize", "wrap"]
