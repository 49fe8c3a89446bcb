"""Physical channel removal on plain fx graphs: the slicer table and :func:`prune_graph`.

- :mod:`~hwnas.pruning.slicers`: the cutting table (paired ``slice_out`` / ``slice_in`` per
  layer type) and :func:`register_slicer`;
- :mod:`~hwnas.pruning.prune`: :func:`prune_graph`, which walks a traced graph and cuts.

This package knows nothing of the search that chose the channels (:mod:`hwnas.search`
calls it through :func:`hwnas.materialize`).
"""

from hwnas.pruning.prune import prune_graph
from hwnas.pruning.slicers import SLICERS, register_slicer, slice_in, slice_out

__all__ = ["SLICERS", "prune_graph", "register_slicer", "slice_in", "slice_out"]
