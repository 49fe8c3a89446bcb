"""From channel classes to channel groups: the records :func:`hwnas.graph.trace` writes.

After :class:`~hwnas.graph.channel_prop.ChannelProp` has run, ids joined by rules form
channel classes (one class is one channel of the pruned model). Classes created by the same
producer belong to one :class:`~hwnas.graph.ir.ChannelGroup` (a conv's output channels are one
group; a residual add joins the groups of its operands). Each class becomes one position
of its group, and every node gets its :class:`~hwnas.graph.ir.LayerInfo` and
:class:`~hwnas.graph.ir.ChannelSlots` in ``node.meta``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx

from hwnas.graph.channel_prop import Chan, ChannelProp, UnionFind
from hwnas.graph.ir import (
    CHANNELS_KEY,
    LAYER_KEY,
    PARAMS_KEY,
    ChannelGroup,
    ChannelRecord,
    ChannelSlots,
    LayerInfo,
    ParamSlots,
)

__all__ = ["finalize", "unknown_ops_note"]


def _numbering(prop: ChannelProp) -> tuple[np.ndarray, np.ndarray, dict[int, list[int]],
                                           dict[int, int]]:
    """Group and position of every id; the classes of each group; group index of roots."""
    uf = prop.uf
    n_ids = len(uf.parent)
    cls = np.array([uf.find(i) for i in range(n_ids)], dtype=np.int64)
    guf = UnionFind()
    guf.add(n_ids)
    for _, ids in prop.blocks:  # classes that share a producer belong to one group
        roots = np.unique(cls[ids])
        for r in roots[1:]:
            guf.union(int(roots[0]), int(r))
    members: dict[int, list[int]] = {}
    for r in np.unique(cls):
        members.setdefault(guf.find(int(r)), []).append(int(r))
    group_index = {g: k for k, g in enumerate(sorted(members))}
    group_of_root: dict[int, int] = {}
    pos_of_root: dict[int, int] = {}
    for g, group_roots in members.items():
        for p, r in enumerate(sorted(group_roots)):
            pos_of_root[r], group_of_root[r] = p, group_index[g]
    group = np.array([group_of_root[int(c)] for c in cls], dtype=np.int64)
    position = np.array([pos_of_root[int(c)] for c in cls], dtype=np.int64)
    return group, position, members, group_index


def _record(chan: Any, group: np.ndarray, position: np.ndarray) -> ChannelRecord:
    if isinstance(chan, Chan):
        return ChannelSlots(chan.dim, np.stack([group[chan.ids], position[chan.ids]]))
    if isinstance(chan, list):
        return tuple(_record(c, group, position) for c in chan)  # type: ignore[misc]
    return None


def finalize(gm: fx.GraphModule, prop: ChannelProp) -> tuple[ChannelGroup, ...]:
    """Number the groups; write LayerInfo and ChannelSlots into every node's meta."""
    group, position, members, group_index = _numbering(prop)
    frozen: dict[int, str] = {}
    for i, why in sorted(prop.frozen.items()):
        frozen.setdefault(int(group[i]), why)
    producers: dict[int, list[str]] = {k: [] for k in range(len(members))}
    consumers: dict[int, list[str]] = {k: [] for k in range(len(members))}
    for name, ids in prop.blocks:
        for g in np.unique(group[ids]):
            producers[int(g)].append(name)

    def slots(ids: np.ndarray | None) -> np.ndarray | None:
        return None if ids is None else np.stack([group[ids], position[ids]])

    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        ids_in, ids_out = prop.slots.get(node.name, (None, None))
        if ids_in is not None:
            for g in np.unique(group[ids_in]):
                consumers[int(g)].append(node.name)
        node.meta[CHANNELS_KEY] = _record(prop.chan.get(node), group, position)
        own = ids_out if ids_out is not None else ids_in
        touched = [] if own is None else [int(g) for g in np.unique(group[own])]
        reason = next((frozen[g] for g in touched if g in frozen), None)
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        in_slots, out_slots = slots(ids_in), slots(ids_out)
        shape = prop.shapes.get(node)
        fields = dict(prop.fields.get(node.name, {}))
        # a dim without tracked channels (a matmul over tokens) is recorded by its size
        in_channels = fields.pop("in_channels", None)
        out_channels = fields.pop("out_channels", None)
        if node.name in prop.scaled:
            fields["scaled_params"] = tuple(dict.fromkeys(prop.scaled[node.name]))
        node.meta[LAYER_KEY] = LayerInfo(
            name=node.name,
            target=str(node.target) if node.op == "call_module" else _target_name(node),
            kind=prop.kinds.get(node.name, "other"),
            module_type=type(module) if module is not None else None,
            module=module,
            op=node.target if node.op in ("call_function", "call_method") else None,
            out_shape=shape,
            in_slots=in_slots,
            out_slots=out_slots,
            frozen=reason,
            in_channels=in_channels if in_slots is None else in_slots.shape[1],
            out_channels=out_channels if out_slots is None else out_slots.shape[1],
            **fields,
        )
        if node.op == "get_attr" and str(node.target) in prop.params:
            dims = prop.params[str(node.target)]
            node.meta[PARAMS_KEY] = ParamSlots(
                target=str(node.target), dims=tuple(sorted(dims)),
                slots=tuple(np.stack([group[dims[d][0]], position[dims[d][0]]])
                            for d in sorted(dims)),
                scaled=tuple(dims[d][1] for d in sorted(dims)))
    return tuple(
        ChannelGroup(index=k, size=len(members[g]), producers=tuple(dict.fromkeys(producers[k])),
                     consumers=tuple(dict.fromkeys(consumers[k])), frozen=frozen.get(k))
        for g, k in group_index.items()
    )


def _target_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


#: Frozen reasons that come from ops hwnas has no rule for (not from the model's structure).
_UNKNOWN = ("unknown op ", "custom autograd.Function ")


def unknown_ops_note(groups: tuple[ChannelGroup, ...] | list[ChannelGroup]) -> str | None:
    """One line naming the ops without a channel rule that froze groups and the channels
    they froze, or None when there are none.

    Example:
        >>> g = ChannelGroup(3, 16, ("conv",), ("gt",), "unknown op 'gt' at node gt")
        >>> unknown_ops_note([g])
        "16 channels in 1 group are frozen by ops without a channel rule: unknown op 'gt' \
at node gt (16 channels); register one with hwnas.register_channel_rule, or see \
search.summary(by='group')"
    """
    frozen = [g for g in groups if g.frozen and g.frozen.startswith(_UNKNOWN)]
    if not frozen:
        return None
    by_reason: dict[str, int] = {}
    for g in frozen:
        by_reason[g.frozen or ""] = by_reason.get(g.frozen or "", 0) + g.size
    listed = "; ".join(f"{why} ({n} channels)" for why, n in by_reason.items())
    total = sum(g.size for g in frozen)
    return (f"{total} channels in {len(frozen)} group{'s' * (len(frozen) > 1)} are frozen by "
            f"ops without a channel rule: {listed}; register one with "
            "hwnas.register_channel_rule, or see search.summary(by='group')")
