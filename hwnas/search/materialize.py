"""materialize: the only bridge from the search to the pruning (:mod:`hwnas.pruning`).

It reads the keep masks and gate values off a :class:`~hwnas.search.model.SearchModel`,
removes the masks from a copy of its graph and cuts the channels with
:func:`hwnas.pruning.prune_graph`, which knows nothing of the search.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
import torch.fx as fx

from hwnas.errors import InvalidTypeError
from hwnas.pruning import prune_graph
from hwnas.search.surgery import strip_masks


class Searched(Protocol):
    """What :func:`materialize` reads off a search (a :class:`~hwnas.SearchModel`). Checked
    by :func:`is_searched`: ``isinstance`` with a runtime protocol looks attributes up
    statically from Python 3.12 on, and misses a module's submodules (``gm``)."""

    gm: fx.GraphModule
    free_groups: list[int]
    training: bool

    def keep_masks(self) -> dict[int, torch.Tensor]: ...

    def channel_gate_values(self, group: int) -> torch.Tensor: ...

__all__ = ["Searched", "is_searched", "materialize"]


def is_searched(obj: object) -> bool:
    """Whether ``obj`` offers what :class:`Searched` names (a SearchModel does)."""
    return (isinstance(getattr(obj, "gm", None), fx.GraphModule)
            and all(callable(getattr(obj, m, None)) for m in ("keep_masks", "channel_gate_values"))
            and hasattr(obj, "free_groups") and hasattr(obj, "training"))


def materialize(search: Searched) -> fx.GraphModule:
    """A plain model with the pruned channels of ``search`` physically removed.

    The deterministic (eval-mode) gates decide which channels stay; gate values below 1
    are folded into the weights of the layers that read the channels, so the result in
    eval mode computes what ``search`` computes in eval mode. Convs (depthwise included),
    linears, BatchNorm (running statistics kept) and GroupNorm are sliced (see
    :mod:`hwnas.pruning`), and Python constants that depend on channel counts (split sizes,
    view shapes) are rewritten. A group whose gates are all closed keeps one channel (its
    most likely one), so every layer stays valid; its gate value 0 is folded in, so it
    contributes nothing.

    The result is a ``torch.fx.GraphModule`` of plain ``torch.nn`` layers in the train/eval
    mode of ``search``: no hwnas code runs at inference time.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hwnas
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Conv2d(8, 4, 3))
        >>> search = hwnas.wrap(net, torch.randn(1, 1, 8, 8))
        >>> search.gate(1).set_deterministic_([1, 0] * 4)
        >>> pruned = hwnas.materialize(search)
        >>> pruned.get_submodule("0").out_channels
        4
    """
    if not is_searched(search):
        raise InvalidTypeError(f"`search` must be a SearchModel (from hwnas.wrap), but got "
                               f"{type(search).__name__}")
    with torch.no_grad():
        keep = {g: m.cpu().numpy() for g, m in search.keep_masks().items()}
        scale = {g: search.channel_gate_values(g).detach().cpu() for g in search.free_groups}
    gm = copy.deepcopy(search.gm)
    strip_masks(gm)
    pruned = prune_graph(gm, keep, scale, copy_graph=False)
    pruned.train(search.training)
    return pruned
