"""Physical channel removal on plain fx graphs: the slicer table and :func:`prune_graph`.

This package knows nothing of the search that chose the channels (:mod:`hwnas.search`
calls it through :func:`hwnas.materialize`).
"""

from hwnas.pruning.prune import SLICERS, prune_graph, register_slicer, slice_in, slice_out

__all__ = ["SLICERS", "prune_graph", "register_slicer", "slice_in", "slice_out"]
