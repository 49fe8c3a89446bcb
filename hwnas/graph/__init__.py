"""The model graph: torch.fx trace, shapes and channel groups, written into ``node.meta``.

- :mod:`~hwnas.graph.trace`: the tracer (with an injected leaf predicate) and :func:`trace`;
- :mod:`~hwnas.graph.rules`: one channel rule per op family (layers, elementwise ops) and
  the dispatch; :mod:`~hwnas.graph.rules.shape` (reshapes, permutes, indexing, cat,
  split) and :mod:`~hwnas.graph.rules.ops` (functional linear/conv, matmul, einsum,
  attention, functional norms) hold the rest; :mod:`~hwnas.graph.rules.base` the two rule
  tables and :func:`register_channel_rule`;
- :mod:`~hwnas.graph.channel_prop`: the interpreter that runs the rules and records ids;
- :mod:`~hwnas.graph.groups`: channel classes to groups, LayerInfo into ``node.meta``.

What is pruned where the structure constrains it (each choice keeps the export exact):

- grouped convs keep every group the same width: the channel index within a group is one
  channel in every group (input and output), so the conv keeps its ``groups``;
- a reshape that splits the channel dim (heads, a channel shuffle) ties the index within
  a group across groups the same way; fixed permutations (shuffles) are then followed
  exactly through reshapes and permutes;
- attention prunes the per-head dim, the same in every head; where the attention's inner
  width is its input width (``nn.MultiheadAttention``, torchvision's Swin) those are the
  input's channels;
- LayerNorm / GroupNorm over the channel dim are masked norms during the search
  (statistics over the kept channels); GroupNorm ties the index within a group;
- parameters read in arithmetic (a layer scale, a position embedding, a class token, a
  functional layer's weight) take the channels they meet and are sliced with them.

The records themselves (:class:`~hwnas.graph.ir.LayerInfo`, :class:`~hwnas.graph.ir.ChannelGroup`,
:class:`~hwnas.graph.ir.ChannelSlots`) live in :mod:`hwnas.graph.ir`.
"""

from hwnas.graph.channel_prop import Chan, ChannelProp
from hwnas.graph.rules import register_channel_rule
from hwnas.graph.trace import channel_groups, layers, trace

__all__ = ["Chan", "ChannelProp", "channel_groups", "layers", "register_channel_rule", "trace"]
