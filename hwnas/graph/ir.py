"""The typed records hwnas writes into a torch.fx graph. Imports nothing of hwnas.

The intermediate representation is the ``torch.fx.GraphModule`` itself; every node carries:

- ``node.meta[LAYER_KEY]``: a :class:`LayerInfo` (kind, module, shapes, channel slots);
- ``node.meta[CHANNELS_KEY]``: the channels its output carries, a :class:`ChannelSlots`,
  a tuple of them (one per piece) for a node that returns several tensors (split, chunk),
  or ``None`` when the output carries no tracked channels;
- ``node.meta[PARAMS_KEY]`` (``get_attr`` nodes only): a :class:`ParamSlots` when the
  parameter or buffer the node reads has channel dims (a functional layer's weight, a
  layer scale, a position embedding): they are sliced with their channels;

and ``gm.meta[GROUPS_KEY]`` holds the model's :class:`ChannelGroup` s.

A channel *slot* is a ``(group, position)`` pair: position ``p`` of channel group ``g``.
Slot arrays have shape ``(2, ...)``: row 0 the groups, row 1 the positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch import nn

__all__ = [
    "CHANNELS_KEY",
    "GROUPS_KEY",
    "LAYER_KEY",
    "PARAMS_KEY",
    "ChannelGroup",
    "ChannelSlots",
    "LayerInfo",
    "ParamSlots",
    "kept_slots",
]

LAYER_KEY = "hwnas"
CHANNELS_KEY = "hwnas_chan"
GROUPS_KEY = "hwnas_groups"
PARAMS_KEY = "hwnas_param"


@dataclass(frozen=True)
class ChannelSlots:
    """The channel slots a tensor carries.

    Attributes:
        dim: The first tensor dim the slots cover.
        slots: Int array ``(2, *sizes)``: ``slots[:, i0, i1, ...]`` is the ``(group,
            position)`` of index ``(i0, i1, ...)`` along dims ``dim, dim + 1, ...``. It has
            one size dim when the channels lie along one tensor dim (the usual case).
    """

    dim: int
    slots: np.ndarray = field(compare=False, repr=False)

    @property
    def flat(self) -> bool:
        """True when the channels lie along one tensor dim."""
        return self.slots.ndim == 2

    @property
    def size(self) -> int:
        """Number of channel entries along the covered dims."""
        return int(math.prod(self.slots.shape[1:]))


#: What ``node.meta[CHANNELS_KEY]`` holds.
ChannelRecord = ChannelSlots | tuple[ChannelSlots | None, ...] | None


@dataclass(frozen=True)
class ParamSlots:
    """The channel slots along the dims of a parameter or buffer (a ``get_attr`` target).

    Attributes:
        target: The attribute path (``node.target`` of the ``get_attr`` nodes).
        dims: The tensor dims that carry channels.
        slots: Per dim, the ``(group, position)`` of each index (int array ``(2, size)``).
        scaled: Per dim, a bool per index: the layer that reads the parameter reads the
            channel there, so the channel's gate value is folded into the parameter at that
            index (a functional linear's input dim), or not (its output dim, a layer scale).
    """

    target: str
    dims: tuple[int, ...]
    slots: tuple[np.ndarray, ...] = field(compare=False, repr=False)
    scaled: tuple[np.ndarray, ...] = field(compare=False, repr=False)


@dataclass(frozen=True)
class LayerInfo:
    """What hwnas knows about one fx node (stored in ``node.meta[LAYER_KEY]``).

    Attributes:
        name: The fx node name.
        target: Module path for ``call_module`` nodes, else the function/method name.
        kind: ``"conv"``, ``"linear"``, ``"matmul"`` (matmul, bmm, einsum), ``"attention"``
            (scaled dot-product or multi-head attention), ``"norm"``, ``"layer"`` (another
            leaf module), ``"elementwise"``, ``"pool"``, ``"reshape"``, ``"cat"``,
            ``"split"``, ``"reduce"``, ``"input"``, ``"output"``, ``"attr"`` or ``"other"``.
        module_type: The module class for ``call_module`` nodes, else ``None``.
        module: The module itself (not compared, not printed).
        op: For ``call_function`` / ``call_method`` layers, the function or method name
            called (the key of their cost functions); else ``None``.
        in_channels: Channels (features) the layer reads, or ``None``.
        out_channels: Channels (features) the layer writes, or ``None``.
        kernel: Kernel size (convs), else ``()``.
        stride: Stride (convs), else ``()``.
        groups: Conv groups (1 otherwise).
        depthwise: True for a conv with ``groups == in_channels == out_channels``.
        bias: Whether the layer adds a bias.
        out_shape: Output shape including the batch dim (``None`` for non-tensors).
        positions: Output positions per example at which each output channel is computed
            (conv: product of output spatial dims; linear: product of token dims; else 1).
        in_slots: For each input channel, its ``(group, position)`` (int array of shape
            ``(2, in_channels)``), or ``None`` when the node reads no channels (or reads a
            dim that carries no tracked channels: ``in_channels`` then holds its size).
        out_slots: Same for the output channels.
        frozen: Why a group this node touches cannot be pruned, or ``None``.
        reads: ``(argument index, dim)`` of the activation whose channels (``in_slots``) a
            functional layer reads: the search masks it there (a matmul operand, the input
            of a masked normalisation), or ``None``.
        scaled_params: Targets of the parameters the layer reads its input channels with
            (``F.linear``'s weight): their :class:`ParamSlots` say where the gates fold in.
        param_positions: Weight elements per (input, output) channel pair of a matmul on a
            parameter, or per channel of a functional normalisation's affine (0: none).
        attn_positions: Query x key positions of an attention layer (per example).
        fixed_weight: A functional conv / linear whose weight is a buffer or a constant (a
            blur filter): it costs MACs but no parameters.
    """

    name: str
    target: str
    kind: str
    module_type: type | None = None
    module: nn.Module | None = field(default=None, compare=False, repr=False)
    op: object = field(default=None, compare=False, repr=False)
    in_channels: int | None = None
    out_channels: int | None = None
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    groups: int = 1
    depthwise: bool = False
    bias: bool = False
    out_shape: tuple[int, ...] | None = None
    positions: int = 1
    in_slots: np.ndarray | None = field(default=None, compare=False, repr=False)
    out_slots: np.ndarray | None = field(default=None, compare=False, repr=False)
    frozen: str | None = None
    reads: tuple[int, int] | None = None
    scaled_params: tuple[str, ...] = ()
    param_positions: int = 0
    attn_positions: int = 0
    fixed_weight: bool = False

    @property
    def label(self) -> str:
        """How tables name the layer: its module path, or for a function call its node name
        (``matmul_1``: unique, unlike the function name in ``target``)."""
        return self.target if self.module_type is not None else self.name

    @property
    def cost_key(self) -> object:
        """What cost functions are registered under: the module class, else the op."""
        return self.module_type if self.module_type is not None else self.op

    @property
    def kernel_size(self) -> int:
        """Product of the kernel dims (1 for non-convs)."""
        return math.prod(self.kernel) if self.kernel else 1


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together (one gate per group in a search).

    Attributes:
        index: Group id, the ``group`` in ``LayerInfo.in_slots`` / ``out_slots``.
        size: Number of independent channels (gate entries) in the group.
        producers: Nodes whose output channels belong to the group.
        consumers: Nodes that read the group's channels as inputs.
        frozen: Why the group cannot be pruned exactly, or ``None`` when it is free.
    """

    index: int
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    frozen: str | None = None


def kept_slots(slots: np.ndarray, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Boolean per slot (same shape as ``slots[0]``): is the slot's channel kept.

    ``keep`` maps a group to its boolean keep mask; groups not in it keep every channel.

    Example:
        >>> slots = np.array([[0, 0, 1], [0, 1, 0]])
        >>> kept_slots(slots, {0: np.array([True, False])}).tolist()
        [True, False, True]
    """
    out = np.ones(slots.shape[1:], dtype=bool)
    for g, mask in keep.items():
        sel = slots[0] == g
        out[sel] = mask[slots[1][sel]]
    return out
