"""The model graph: torch.fx trace, shapes and channel groups, written into ``node.meta``.

- :mod:`~hwnas.graph.trace`: the tracer (with an injected leaf predicate) and :func:`trace`;
- :mod:`~hwnas.graph.rules`: one channel rule per op family, :func:`register_channel_rule`;
- :mod:`~hwnas.graph.channel_prop`: the interpreter that runs the rules and records ids;
- :mod:`~hwnas.graph.groups`: channel classes to groups, LayerInfo into ``node.meta``.

The records themselves (:class:`~hwnas.ir.LayerInfo`, :class:`~hwnas.ir.ChannelGroup`,
:class:`~hwnas.ir.ChannelSlots`) live in :mod:`hwnas.ir`.
"""

from hwnas.graph.channel_prop import Chan, ChannelProp
from hwnas.graph.rules import register_channel_rule
from hwnas.graph.trace import channel_groups, layers, trace

__all__ = ["Chan", "ChannelProp", "channel_groups", "layers", "register_channel_rule", "trace"]
