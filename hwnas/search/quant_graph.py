"""The graph passes of a precision search: quantisers into the searched graph, out of it,
calibration on data, and the exported quantised model.

- :func:`insert_quantizers` wraps every conv / linear module of the searched graph (the
  user's layer, or the :class:`~hwnas.search.masks.WeightMasked` that gates it) in a
  :class:`SearchQuantized`, and adds the graph input ``hwnas_bits`` (the mixing weights of
  :meth:`BitSearch.values <hwnas.search.precision.BitSearch.values>`) after the gates. The
  weight is quantised after the gates are folded into it, so a gate value the export
  folds into the weights is quantised with them. ``None`` bits run the float layer.
- :func:`strip_quantizers` undoes it (the masks are then stripped as usual).
- :func:`calibrate` sets the quantisers' scales from data (least squared error).
- :func:`export_quantized` is what ``search.export()`` returns with a precision: the
  pruned model (:func:`hwnas.materialize` of the graph without quantisers), BatchNorm
  folded into the conv / linear before it, every quantised layer replaced by a
  :func:`~hwnas.search.quant_layers.quantize_layer` at its chosen bits with its learned scales
  (the weight scales of the kept channels, times ``|gamma / sigma|`` of a folded BatchNorm:
  per-channel quantisation commutes with that fold).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from hwnas._internal.devices import device_of, to_device
from hwnas._internal.modes import eval_mode
from hwnas.cost.target import Target
from hwnas.graph.ir import LayerInfo, kept_slots
from hwnas.search.alive import AliveIndex
from hwnas.search.bitspace import PrecisionSpace, QLayer
from hwnas.search.masks import BATCH_NORMS, GatedBatchNorm, WeightMasked
from hwnas.search.materialize import materialize
from hwnas.search.quant import ActCandidates, WeightCandidates, log2_of
from hwnas.search.quant_layers import quantizable, quantize_layer

__all__ = ["BITS_INPUT", "BitChoices", "QuantHost", "SearchQuantized", "calibrate",
           "export_quantized", "fold_batchnorm", "quantized_call",
           "insert_quantizers", "quantizable_layers", "strip_quantizers"]

#: Name of the graph input that carries the bit mixing weights.
BITS_INPUT = "hwnas_bits"
_SAMPLE = 1 << 14  # activation values kept per layer and batch for calibration


class QuantHost(Protocol):
    """What a precision search reads off the search it belongs to (a SearchModel)."""

    gm: fx.GraphModule
    layer_infos: list[LayerInfo]
    free_groups: list[int]
    training: bool
    target: Target
    index: AliveIndex
    precision: Any

    def keep_masks(self) -> dict[int, Tensor]: ...

    def channel_gate_values(self, group: int) -> Tensor: ...

    def alive_vector(self, mode: str) -> Tensor: ...


class BitChoices(Protocol):
    """What the costs and the export read off a precision search (a BitSearch)."""

    space: PrecisionSpace
    layers: tuple[QLayer, ...]
    cost_constants: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]]

    def mixes(self, how: str) -> tuple[Tensor, Tensor]: ...

    def choices(self) -> list[tuple[Tensor, int]]: ...

    def candidate_index(self) -> tuple[Tensor, Tensor]: ...


class SearchQuantized(nn.Module):
    """The quantisers of one conv / linear of the searched graph, and its quantised call.

    The graph calls :func:`quantized_call` with the layer's module (the user's layer, or the
    :class:`~hwnas.search.masks.WeightMasked` that gates it), this module, the input, the
    gates and ``bits``, the flat mixing vector; ``w_span`` / ``a_span`` locate this layer's
    weight rows ``(rows, Kw)`` and activation row ``(Ka,)`` in it.
    """

    def __init__(self, weights: WeightCandidates, acts: ActCandidates,
                 w_span: tuple[int, int, int], a_span: tuple[int, int]) -> None:
        super().__init__()
        self.weights, self.acts = weights, acts
        self.w_span, self.a_span = w_span, a_span

    def forward(self, module: nn.Module, x: Tensor, z: Tensor | None, bits: Tensor) -> Tensor:
        w0, w1, rows = self.w_span
        p_w = bits[w0:w1].reshape(rows, -1)
        p_a = bits[self.a_span[0]:self.a_span[1]]
        layer: Any = module.layer if isinstance(module, WeightMasked) else module
        weight = layer.weight
        if z is not None and isinstance(module, WeightMasked):
            shape = [1, -1] + [1] * (weight.dim() - 2)
            weight = weight * z.index_select(-1, module.index).to(weight.dtype).reshape(shape)
        xq = self.acts(x, p_a)
        wq = self.weights(weight, p_w)
        if isinstance(layer, nn.Linear):
            return F.linear(xq, wq, layer.bias)
        return layer._conv_forward(xq, wq, layer.bias)


def quantized_call(module: nn.Module, quant: SearchQuantized, x: Tensor, *rest: Any) -> Tensor:
    """What the searched graph calls for a quantised layer: ``rest`` is the gates (when the
    layer reads them) and the bits. Without bits (``None``: a graph whose masks were
    stripped, :func:`hwnas.search.surgery.unpruned`) the layer runs in float, as before."""
    *gates, bits = rest
    if bits is None:
        return module(x, *gates)
    return quant(module, x, gates[0] if gates else None, bits)


def _quant_path(j: int) -> str:
    return f"hwnas_quant_{j}"


def quantizable_layers(gm: fx.GraphModule, infos: list[LayerInfo]) -> list[tuple[int, fx.Node]]:
    """``(index in infos, node)`` of the conv / linear modules a precision search quantises:
    called once in the graph, a Linear or a Conv1d/2d/3d with zero padding."""
    uses: dict[str, int] = {}
    nodes = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
        nodes[node.name] = node
    found = []
    for k, info in enumerate(infos):
        node = nodes.get(info.name)
        if node is None or node.op != "call_module" or info.kind not in ("conv", "linear") \
                or uses[str(node.target)] != 1:
            continue
        if quantizable(_layer_of(gm, str(node.target))):
            found.append((k, node))
    return found


def _layer_of(gm: fx.GraphModule, target: str) -> Any:
    module = gm.get_submodule(target)
    return module.layer if isinstance(module, WeightMasked) else module


def insert_quantizers(gm: fx.GraphModule, found: list[tuple[int, fx.Node]],
                      w_bits: tuple[int, ...], a_bits: tuple[int, ...], per_channel: bool,
                      pow2: bool) -> list[tuple[int, str, int, int, int, bool]]:
    """Quantise the layers ``found`` (:func:`quantizable_layers`): each node becomes a
    :func:`quantized_call` of its module and a :class:`SearchQuantized` (``hwnas_quant_j``),
    with the graph input ``hwnas_bits`` (default None) last.

    Returns ``(k, target, out_channels, first weight row, weight rows, bias)`` per layer;
    ``bias``: the layer has one, or the export folds a BatchNorm into it (one then).
    """
    graph = gm.graph
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last):
        bits = graph.placeholder(BITS_INPUT, default_value=None)
    kw, ka = len(w_bits), len(a_bits)
    n_rows = sum(_layer_of(gm, str(n.target)).weight.shape[0] if per_channel else 1
                 for _, n in found)
    records, row = [], 0
    for j, (k, node) in enumerate(found):
        target = str(node.target)
        layer = _layer_of(gm, target)
        out = int(layer.weight.shape[0])
        rows = out if per_channel else 1
        weights = WeightCandidates(out, w_bits, pow2).to(layer.weight.device)
        acts = ActCandidates(a_bits, pow2).to(layer.weight.device)
        a0 = n_rows * kw + j * ka
        gm.add_submodule(_quant_path(j), SearchQuantized(
            weights, acts, (row * kw, (row + rows) * kw, rows), (a0, a0 + ka)))
        records.append((k, target, out, row, rows,
                        layer.bias is not None or _folds(gm, node)))
        with graph.inserting_before(node):
            module_node = graph.get_attr(target)
            quant_node = graph.get_attr(_quant_path(j))
        node.op, node.target = "call_function", quantized_call
        node.args = (module_node, quant_node, *node.args, bits)
        row += rows
    graph.lint()
    gm.recompile()
    return records


def _folds(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether :func:`fold_batchnorm` folds a BatchNorm into the layer of ``node``."""
    return _batchnorm_after(gm, node) is not None


def _batchnorm_after(gm: fx.GraphModule, node: fx.Node) -> Any:
    """The BatchNorm (eval statistics) that is the only reader of ``node``, else None."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.op != "call_module" or user.args[:1] != (node,):
        return None
    bn: Any = gm.get_submodule(str(user.target))
    bn = bn.layer if isinstance(bn, GatedBatchNorm) else bn
    if type(bn) not in BATCH_NORMS or bn.running_var is None or bn.running_mean is None:
        return None
    return bn


def strip_quantizers(gm: fx.GraphModule) -> fx.GraphModule:
    """Undo :func:`insert_quantizers` in place: each layer called as a module again, the
    quantisers and the bits input gone."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is quantized_call:
            module_node, quant_node, *args = node.args
            node.op, node.target = "call_module", module_node.target
            node.args = tuple(args[:-1])
            for attr in (module_node, quant_node):
                if not attr.users:
                    gm.graph.erase_node(attr)
    for name, module in list(gm.named_children()):
        if isinstance(module, SearchQuantized):
            gm.delete_submodule(name)
    for node in list(gm.graph.nodes):
        if node.op == "placeholder" and node.target == BITS_INPUT:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _broadcast(modules: list[SearchQuantized]) -> None:
    """Rank 0's scales and signedness on every rank (each calibrated on its own shard)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for m in modules:
        for t in (m.weights.scale_param, m.acts.scale_param, m.acts.signed):
            buf = t.data.cuda() if dist.get_backend() == "nccl" else t.data
            dist.broadcast(buf, src=0)
            t.data.copy_(buf)


@torch.no_grad()
def calibrate(search: QuantHost, batches: Iterable[Any], max_batches: int,
              device: torch.device | str | None = None, training: bool = True) -> None:
    """Scales of least squared error for every quantiser: the weights as they are, the
    activations on up to ``max_batches`` batches through the full model (every channel,
    the largest bits; in training mode by default, as training sees them: BatchNorm
    normalises with the batch's statistics, and its running statistics are put back). An
    activation that goes negative is quantised signed."""
    modules = [cast(SearchQuantized, search.gm.get_submodule(_quant_path(j)))
               for j in range(len(search.precision.layers))]
    model = cast(nn.Module, search)
    device = torch.device(device) if device is not None else device_of(model)
    seen: dict[int, list[Tensor]] = {id(m): [] for m in modules}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        flat = args[1].detach().float().flatten()  # (layer, x, gates, bits)
        step = max(1, flat.numel() // _SAMPLE)
        seen[id(module)].append(flat[::step].cpu())

    hooks = [m.register_forward_pre_hook(record) for m in modules]
    buffers = [(b, b.clone()) for b in model.buffers()]
    try:
        with eval_mode(model):
            model.train(training)
            for i, batch in enumerate(batches):
                if i >= max_batches:
                    break
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                inputs = to_device(inputs if isinstance(inputs, tuple) else (inputs,), device)
                model(*inputs, gates="off")
    finally:
        for h in hooks:
            h.remove()
        for b, saved in buffers:
            b.copy_(saved)
    for q, m in zip(search.precision.layers, modules, strict=True):
        m.weights.calibrate_(_layer_of(search.gm, q.target).weight.detach())
        if seen[id(m)]:
            m.acts.calibrate_(torch.cat(seen[id(m)]).to(m.acts.scale_param.device))
    _broadcast(modules)


def fold_batchnorm(gm: fx.GraphModule, targets: Iterable[str]) -> dict[str, Tensor]:
    """Fold a BatchNorm that is the only reader of a conv / linear in ``targets`` into it
    (eval statistics). Returns the per-output-channel factor ``gamma / sigma`` of every
    folded layer.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).eval()
        >>> gm = fx.symbolic_trace(net)
        >>> factors = fold_batchnorm(gm, ["0"])
        >>> [type(m).__name__ for m in gm.children()], factors["0"].shape
        (['Conv2d', 'ReLU'], torch.Size([2]))
    """
    factors = {}
    wanted = set(targets)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or str(node.target) not in wanted:
            continue
        bn = _batchnorm_after(gm, node)
        if bn is None:
            continue
        user = next(iter(node.users))
        layer: Any = gm.get_submodule(str(node.target))
        factor = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            factor = factor * bn.weight
        with eval_mode(layer), eval_mode(bn):
            fused = (fuse_linear_bn_eval(layer, bn) if isinstance(layer, nn.Linear)
                     else fuse_conv_bn_eval(layer, bn))
        fused.train(layer.training)
        gm.set_submodule(str(node.target), fused)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        gm.delete_submodule(str(user.target))
        factors[str(node.target)] = factor.detach()
    gm.graph.lint()
    gm.recompile()
    return factors


class _Plain:
    """The search as :func:`hwnas.materialize` reads it, with the quantisers stripped."""

    def __init__(self, search: QuantHost) -> None:
        self.gm = strip_quantizers(copy.deepcopy(search.gm))
        self.free_groups = search.free_groups
        self.training = search.training
        self.keep_masks = search.keep_masks
        self.channel_gate_values = search.channel_gate_values


def export_quantized(search: QuantHost, bs: BitChoices) -> fx.GraphModule:
    """The pruned, BatchNorm-folded model with each quantised layer at its chosen bits."""
    with torch.no_grad():
        keep = {g: m.cpu().numpy() for g, m in search.keep_masks().items()}
        pruned = materialize(_Plain(search))
        factors = fold_batchnorm(pruned, [q.target for q in bs.layers])
        w_index, a_index = bs.candidate_index()
        for q, (w_bits, a_bits) in zip(bs.layers, bs.choices(), strict=True):
            j = bs.layers.index(q)
            wrapper = search.gm.get_submodule(_quant_path(j))
            assert isinstance(wrapper, SearchQuantized)
            info = search.layer_infos[q.k]
            kept = np.ones(q.out_channels, dtype=bool)
            if info.out_slots is not None:
                kept = kept_slots(info.out_slots, keep)[: q.out_channels]
            kept_t = torch.from_numpy(kept)
            rows = w_index[q.row0:q.row0 + q.rows].expand(q.out_channels)
            w_log2 = log2_of(wrapper.weights.scale_param).cpu()
            w_log2 = w_log2[torch.arange(q.out_channels), rows][kept_t]
            if q.target in factors:
                w_log2 = w_log2 + torch.log2(factors[q.target].cpu().abs().clamp(min=1e-30))
            acts = wrapper.acts
            a_log2 = log2_of(acts.scale_param).cpu()[a_index[j]]
            layer = pruned.get_submodule(q.target)
            new = quantize_layer(layer, w_bits[kept_t], w_log2, a_bits, a_log2,
                                 bool(acts.signed.cpu() > 0), bs.space.pow2)
            pruned.set_submodule(q.target, new)
    pruned.recompile()
    pruned.train(search.training)
    return pruned
