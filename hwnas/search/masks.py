"""Mask modules: what the graph surgery (:mod:`hwnas.search.surgery`) inserts.

The searched graph takes the gate values as an explicit input after the model's own,
``hwnas_gates``: a flat vector ``z`` (or a ``(batch, n)`` matrix for per-example gates) with
one entry per gate and a trailing constant 1 that frozen channels read. Every mask holds the
index of the entry each of its channels reads and multiplies its channels by ``z[index]``.
Nothing is shared between masks or kept between calls: calling the graph without gate
values is an error, and ``None`` runs the unmasked network on purpose (the warm-up does).

Gates mask the *inputs* of the layers that read a group's channels (convs and linears,
depthwise convs excepted: their outputs are the same channels, masked downstream). A pruned
channel therefore contributes exactly nothing wherever it is read, whatever sits between its
producer and its readers (BatchNorm's shift, activations with f(0) != 0, residual adds):
this is what removing the channel does, so the pruned model computes the same function as
the search model in eval mode. The readers are:

- conv / linear modules: :class:`WeightMasked` (the gate folded into the weight) or a
  :class:`ChannelMask` on their input (per-example gates);
- functional layers on parameters (``F.linear(x, w)``, a Swin attention's weights):
  :class:`ParamMask` multiplies the parameter where the layer reads the channel;
- products of activations (``q @ k.transpose(-2, -1)``): a :class:`ChannelMask` on one
  operand;
- ``nn.MultiheadAttention``: :class:`MaskedAttention` masks its projection weights;
- normalisations over the channel dim (LayerNorm, GroupNorm): :class:`MaskedNorm` computes
  the statistics over the kept channels only. It reads a second input, ``hwnas_keep``
  (1 for a kept channel, 0 for a pruned one), since a kept channel can have gate value 0.

One shortcut, for speed: where a conv or linear reads its input from a BatchNorm through
ReLU, pooling, dropout or flatten only, and nothing else reads that BatchNorm or the steps in
between, the gates scale the BatchNorm's affine instead (:class:`GatedBatchNorm`). These
steps are positively homogeneous (``relu(g * x) == g * relu(x)`` for ``g >= 0``, gates lie in
[0, 1]), so the reader sees the same masked input and every gradient is the same; the mask
costs a product over the channels instead of two passes over the weight (the ratio is in
``reports/overhead.md``). Per-example gates keep the masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BATCH_NORMS", "GATES_INPUT", "KEEP_INPUT", "ChannelMask", "GatedBatchNorm",
           "MaskedAttention", "MaskedNorm", "ParamMask", "WeightMasked"]

#: Name of the graph input that carries the gate values.
GATES_INPUT = "hwnas_gates"
#: Name of the graph input that carries the keep flags (only when a norm needs them).
KEEP_INPUT = "hwnas_keep"



def _span(index: torch.Tensor) -> tuple[int, int] | None:
    """``(start, length)`` when ``index`` is the run ``start, start + 1, ...``, else None."""
    if index.numel() == 0:
        return None
    start = int(index[0])
    run = torch.arange(start, start + index.numel(), dtype=index.dtype, device=index.device)
    return (start, index.numel()) if torch.equal(index, run) else None


class GateReader(nn.Module):
    """A module that reads entries of the gate vector through index buffers. Where an index
    is a contiguous run (a group's own gates, in order), the entries are a slice, a view:
    one kernel less, forward and backward, than a gather (``reports/gpu.md``)."""

    def _index(self, name: str, index: torch.Tensor) -> None:
        self.register_buffer(name, index.clone(), persistent=False)
        spans: dict[str, tuple[int, int] | None] = self.__dict__.setdefault("_spans", {})
        spans[name] = _span(index)

    def _take(self, z: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
        span = self.__dict__.get("_spans", {}).get(name)
        values = z.narrow(-1, *span) if span else z.index_select(-1, getattr(self, name))
        return values.to(dtype)


class ChannelMask(GateReader):
    """Multiplies its input's channels along ``dim`` by their gate values.

    Args:
        index: For each channel, the entry of the gate vector it reads.
        dim: The channel dim of the masked tensor.
    """

    index: torch.Tensor

    def __init__(self, index: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self._index("index", index)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if z is None:
            return x
        values = self._take(z, "index", x.dtype)
        shape = [1] * x.dim()
        shape[self.dim % x.dim()] = values.shape[-1]
        if values.dim() == 2:  # one gate draw per example
            shape[0] = values.shape[0]
        return x * values.reshape(shape)


class WeightMasked(GateReader):
    """A conv or linear layer whose weight's input channels are scaled by their gates.

    conv(x * z) == conv_{W * z}(x), and a weight is far smaller than an activation, so with
    one gate draw per batch the mask is folded into the weight. ``layer`` is the user's
    layer, unchanged; :func:`~hwnas.search.surgery.strip_masks` puts it back. (A grouped
    conv's weight holds the input channels of one group: the tracer ties every group to the
    same gates.)
    """

    index: torch.Tensor

    def __init__(self, layer: nn.Linear | nn.modules.conv._ConvNd, index: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self._index("index", index[: layer.weight.shape[1]])
        self._shape = [1, -1] + [1] * (layer.weight.dim() - 2)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        layer = self.layer
        weight = layer.weight
        if z is not None:
            weight = weight * self._take(z, "index", weight.dtype).reshape(self._shape)
        if type(layer).forward not in _BASE_FORWARDS:  # a subclass that pads first (timm)
            return torch.func.functional_call(layer, {"weight": weight}, (x,))
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)  # type: ignore[operator]


#: The forwards WeightMasked computes itself; a layer subclass runs its own.
_BASE_FORWARDS = (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


class GatedBatchNorm(GateReader):
    """A BatchNorm whose output channels are scaled by their gates through its affine.

    ``gated(x, z) == z[index] * bn(x)`` along the channel dim, computed as one
    ``F.batch_norm`` with weight ``gamma * z[index]`` and bias ``beta * z[index]`` (``z[index]``
    alone where the norm has no affine). The running statistics are those of ``bn(x)``:
    they see the input, not the gates. ``layer`` is the user's BatchNorm, unchanged;
    :func:`~hwnas.search.surgery.strip_masks` puts it back.
    """

    index: torch.Tensor

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm, index: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self._index("index", index)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        bn = self.layer
        if z is None:
            return bn(x)
        g = self._take(z, "index", x.dtype)
        if type(bn) not in BATCH_NORMS:  # replaced since (e.g. by a SyncBatchNorm): its own
            return bn(x) * g.reshape([1, -1] + [1] * (x.dim() - 2))  # forward, then the gates
        weight = g if bn.weight is None else bn.weight * g
        bias = None if bn.bias is None else bn.bias * g
        bn._check_input_dim(x)
        # what _BatchNorm.forward does with its own affine, here with the gated one
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # a cumulative moving average
                momentum = 1.0 / float(bn.num_batches_tracked)
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        keep_stats = not bn.training or bn.track_running_stats
        return F.batch_norm(x, bn.running_mean if keep_stats else None,
                            bn.running_var if keep_stats else None, weight, bias,
                            batch_stats, momentum, bn.eps)


class ParamMask(GateReader):
    """Multiplies a parameter by the gate values of the channels a layer reads through it.

    Args:
        dims: ``(dim, index)`` pairs: along ``dim``, entry ``i`` is multiplied by
            ``z[index[i]]`` (the constant 1 where the layer does not read a channel).
    """

    def __init__(self, dims: list[tuple[int, torch.Tensor]]) -> None:
        super().__init__()
        self.dims = [d for d, _ in dims]
        for k, (_, index) in enumerate(dims):
            self._index(f"index{k}", index)

    def forward(self, p: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if z is None:
            return p
        for k, dim in enumerate(self.dims):
            shape = [1] * p.dim()
            shape[dim] = -1
            p = p * self._take(z, f"index{k}", p.dtype).reshape(shape)
        return p


class MaskedAttention(GateReader):
    """``nn.MultiheadAttention`` with its input channels (which are also its q/k/v and output
    channels, tied across heads) masked in its projection weights: the input columns of the
    in-projection, the q rows (the scores contract q with k) and the output projection's
    columns (it reads v)."""

    index: torch.Tensor

    def __init__(self, layer: nn.MultiheadAttention, index: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self._index("index", index)

    def forward(self, *args: Any, hwnas_gates: torch.Tensor | None = None, **kwargs: Any) -> Any:
        layer = self.layer
        if hwnas_gates is None:
            return layer(*args, **kwargs)
        w = layer.in_proj_weight
        v = self._take(hwnas_gates, "index", w.dtype)
        rows = torch.cat([v, v.new_ones(2 * v.shape[0])])
        params = {"in_proj_weight": w * v[None, :] * rows[:, None],
                  "out_proj.weight": layer.out_proj.weight * v[None, :]}
        if layer.in_proj_bias is not None:
            params["in_proj_bias"] = layer.in_proj_bias * rows
        return torch.func.functional_call(layer, params, args, kwargs, strict=False)


class MaskedNorm(GateReader):
    """LayerNorm / GroupNorm over the channel dim with statistics of the kept channels only.

    A pruned channel takes no part in the mean and variance, so the search model normalises
    like the pruned model. Wraps a norm module (``layer``) or replaces a functional call
    (then the weight and bias are inputs).

    Args:
        index: Gate entry of each channel along ``dim``.
        dim: The channel dim of the input.
        start: First normalised dim (LayerNorm), or None for GroupNorm (over dim 1).
        groups: GroupNorm groups.
        eps: The norm's epsilon.
        layer: The norm module, or None for a functional call.
    """

    index: torch.Tensor

    def __init__(self, index: torch.Tensor, dim: int, start: int | None, groups: int,
                 eps: float, layer: nn.Module | None = None) -> None:
        super().__init__()
        self.dim, self.start, self.groups, self.eps = dim, start, groups, eps
        self.layer = layer
        self._index("index", index)

    def forward(self, x: torch.Tensor, *rest: Any) -> torch.Tensor:
        if self.layer is not None:
            weight, bias = getattr(self.layer, "weight", None), getattr(self.layer, "bias", None)
            keep = rest[0]
        else:
            weight, bias, keep = rest
        if keep is None:
            return self._plain(x, weight, bias)
        # statistics in float32 at least, whatever the activations' dtype (bf16 sums of
        # many channels lose the variance), the result in the activations' dtype
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        m = self._take(keep, "index", x.dtype)
        if self.start is None:
            return self._group(x, m, weight, bias).to(dtype)
        return self._layer(x, m, self.start, weight, bias).to(dtype)

    def _layer(self, x: torch.Tensor, m: torch.Tensor, start: int, weight: Any,
               bias: Any) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = m.shape[-1]
        if m.dim() == 2:
            shape[0] = m.shape[0]
        m = m.reshape(shape)
        dims = tuple(range(start, x.dim()))
        per = math.prod(x.shape[d] for d in dims if d != self.dim)
        count = (m.sum(dims, keepdim=True) * per).clamp(min=1.0)
        mean = (x * m).sum(dims, keepdim=True) / count
        var = (((x - mean) * m) ** 2).sum(dims, keepdim=True) / count
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if weight is not None:
            y = y * weight
        return y + bias if bias is not None else y

    def _group(self, x: torch.Tensor, m: torch.Tensor, weight: Any, bias: Any) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        g = self.groups
        xg = x.reshape(b, g, c // g, -1)
        mg = m.reshape(-1, g, c // g, 1)
        count = (mg.sum((2, 3), keepdim=True) * xg.shape[-1]).clamp(min=1.0)
        mean = (xg * mg).sum((2, 3), keepdim=True) / count
        var = (((xg - mean) * mg) ** 2).sum((2, 3), keepdim=True) / count
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        shape = [1, c] + [1] * (x.dim() - 2)
        if weight is not None:
            y = y * weight.reshape(shape)
        return y + bias.reshape(shape) if bias is not None else y

    def _plain(self, x: torch.Tensor, weight: Any, bias: Any) -> torch.Tensor:
        if self.start is None:
            return F.group_norm(x, self.groups, weight, bias, self.eps)
        return F.layer_norm(x, tuple(x.shape[self.start:]), weight, bias, self.eps)


#: The BatchNorms a gate folds into (their subclasses, e.g. SyncBatchNorm, keep the masks).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
