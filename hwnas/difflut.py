"""Differentiable LUT networks: LUT nodes, input encoders, a GroupSum head, LUT cost, export.

A LUT node reads ``k`` binary inputs and stores a truth table of ``2^k`` entries. During
training the table holds logits, the node's value is ``sigmoid`` of the table entry, and
inputs in ``[0, 1]`` are interpolated multilinearly between table entries, so the output is
differentiable in the table and in the inputs. In binary mode (the default in ``eval()``)
inputs are thresholded at 0.5 and the node returns the bit ``logit > 0`` (equivalently
``sigmoid(logit) > 0.5``): the binary network is a pure truth table of bits, which is what the
ONNX and JSON exports write.

Bit order everywhere: input ``j`` of a node is bit ``j`` of the table address,
``address = sum_j bit_j * 2^j`` (least significant bit first).

Pieces:

- :class:`LUTLayer` (random or learnable connections), :class:`GroupSum`,
  :class:`ThermometerEncoder` and :class:`GaussianThermometerEncoder`.
- :func:`l_regularizer`: functional sensitivity ``S_p = (1/k) sum_i E|g(z) - g(z^(i))|^p``,
  registered as ``"l"``, ``"functional"``, ``"l1"``, ``"l2"``, ``"l_input_based"``, ``"l_exact"``.
- ``luts`` cost for LUT layers, encoders and GroupSum, ``params`` for LUT layers (registered
  in :mod:`hwnas.cost`); :func:`input_dependence`, :func:`effective_inputs`,
  :func:`used_nodes`, :func:`lut_report` for pruned, model-level counts. Formulas and sources:
  ``cost_models/DIFFLUT.md``.
- :func:`binary_inference_module`, :func:`export_lut_onnx`, :func:`export_truth_tables`,
  :func:`read_truth_tables`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hwnas.difflut import GroupSum, LUTLayer, ThermometerEncoder
    >>> x = torch.rand(32, 4)
    >>> model = nn.Sequential(
    ...     ThermometerEncoder(3).fit(x), LUTLayer(12, 20, k=3, seed=0), GroupSum(2, tau=1.0)
    ... )
    >>> model.train()(x).shape
    torch.Size([32, 2])
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hwnas import cost as _cost
from hwnas.cost.targets import LutModel, Target, load_target
from hwnas.regularizers.registry import register as _register_regularizer

if TYPE_CHECKING:
    import pandas as pd

    from hwnas.ir import LayerInfo

__all__ = [
    "GaussianThermometerEncoder",
    "GroupSum",
    "LUTLayer",
    "ThermometerEncoder",
    "binary_inference_module",
    "effective_inputs",
    "export_lut_onnx",
    "export_truth_tables",
    "groupsum_luts",
    "input_dependence",
    "l1_regularizer",
    "l2_regularizer",
    "l_exact_regularizer",
    "l_input_based_regularizer",
    "l_regularizer",
    "lut_report",
    "read_truth_tables",
    "set_binary_",
    "table_luts",
    "used_nodes",
]

_CONNECTIONS = ("random", "learnable")
_MAX_K = 12
# Elements of the largest interpolation intermediate before LUTLayer splits nodes into chunks.
_DEFAULT_MAX_ELEMENTS = 2**23


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        where = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be an integer {where}, but got {value!r}")
    return value


def _bit_weights(k: int, device: torch.device | None = None) -> Tensor:
    """``[1, 2, 4, ..., 2^(k-1)]`` as int64: address = sum_j bit_j * 2^j."""
    return torch.pow(2, torch.arange(k, device=device, dtype=torch.int64))


def _pack_bits(bits: Tensor) -> Tensor:
    """Address of each bit vector on the last dim (LSB first), int64, one dim fewer."""
    return (bits.to(torch.int64) * _bit_weights(bits.shape[-1], bits.device)).sum(-1)


def _fold(table: Tensor, x: Tensor) -> Tensor:
    """Multilinear interpolation of ``table`` (N, 2^k) at ``x`` (B, N, k): (B, N).

    Folds one input at a time, most significant first: the table's two halves along the
    top address bit are blended with ``lerp`` by that input, halving the last dim each step.
    ``torch.lerp`` returns its end points exactly at weights 0 and 1, so binary inputs read
    the table exactly.
    """
    t = table
    for i in range(x.shape[-1] - 1, -1, -1):
        half = t.shape[-1] // 2
        t = torch.lerp(t[..., :half], t[..., half:], x[..., i : i + 1])
    return t.squeeze(-1)


def _multilinear(table: Tensor, x: Tensor, max_elements: int) -> Tensor:
    """:func:`_fold` over chunks of nodes so the largest intermediate stays under a bound."""
    batch, nodes, k = x.shape
    per_node = batch * 2 ** (k - 1)
    if per_node * nodes <= max_elements:
        return _fold(table, x)
    step = max(1, max_elements // per_node)
    grad = torch.is_grad_enabled() and (table.requires_grad or x.requires_grad)
    outs = []
    for start in range(0, nodes, step):
        t, xs = table[start : start + step], x[:, start : start + step]
        if grad:  # recompute the chunk in backward instead of keeping its intermediates
            outs.append(checkpoint(_fold, t, xs, use_reentrant=False))
        else:
            outs.append(_fold(t, xs))
    return torch.cat(outs, dim=1)


def _covering_connections(in_features: int, nodes: int, k: int, gen: torch.Generator) -> Tensor:
    """Random (nodes, k) input indices, distinct within a node when ``in_features >= k``.

    Inputs are drawn from a stream of random permutations of all inputs, so every input is
    read at least once when ``nodes * k >= in_features``; an index already taken by the node
    is put back for the next node.
    """
    stream: deque[int] = deque()
    rows = []
    for _ in range(nodes):
        row: list[int] = []
        skipped: list[int] = []
        while len(row) < k:
            if not stream:
                stream.extend(torch.randperm(in_features, generator=gen).tolist())
            idx = stream.popleft()
            if idx in row and in_features >= k:
                skipped.append(idx)
            else:
                row.append(idx)
        stream.extendleft(reversed(skipped))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64).reshape(nodes, k)


# --------------------------------------------------------------------------- layers


class LUTLayer(nn.Module):
    """A layer of ``out_features`` LUT nodes, each with ``k`` inputs and a ``2^k`` table.

    Table: ``self.logits`` (nodes, 2^k); a node's soft value at address ``a`` is
    ``sigmoid(logits[:, a])`` and its binary value is ``logits[:, a] > 0``.

    Soft forward (training, or ``binary=False``): each node gathers its ``k`` inputs
    ``x`` in ``[0, 1]`` and returns the multilinear interpolation
    ``sum_a sigmoid(T[a]) * prod_j x_j^{a_j} (1 - x_j)^{1 - a_j}``, computed by folding one
    input at a time (never a (batch, nodes, 2^k, k) tensor). Peak extra memory of one
    forward+backward: about ``2 * batch * nodes * 2^(k-1)`` float32 values (the first fold's
    output plus the halves kept for backward, ``~2 * batch * nodes * 2^k * 4`` bytes); when
    ``batch * nodes * 2^(k-1)`` exceeds ``max_elements`` the nodes are processed in chunks
    (recomputed in backward with activation checkpointing), which bounds the peak at about
    ``4 * max_elements`` floats (128 MiB at the default ``2^23``). At k=8, batch 256 and
    2000 nodes the unchunked intermediate would be 65.5 M floats (262 MB).

    Binary forward (``eval()`` unless ``binary=False`` was set): inputs are thresholded
    (``x >= 0.5``), packed into an address (input ``j`` is bit ``j``) and the output is the
    table bit, as float 0/1.

    Connections:

    - ``"random"``: fixed indices (buffer ``connections``, (nodes, k)), drawn from a stream
      of random permutations of the inputs so that every input is used when
      ``nodes * k >= in_features``; distinct within a node when ``in_features >= k``.
    - ``"learnable"``: logits ``connection_logits`` (nodes, k, in_features), one softmax over
      candidate inputs per node input, with a straight-through hard selection: the forward
      reads the argmax input (as in binary mode and export), the backward uses the softmax's
      gradient. Initialised to favour a random covering assignment. Costs
      ``batch * nodes * k * in_features`` MACs per forward.

    Args:
        in_features: Inputs of the layer.
        out_features: Number of LUT nodes.
        k: Inputs per node, 1 to 12.
        connections: ``"random"`` or ``"learnable"``.
        seed: Seed of the random connections and table init (``None``: torch's global RNG).
        init_std: Standard deviation of the normal init of the table logits.
        record_inputs: Keep the binarised bits each node saw in the last training forward as
            ``self.last_inputs`` (bool, (batch, nodes, k), detached) for
            :func:`l_regularizer`'s input-based mode.
        max_elements: Largest interpolation intermediate before chunking over nodes.

    Example:
        >>> import torch
        >>> layer = LUTLayer(8, 5, k=3, seed=0)
        >>> x = torch.rand(4, 8, requires_grad=True)
        >>> y = layer.train()(x)
        >>> y.sum().backward()
        >>> y.shape, layer.logits.grad.shape, x.grad.shape
        (torch.Size([4, 5]), torch.Size([5, 8]), torch.Size([4, 8]))
        >>> sorted(layer.eval()(x).unique().tolist()) in ([0.0], [1.0], [0.0, 1.0])
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        k: int,
        connections: str = "random",
        seed: int | None = None,
        init_std: float = 1.0,
        record_inputs: bool = False,
        max_elements: int = _DEFAULT_MAX_ELEMENTS,
    ) -> None:
        super().__init__()
        self.in_features = _check_int("in_features", in_features, 1)
        self.out_features = _check_int("out_features", out_features, 1)
        self.k = _check_int("k", k, 1, _MAX_K)
        if connections not in _CONNECTIONS:
            raise ValueError(
                f"`connections` must be one of {_CONNECTIONS}, but got {connections!r}"
            )
        if not isinstance(init_std, (int, float)) or init_std < 0:
            raise ValueError(f"`init_std` must be a number >= 0, but got {init_std!r}")
        self.max_elements = _check_int("max_elements", max_elements, 1)
        self.connection_mode = connections
        self.record_inputs = bool(record_inputs)
        self.binary: bool | None = None
        self.last_inputs: Tensor | None = None

        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        conn = _covering_connections(in_features, out_features, k, gen)
        self.logits = nn.Parameter(torch.randn(out_features, 2**k, generator=gen) * init_std)
        if connections == "random":
            self.register_buffer("connections", conn)
            self.connection_logits = None
        else:
            self.connections = None
            init = torch.randn(out_features, k, in_features, generator=gen) * 0.01
            init.scatter_(2, conn.unsqueeze(-1), 1.0)
            self.connection_logits = nn.Parameter(init)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
            f"connections={self.connection_mode!r}"
        )

    def table(self) -> Tensor:
        """Soft table values ``sigmoid(logits)``, (nodes, 2^k), differentiable."""
        return torch.sigmoid(self.logits)

    def truth_table(self) -> Tensor:
        """Binarised table ``logits > 0``, bool (nodes, 2^k): the node's function."""
        return self.logits.detach() > 0

    def connection_indices(self) -> Tensor:
        """The input index read by each node input, int64 (nodes, k) (argmax if learnable)."""
        if self.connection_logits is not None:
            return self.connection_logits.detach().argmax(-1)
        assert self.connections is not None
        return self.connections

    def is_binary(self) -> bool:
        """Whether forward runs in binary mode now (``binary``, else ``not training``)."""
        return (not self.training) if self.binary is None else self.binary

    def gather_inputs(self, x: Tensor) -> Tensor:
        """Each node's ``k`` inputs: (batch, in_features) -> (batch, nodes, k)."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"LUTLayer expects inputs of shape (batch, {self.in_features}), "
                f"but got {tuple(x.shape)}"
            )
        idx = self.connection_indices()
        hard = x.index_select(1, idx.reshape(-1)).reshape(x.shape[0], self.out_features, self.k)
        if self.connection_logits is not None and not self.is_binary():
            # straight-through: the value is exactly the argmax input (``s - s`` is exactly 0);
            # the connection logits get the softmax mixture's gradient, x the hard one's.
            soft = torch.softmax(self.connection_logits, dim=-1)
            mixed = torch.einsum("bi,nki->bnk", x.detach(), soft)
            return hard + (mixed - mixed.detach())
        return hard

    def forward(self, x: Tensor) -> Tensor:
        sel = self.gather_inputs(x)
        if self.is_binary():
            address = _pack_bits(sel >= 0.5)
            bits = self.truth_table().to(x.dtype)
            return bits.gather(1, address.t()).t()
        if self.record_inputs and self.training:
            self.last_inputs = (sel >= 0.5).detach()
        return _multilinear(self.table().to(x.dtype), sel, self.max_elements)


class GroupSum(nn.Module):
    """Classifier head: splits the features into ``k_classes`` equal groups and sums each.

    ``scores[:, c] = sum(x[:, c*m : (c+1)*m]) / tau`` with ``m = features / k_classes``;
    on binary inputs this is a popcount per class.

    Args:
        k_classes: Number of classes (groups).
        tau: Temperature dividing the sums (softens the logits for cross-entropy).

    Example:
        >>> import torch
        >>> GroupSum(2, tau=2.0)(torch.tensor([[1.0, 1.0, 0.0, 1.0]]))
        tensor([[1.0000, 0.5000]])
    """

    def __init__(self, k_classes: int, tau: float = 1.0) -> None:
        super().__init__()
        self.k_classes = _check_int("k_classes", k_classes, 1)
        if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not tau > 0:
            raise ValueError(f"`tau` must be a number > 0, but got {tau!r}")
        self.tau = float(tau)

    def extra_repr(self) -> str:
        return f"k_classes={self.k_classes}, tau={self.tau}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] % self.k_classes:
            raise ValueError(
                f"GroupSum expects (batch, features) with features divisible by "
                f"k_classes={self.k_classes}, but got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.k_classes, -1).sum(-1) / self.tau


class ThermometerEncoder(nn.Module):
    """Thermometer code: bit ``j`` of feature ``f`` is ``x_f > thresholds[f, j]``.

    Thresholds are fitted per feature by :meth:`fit`: ``"quantile"`` places them at the
    data quantiles ``j / (num_bits + 1)``, ``"uniform"`` spaces them evenly between the
    feature's minimum and maximum (at ``min + j * (max - min) / (num_bits + 1)``). The output
    is binary in every mode (float 0/1), flattened to (batch, features * num_bits) with the
    bits of one feature adjacent.

    Args:
        num_bits: Thresholds (output bits) per feature.
        method: ``"quantile"`` or ``"uniform"``.

    Example:
        >>> import torch
        >>> enc = ThermometerEncoder(3, method="uniform").fit(torch.tensor([[0.0], [4.0]]))
        >>> enc.thresholds
        tensor([[1., 2., 3.]])
        >>> enc(torch.tensor([[2.5]]))
        tensor([[1., 1., 0.]])
    """

    methods: tuple[str, ...] = ("quantile", "uniform")

    def __init__(self, num_bits: int, method: str = "quantile") -> None:
        super().__init__()
        self.num_bits = _check_int("num_bits", num_bits, 1)
        if method not in self.methods:
            raise ValueError(f"`method` must be one of {self.methods}, but got {method!r}")
        self.method = method
        self.register_buffer("thresholds", torch.empty(0, num_bits))

    @property
    def in_features(self) -> int:
        """Number of encoded features (0 before :meth:`fit`)."""
        return int(self.thresholds.shape[0])

    @property
    def out_features(self) -> int:
        """Output bits: ``in_features * num_bits``."""
        return self.in_features * self.num_bits

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}, method={self.method!r}, in_features={self.in_features}"

    def _fit_thresholds(self, x: Tensor) -> Tensor:
        levels = torch.arange(1, self.num_bits + 1, dtype=x.dtype) / (self.num_bits + 1)
        if self.method == "quantile":
            return torch.quantile(x, levels, dim=0).t()
        low, high = x.min(0).values, x.max(0).values
        return low[:, None] + levels[None, :] * (high - low)[:, None]

    def fit(self, x: Tensor) -> ThermometerEncoder:
        """Fit the thresholds on data ``x`` (samples, features...) and return ``self``."""
        x = torch.as_tensor(x).detach().float().flatten(1)
        if x.shape[0] < 1:
            raise ValueError(f"`x` must hold at least one sample, but got shape {tuple(x.shape)}")
        self.thresholds = self._fit_thresholds(x).contiguous()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.in_features == 0:
            raise ValueError(f"{type(self).__name__} is not fitted; call .fit(data) first")
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} was fitted on {self.in_features} features, "
                f"but got inputs of shape {tuple(x.shape)}"
            )
        bits = x.unsqueeze(-1) > self.thresholds.to(x.dtype)
        return bits.to(x.dtype).reshape(x.shape[0], -1)


class GaussianThermometerEncoder(ThermometerEncoder):
    """Thermometer code with thresholds at the quantiles of a per-feature Gaussian fit.

    ``thresholds[f, j] = mean_f + std_f * Phi^-1(j / (num_bits + 1))``: dense near the mean,
    robust to ties in the data (where empirical quantiles coincide). Same output and
    hardware as :class:`ThermometerEncoder`.

    Example:
        >>> import torch
        >>> enc = GaussianThermometerEncoder(3).fit(torch.tensor([[-1.0], [1.0]]))
        >>> [round(v, 3) for v in enc.thresholds[0].tolist()]
        [-0.674, 0.0, 0.674]
    """

    methods = ("gaussian",)

    def __init__(self, num_bits: int) -> None:
        super().__init__(num_bits, method="gaussian")

    def _fit_thresholds(self, x: Tensor) -> Tensor:
        levels = torch.arange(1, self.num_bits + 1, dtype=torch.float64) / (self.num_bits + 1)
        z = torch.special.ndtri(levels).to(x.dtype)
        mean = x.mean(0)
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(mean)
        return mean[:, None] + std[:, None] * z[None, :]


_ENCODERS = (ThermometerEncoder,)


def set_binary_(model: nn.Module, binary: bool | None) -> nn.Module:
    """Set the forward mode of every :class:`LUTLayer` in ``model`` in place.

    ``True``: binary (thresholded inputs, table bits); ``False``: soft (multilinear) even in
    ``eval()``; ``None``: binary exactly when not training (the default).

    Example:
        >>> import torch
        >>> layer = set_binary_(LUTLayer(4, 2, k=2, seed=0), False).eval()
        >>> bool(((layer(torch.rand(3, 4)) > 0) & (layer(torch.rand(3, 4)) < 1)).all())
        True
    """
    if binary not in (True, False, None):
        raise ValueError(f"`binary` must be True, False or None, but got {binary!r}")
    for m in model.modules():
        if isinstance(m, LUTLayer):
            m.binary = binary
    return model


def _lut_layers(model: nn.Module) -> list[LUTLayer]:
    layers = [m for m in model.modules() if isinstance(m, LUTLayer)]
    if not layers:
        raise ValueError(f"no LUTLayer in {type(model).__name__}")
    return layers


# --------------------------------------------------------------------------- sensitivity


def _pairwise_sensitivity(values: Tensor, flips: Tensor, p: float) -> Tensor:
    """Mean over samples and bits of ``|values - flips|^p`` -> per node (nodes,)."""
    return (values - flips).abs().pow(p).mean(dim=(0, 2))


def _exact_sensitivity(table: Tensor, k: int, p: float) -> Tensor:
    """Closed form over all 2^k addresses: per node ``(1/k) sum_i mean_z |T[z]-T[z^e_i]|^p``.

    For bit ``i`` the table, viewed as (nodes, 2^(k-1-i), 2, 2^i), pairs every address with
    bit ``i`` clear with its flip; both orders of a pair give the same ``|.|^p``, so the mean
    over the 2^(k-1) pairs equals the mean over all 2^k addresses.
    """
    nodes = table.shape[0]
    terms = []
    for i in range(k):
        v = table.reshape(nodes, 2 ** (k - 1 - i), 2, 2**i)
        terms.append((v[:, :, 1] - v[:, :, 0]).abs().pow(p).flatten(1).mean(1))
    return torch.stack(terms, 1).mean(1)


def _node_bits_from(layer: LUTLayer, inputs: Tensor) -> Tensor:
    """Binarised per-node bits (batch, nodes, k) from node bits or layer inputs."""
    if inputs.dim() == 3:
        if tuple(inputs.shape[1:]) != (layer.out_features, layer.k):
            raise ValueError(
                f"`inputs` of shape (batch, nodes, k) must be (batch, {layer.out_features}, "
                f"{layer.k}), but got {tuple(inputs.shape)}"
            )
        return inputs >= 0.5 if inputs.dtype != torch.bool else inputs
    if inputs.dim() == 2:
        idx = layer.connection_indices().to(inputs.device)
        sel = inputs.index_select(1, idx.reshape(-1)).reshape(inputs.shape[0], -1, layer.k)
        return sel >= 0.5
    raise ValueError(
        "`inputs` must be the node bits (batch, nodes, k) or the layer inputs "
        f"(batch, in_features), but got shape {tuple(inputs.shape)}"
    )


def _layer_sensitivity(
    layer: LUTLayer, p: float, num_samples: int, inputs: Tensor | None, mode: str | None
) -> Tensor:
    if inputs is None and mode != "exact":
        inputs = layer.last_inputs
    if mode is None:
        mode = "input" if inputs is not None else "exact"
    k, table = layer.k, layer.table()
    if mode == "exact":
        return _exact_sensitivity(table, k, p)
    if mode == "input":
        if inputs is None:
            raise ValueError(
                "mode='input' needs `inputs` or a LUTLayer with record_inputs=True that has "
                "run a training forward"
            )
        bits = _node_bits_from(layer, inputs.to(table.device))
        address = _pack_bits(bits).t()  # (nodes, batch)
    else:  # random
        address = torch.randint(0, 2**k, (table.shape[0], num_samples), device=table.device)
    flips = address.unsqueeze(-1) ^ _bit_weights(k, table.device)  # (nodes, samples, k)
    values = table.gather(1, address).unsqueeze(-1)  # (nodes, samples, 1)
    neighbours = table.gather(1, flips.flatten(1)).reshape(flips.shape)
    return _pairwise_sensitivity(values.transpose(0, 1), neighbours.transpose(0, 1), p)


_MODES = ("random", "input", "exact")
_REDUCTIONS = ("mean", "sum")


@_register_regularizer("l", "functional")
def l_regularizer(
    node: nn.Module,
    p: float = 2,
    num_samples: int = 64,
    inputs: Tensor | None = None,
    mode: str | None = None,
    reduction: str = "mean",
    epoch: int | None = None,
    n_epochs: int | None = None,
) -> Tensor:
    """Functional sensitivity penalty of LUT nodes (DiffLUT's L regularizer).

    For a node ``g`` with ``k`` binary inputs and ``z^(i)`` the input ``z`` with bit ``i``
    flipped, ``S_p(g) = (1/k) sum_i E_z |g(z) - g(z^(i))|^p`` (divided by ``k`` once), where
    ``g(z) = sigmoid(logits[z])`` is the node's soft table value. It is differentiable in the
    table; small values push the binarised table towards ignoring inputs, which prunes them
    (see :func:`effective_inputs`). Modes of the expectation over ``z``:

    - ``"random"``: ``num_samples`` addresses drawn uniformly per node (legacy; stochastic).
    - ``"input"``: the bits each node saw in the batch (``inputs``, or the layer's
      ``last_inputs`` recorded with ``record_inputs=True``) and their ``k`` Hamming
      neighbours, all read from the table in one batched gather.
    - ``"exact"``: all ``2^k`` addresses in closed form over the table.
    - ``None``: ``"input"`` when inputs are available, else ``"exact"``.

    Args:
        node: A :class:`LUTLayer` or a module containing LUT layers (summed over them).
        p: Exponent, > 0 (use ``p >= 1`` for finite gradients at equal entries).
        num_samples: Samples per node in random mode.
        inputs: For a single layer: its node bits (batch, nodes, k) or its layer inputs
            (batch, in_features), thresholded at 0.5.
        mode: ``"random"``, ``"input"``, ``"exact"`` or ``None``.
        reduction: ``"mean"`` over all nodes of all layers, or ``"sum"``.
        epoch: Ignored (the regularizer protocol's signature).
        n_epochs: Ignored.

    Returns:
        A scalar tensor, differentiable in the tables.

    Example:
        >>> import torch
        >>> layer = LUTLayer(6, 4, k=3, seed=0)
        >>> with torch.no_grad():
        ...     _ = layer.logits.fill_(-20.0)   # constant nodes: no sensitivity
        >>> l_regularizer(layer, p=2, mode="exact").item()
        0.0
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not p > 0:
        raise ValueError(f"`p` must be a number > 0, but got {p!r}")
    _check_int("num_samples", num_samples, 1)
    if mode not in _MODES + (None,):
        raise ValueError(f"`mode` must be one of {_MODES} or None, but got {mode!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, but got {reduction!r}")
    layers = [node] if isinstance(node, LUTLayer) else _lut_layers(node)
    if inputs is not None and len(layers) != 1:
        raise ValueError(
            "`inputs` can only be given for a single LUTLayer; for a model, "
            "build its layers with record_inputs=True"
        )
    per_node = torch.cat([_layer_sensitivity(m, p, num_samples, inputs, mode) for m in layers])
    return per_node.mean() if reduction == "mean" else per_node.sum()


@_register_regularizer("l1")
def l1_regularizer(node: nn.Module, **kwargs: Any) -> Tensor:
    """:func:`l_regularizer` with ``p=1``.

    Example:
        >>> l1_regularizer(LUTLayer(4, 2, k=2, seed=0), mode="exact").item() > 0
        True
    """
    return l_regularizer(node, p=1, **kwargs)


@_register_regularizer("l2")
def l2_regularizer(node: nn.Module, **kwargs: Any) -> Tensor:
    """:func:`l_regularizer` with ``p=2``.

    Example:
        >>> l2_regularizer(LUTLayer(4, 2, k=2, seed=0), mode="exact").item() > 0
        True
    """
    return l_regularizer(node, p=2, **kwargs)


@_register_regularizer("l_input_based")
def l_input_based_regularizer(node: nn.Module, **kwargs: Any) -> Tensor:
    """:func:`l_regularizer` with ``mode="input"``.

    Example:
        >>> import torch
        >>> layer = LUTLayer(4, 2, k=2, seed=0, record_inputs=True)
        >>> _ = layer.train()(torch.rand(8, 4))
        >>> l_input_based_regularizer(layer).shape
        torch.Size([])
    """
    return l_regularizer(node, mode="input", **kwargs)


@_register_regularizer("l_exact")
def l_exact_regularizer(node: nn.Module, **kwargs: Any) -> Tensor:
    """:func:`l_regularizer` with ``mode="exact"``.

    Example:
        >>> l_exact_regularizer(LUTLayer(4, 2, k=2, seed=0)).item() >= 0
        True
    """
    return l_regularizer(node, mode="exact", **kwargs)


# --------------------------------------------------------------------------- pruning analysis


def _dependence_with_duplicates(row: Tensor, sources: list[int]) -> Tensor:
    """Dependence (k,) of one node whose inputs repeat a source.

    The node's function of its distinct sources is tabulated; each source it depends on is
    marked on the first position that reads it.
    """
    k = len(sources)
    distinct: list[int] = []
    slot = []
    for s in sources:
        if s not in distinct:
            distinct.append(s)
        slot.append(distinct.index(s))
    m = len(distinct)
    r = torch.arange(2**m)
    source_bits = (r[:, None] >> torch.arange(m)) & 1  # (2^m, m)
    address = (source_bits[:, slot] << torch.arange(k)).sum(1)
    t = row[address]
    dep = torch.zeros(k, dtype=torch.bool)
    for j in range(m):
        if bool((t != t[r ^ (1 << j)]).any()):
            dep[slot.index(j)] = True
    return dep


def input_dependence(layer: LUTLayer) -> Tensor:
    """Which inputs each node's binarised table depends on: bool (nodes, k).

    Input ``i`` counts when flipping bit ``i`` changes the table bit at some address. When a
    node reads the same source on several inputs (possible with learnable connections), the
    node's function of its distinct sources is analysed and each needed source is marked
    once.

    Example:
        >>> import torch
        >>> layer = LUTLayer(3, 1, k=2, seed=0)
        >>> with torch.no_grad():   # table of input 0 alone: addresses 1 and 3 are on
        ...     _ = layer.logits.copy_(torch.tensor([[-1.0, 1.0, -1.0, 1.0]]))
        >>> input_dependence(layer).tolist()
        [[True, False]]
    """
    bits, k = layer.truth_table().cpu(), layer.k
    nodes = bits.shape[0]
    dep = []
    for i in range(k):
        v = bits.reshape(nodes, 2 ** (k - 1 - i), 2, 2**i)
        dep.append((v[:, :, 0] != v[:, :, 1]).flatten(1).any(1))
    out = torch.stack(dep, 1)
    conn = layer.connection_indices().cpu()
    if k > 1:
        srt = conn.sort(1).values
        for n in (srt[:, 1:] == srt[:, :-1]).any(1).nonzero().flatten().tolist():
            out[n] = _dependence_with_duplicates(bits[n], conn[n].tolist())
    return out


def effective_inputs(layer: LUTLayer) -> Tensor:
    """Effective number of inputs of each node (pruned k), int64 (nodes,).

    Example:
        >>> import torch
        >>> layer = LUTLayer(3, 1, k=2, seed=0)
        >>> with torch.no_grad():
        ...     _ = layer.logits.copy_(torch.tensor([[-1.0, 1.0, -1.0, 1.0]]))
        >>> effective_inputs(layer).tolist()
        [1]
    """
    return input_dependence(layer).sum(1)


def used_nodes(model: nn.Module) -> list[Tensor]:
    """Per LUT layer of ``model``, which nodes some consumer reads: bool (nodes,) each.

    LUT layers are taken in ``model.modules()`` order as a chain (each reads the previous
    one's output). Every node of the last layer is used (the GroupSum head reads them all);
    a node of an earlier layer is used when a used node of the next layer depends on it
    (:func:`input_dependence`). If consecutive layers do not chain (``in_features`` differs
    from the previous ``out_features``) the earlier layer's nodes all count as used.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> first, last = LUTLayer(4, 3, k=2, seed=0), LUTLayer(3, 1, k=2, seed=1)
        >>> with torch.no_grad():   # the last node is a constant: it reads nothing
        ...     _ = last.logits.fill_(1.0)
        >>> [u.tolist() for u in used_nodes(nn.Sequential(first, last))]
        [[False, False, False], [True]]
    """
    layers = _lut_layers(model)
    used = [torch.ones(m.out_features, dtype=torch.bool) for m in layers]
    for j in range(len(layers) - 1, 0, -1):
        if layers[j].in_features == layers[j - 1].out_features:
            used[j - 1] = _read_inputs(layers[j], used[j])
    return used


def _read_inputs(layer: LUTLayer, used: Tensor) -> Tensor:
    """Which of ``layer``'s inputs some used node depends on: bool (in_features,)."""
    dep = input_dependence(layer) & used[:, None]
    mask = torch.zeros(layer.in_features, dtype=torch.bool)
    mask[layer.connection_indices().cpu()[dep]] = True
    return mask


# --------------------------------------------------------------------------- LUT cost


def _lut_model(target: Target) -> LutModel:
    return _cost.formulas.lut_model(target)


def table_luts(k_eff: Tensor | int, target: Target | str) -> Tensor:
    """Physical LUTs of a 1-bit truth table with ``k_eff`` inputs on ``target`` (elementwise).

    ``0`` for a constant (``k_eff == 0``: a tie-off, no LUT); ``1`` when
    ``k_eff <= target.lut_inputs``; otherwise, with ``X = k_eff`` and ``L = lut_inputs``:

    - ``table == "logicnets"``: ``(2^(X-4) - (-1)^X) / 3`` (LogicNets LUTCost with Y = 1,
      Umuroglu et al., FPL 2020);
    - ``table == "shannon"``: ``2^(X-L+1) - 1``: Shannon expansion into ``2^(X-L)`` L-input
      leaves plus ``2^(X-L) - 1`` 2:1 muxes of one LUT each (``2^(X-3) - 1`` for LUT4).

    Example:
        >>> table_luts(torch.tensor([0, 4, 6, 7, 8]), "xc7-lut6").tolist()
        [0.0, 1.0, 1.0, 3.0, 5.0]
        >>> table_luts(torch.tensor([4, 5, 6, 7, 8]), "ice40-lut4").tolist()
        [1.0, 3.0, 7.0, 15.0, 31.0]
    """
    target = load_target(target)
    model = _lut_model(target)
    x = torch.as_tensor(k_eff).to(torch.float64)
    if bool((x < 0).any()):
        raise ValueError(f"`k_eff` must be >= 0, but got {k_eff!r}")
    if model.table == "logicnets":
        sign = torch.where(torch.remainder(x, 2) == 0, 1.0, -1.0).to(torch.float64)
        big = (torch.pow(2.0, x - 4) - sign) / 3
    else:
        big = torch.pow(2.0, x - target.lut_inputs + 1) - 1
    one = torch.ones_like(x)
    out = torch.where(x == 0, torch.zeros_like(x), torch.where(x <= target.lut_inputs, one, big))
    return out.round().to(torch.float32)


def groupsum_luts(features: int, k_classes: int, target: Target | str) -> Tensor:
    """LUTs of a popcount adder tree per class (GroupSum on ``features`` bits).

    Each class sums ``m = features / k_classes`` one-bit operands with a balanced binary
    adder tree: at every level, pairs of ``w``-bit operands go through one ``w``-bit adder
    (``w * luts_per_adder_bit`` LUTs) giving ``w + 1`` bits; an odd operand passes to the
    next level. For ``m = 2^d`` this is ``sum_{l=1..d} l * 2^(d-l) = 2m - d - 2`` adder bits.

    Example:
        >>> groupsum_luts(40, 10, "xc7-lut6").item()   # m = 4: two 1-bit + one 2-bit adder
        40.0
    """
    target = load_target(target)
    model = _lut_model(target)
    if features % k_classes:
        raise ValueError(f"`features` ({features}) must be divisible by `k_classes` ({k_classes})")
    widths = [1] * (features // k_classes)
    adder_bits = 0
    while len(widths) > 1:
        nxt = []
        for a, b in zip(widths[0::2], widths[1::2], strict=False):
            adder_bits += max(a, b)
            nxt.append(max(a, b) + 1)
        if len(widths) % 2:
            nxt.append(widths[-1])
        widths = nxt
    return torch.tensor(float(k_classes * adder_bits * model.luts_per_adder_bit))


def _encoder_luts(encoder: ThermometerEncoder, target: Target, bits: int | None = None) -> Tensor:
    model = _lut_model(target)
    comparators = encoder.out_features if bits is None else bits
    return torch.tensor(float(comparators * target.activation_bits * model.luts_per_comparator_bit))


@_cost.register("luts", LUTLayer)
def lut_layer_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """LUTs of a LUT layer: ``sum over nodes of table_luts(effective k)``.

    The effective k of each node comes from its binarised table (:func:`effective_inputs`),
    so ``alive`` is ignored; the count is exact, not differentiable. The function sees one
    layer, so nodes no later layer reads still count: use :func:`lut_report` for the
    model-level count with unused nodes removed.
    """
    layer = info.module
    if not isinstance(layer, LUTLayer):
        raise TypeError(f"`info.module` must be a LUTLayer, but got {type(layer).__name__}")
    return table_luts(effective_inputs(layer), target).sum()


@_cost.register("params", LUTLayer)
def lut_layer_params(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """Table entries of a LUT layer, ``nodes * 2^k`` (connection logits are training-only)."""
    layer = info.module
    if not isinstance(layer, LUTLayer):
        raise TypeError(f"`info.module` must be a LUTLayer, but got {type(layer).__name__}")
    return torch.tensor(float(layer.out_features * 2**layer.k))


@_cost.register("luts", GroupSum)
def group_sum_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """LUTs of the GroupSum popcount trees (:func:`groupsum_luts`), ``info.in_channels`` bits."""
    head = info.module
    if not isinstance(head, GroupSum):
        raise TypeError(f"`info.module` must be a GroupSum, but got {type(head).__name__}")
    if info.in_channels is None:
        raise ValueError(f"GroupSum {info.name!r} needs `in_channels` to be costed")
    return groupsum_luts(int(info.in_channels), head.k_classes, target)


@_cost.register("luts", ThermometerEncoder)
def encoder_luts(info: LayerInfo, alive: dict[str, Tensor], target: Target) -> Tensor:
    """One ``activation_bits``-bit comparator per threshold per feature."""
    enc = info.module
    if not isinstance(enc, ThermometerEncoder):
        raise TypeError(f"`info.module` must be a ThermometerEncoder, but got {type(enc).__name__}")
    return _encoder_luts(enc, target)


def lut_report(model: nn.Module, target: Target | str) -> pd.DataFrame:
    """Model-level LUT count with pruned inputs and unused nodes removed.

    One row per encoder, LUT layer and GroupSum of ``model`` (in ``model.modules()``
    order), columns ``layer``, ``type``, ``nodes``, ``used_nodes``, ``k``, ``mean_k_eff``
    (over used nodes), ``luts``. LUT layers count ``table_luts(k_eff)`` over their used nodes
    (:func:`used_nodes`); an encoder counts the comparators of the bits that a used node of
    the first LUT layer depends on (``used_nodes`` is that number of bits); the sum of
    ``luts`` is the model's estimate. Constant propagation is not done: a node whose input is
    a constant bit (a constant node or a threshold above the data range) keeps that input.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(LUTLayer(8, 20, k=6, seed=0), GroupSum(2))
        >>> report = lut_report(model, "xc7-lut6")
        >>> report[["layer", "nodes", "luts"]].values.tolist()   # 20 LUT6 + 2 trees of 10 bits
        [['0', 20, 20.0], ['1', 2, 32.0]]
    """
    import pandas as pd

    target = load_target(target)
    _lut_model(target)
    layers = _lut_layers(model)
    used = dict(zip(map(id, layers), used_nodes(model), strict=True))
    rows: list[dict[str, Any]] = []
    last_width: int | None = None
    for name, m in model.named_modules():
        if isinstance(m, LUTLayer):
            k_eff = effective_inputs(m)
            mask = used[id(m)]
            n_used = int(mask.sum())
            mean_k = float(k_eff[mask].float().mean()) if n_used else 0.0
            luts = float(table_luts(k_eff[mask], target).sum())
            rows.append(
                dict(
                    layer=name,
                    type="LUTLayer",
                    nodes=m.out_features,
                    used_nodes=n_used,
                    k=m.k,
                    mean_k_eff=mean_k,
                    luts=luts,
                )
            )
            last_width = m.out_features
        elif isinstance(m, _ENCODERS):
            first = layers[0]
            n_bits = m.out_features
            if first.in_features == n_bits:  # comparators whose bit no used node reads go
                n_bits = int(_read_inputs(first, used[id(first)]).sum())
            rows.append(
                dict(
                    layer=name,
                    type=type(m).__name__,
                    nodes=m.out_features,
                    used_nodes=n_bits,
                    k=1,
                    mean_k_eff=1.0,
                    luts=float(_encoder_luts(m, target, n_bits)),
                )
            )
        elif isinstance(m, GroupSum):
            if last_width is None:
                raise ValueError(f"GroupSum {name!r} does not follow a LUTLayer")
            rows.append(
                dict(
                    layer=name,
                    type="GroupSum",
                    nodes=m.k_classes,
                    used_nodes=m.k_classes,
                    k=last_width // m.k_classes,
                    mean_k_eff=float(last_width // m.k_classes),
                    luts=float(groupsum_luts(last_width, m.k_classes, target)),
                )
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- export


class _BinaryLUTNet(nn.Module):
    """Pure-tensor binary inference: thresholds, bit packing, table gathers, group sums."""

    def __init__(self, stages: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.kinds: list[str] = []
        self.params: list[tuple[int, ...]] = []
        for i, (kind, spec) in enumerate(stages):
            self.kinds.append(kind)
            if kind == "encode":
                self.register_buffer(f"s{i}_thresholds", spec.clone())
                self.params.append((spec.shape[0],))
            elif kind == "lut":
                conn, bits, k = spec
                nodes = conn.shape[0]
                self.register_buffer(f"s{i}_conn", conn.reshape(-1).clone())
                self.register_buffer(f"s{i}_table", bits.to(torch.float32).reshape(-1).clone())
                self.register_buffer(f"s{i}_offset", torch.arange(nodes) * 2**k)
                self.register_buffer(
                    f"s{i}_pow2", torch.pow(2.0, torch.arange(k, dtype=torch.float32))
                )
                self.params.append((nodes, k))
            elif kind == "sum":
                self.params.append(spec)
            else:  # "threshold"
                self.params.append(())

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1).to(torch.float32)
        for i, kind in enumerate(self.kinds):
            if kind == "encode":
                thr = getattr(self, f"s{i}_thresholds")
                x = (x.unsqueeze(-1) > thr).to(torch.float32).reshape(x.shape[0], -1)
            elif kind == "threshold":
                x = (x >= 0.5).to(torch.float32)
            elif kind == "lut":
                nodes, k = self.params[i]
                sel = x.index_select(1, getattr(self, f"s{i}_conn")).reshape(-1, nodes, k)
                address = (sel * getattr(self, f"s{i}_pow2")).sum(-1).to(torch.int64)
                flat = (address + getattr(self, f"s{i}_offset")).reshape(-1)
                x = getattr(self, f"s{i}_table").index_select(0, flat).reshape(-1, nodes)
            else:
                classes, tau = self.params[i]
                x = x.reshape(x.shape[0], classes, -1).sum(-1) / tau
        return x


_PASS_THROUGH = (nn.Sequential, nn.Flatten, nn.Identity)


def binary_inference_module(model: nn.Module) -> nn.Module:
    """A plain module computing ``model``'s binary-mode output from its truth tables.

    ``model``'s leaf modules, in ``model.modules()`` order, must form the chain
    ``[encoder] -> LUTLayer... -> [GroupSum]`` (``nn.Flatten``/``nn.Identity`` are allowed);
    inputs are flattened to (batch, features). Without an encoder the first LUT layer's
    inputs are thresholded at 0.5. The result only uses comparisons, index_select, sums and
    reshapes, so it exports to ONNX; it holds copies, not references, of the tables.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(LUTLayer(6, 8, k=3, seed=0), GroupSum(2)).eval()
        >>> x = torch.rand(5, 6)
        >>> torch.equal(binary_inference_module(model)(x), model(x))
        True
    """
    stages: list[tuple[str, Any]] = []
    for name, m in model.named_modules():
        if isinstance(m, _ENCODERS):
            if stages:
                raise ValueError(f"encoder {name!r} must come first in the LUT network")
            stages.append(("encode", m.thresholds.detach().float().cpu()))
        elif isinstance(m, LUTLayer):
            if not stages:
                stages.append(("threshold", None))
            stages.append(("lut", (m.connection_indices().cpu(), m.truth_table().cpu(), m.k)))
        elif isinstance(m, GroupSum):
            stages.append(("sum", (m.k_classes, m.tau)))
        elif not isinstance(m, _PASS_THROUGH):
            raise ValueError(
                f"module {name!r} ({type(m).__name__}) is not part of a LUT network; allowed: "
                "ThermometerEncoder, LUTLayer, GroupSum, nn.Sequential, nn.Flatten, nn.Identity"
            )
    if not any(kind == "lut" for kind, _ in stages):
        raise ValueError(f"no LUTLayer in {type(model).__name__}")
    return _BinaryLUTNet(stages).eval()


def _as_input(example_inputs: Tensor | tuple[Tensor, ...]) -> Tensor:
    if isinstance(example_inputs, tuple):
        if len(example_inputs) != 1:
            raise ValueError(
                f"`example_inputs` must be one tensor, but got a tuple of {len(example_inputs)}"
            )
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, Tensor) or example_inputs.dim() < 2:
        raise TypeError("`example_inputs` must be a tensor of shape (batch, features...)")
    return example_inputs.detach().float().cpu()


def export_lut_onnx(
    model: nn.Module, path: str | os.PathLike[str], example_inputs: Tensor | tuple[Tensor, ...]
) -> Path:
    """Export ``model``'s binary network to ONNX (dynamic batch) and check it.

    The graph (from :func:`binary_inference_module`): thresholds (``Greater``), bit packing
    (``Mul`` by ``2^j``, ``ReduceSum``), ``Gather`` from the flattened {0, 1} tables,
    group sums; output: (batch, classes) scores, or the last layer's bits without a GroupSum.
    The export is :func:`hwnas.export_onnx` with ``atol=0``: a single file written only
    when ``onnx.checker`` passes and onnxruntime's outputs equal the PyTorch binary
    module's exactly (at the example batch and at batch 3); a failed export leaves no file.

    Args:
        model: A LUT network (see :func:`binary_inference_module`).
        path: Output ``.onnx`` file.
        example_inputs: A (batch, features...) tensor (or a 1-tuple of one).

    Returns:
        The path written.

    Raises:
        hwnas.ExportError: if the exporter fails or onnxruntime disagrees with PyTorch.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> model = nn.Sequential(LUTLayer(6, 8, k=3, seed=0), GroupSum(2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     out = export_lut_onnx(model, f"{d}/lut.onnx", torch.rand(4, 6))
        ...     out.name
        'lut.onnx'
    """
    from hwnas.onnx import export_onnx

    path = Path(path)
    net = binary_inference_module(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(net, path, (_as_input(example_inputs),), atol=0.0).path


def _node_table(row: Tensor, conn: Tensor, dep: Tensor) -> tuple[list[int], str]:
    """Effective sources and the truth table over them ('0'/'1' per address) of one node."""
    k = conn.shape[0]
    positions = dep.nonzero().flatten().tolist()
    sources = [int(conn[i]) for i in positions]
    slot = [sources.index(int(s)) if int(s) in sources else -1 for s in conn.tolist()]
    r = torch.arange(2 ** len(sources))
    address = torch.zeros_like(r)
    for i in range(k):
        if slot[i] >= 0:
            address |= ((r >> slot[i]) & 1) << i
    return sources, "".join("1" if b else "0" for b in row[address].tolist())


def export_truth_tables(model: nn.Module, folder: str | os.PathLike[str]) -> list[Path]:
    """Write one JSON file per LUT layer (``lut_layer_<i>.json``) plus ``network.json``.

    Layer file schema (``"format": "hwnas-lut-v1"``)::

        {"format": "hwnas-lut-v1", "index": i, "name": "<module path>",
         "k": k, "in_features": F, "out_features": N,
         "bit_order": "lsb-first",
         "nodes": [{"node": n, "used": true, "inputs": [s0, s1, ...], "table": "0110..."}]}

    ``inputs`` are the node's effective inputs (indices into the layer's input vector; pruned
    inputs removed) and ``table`` has ``2^len(inputs)`` characters: character ``a`` is the
    output bit at address ``a = sum_j bit(inputs[j]) * 2^j``. ``used`` is False for nodes no
    later layer reads (:func:`used_nodes`). ``network.json`` lists the layer files in order,
    the encoder (``{"type", "thresholds": [[...] per feature], "rule": "x > threshold"}`` or
    null) and the head (``{"k_classes", "tau"}`` or null).

    Returns:
        The written paths, layer files first, ``network.json`` last.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     paths = export_truth_tables(LUTLayer(4, 2, k=2, seed=0), d)
        ...     [p.name for p in paths], read_truth_tables(d)[0]["k"]
        (['lut_layer_0.json', 'network.json'], 2)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = _lut_layers(model)
    used = used_nodes(model)
    names = {id(m): n for n, m in model.named_modules()}
    paths = []
    for i, (layer, mask) in enumerate(zip(layers, used, strict=True)):
        bits, conn = layer.truth_table().cpu(), layer.connection_indices().cpu()
        dep = input_dependence(layer)
        nodes = []
        for n in range(layer.out_features):
            sources, table = _node_table(bits[n], conn[n], dep[n])
            nodes.append({"node": n, "used": bool(mask[n]), "inputs": sources, "table": table})
        doc = {
            "format": "hwnas-lut-v1",
            "index": i,
            "name": names[id(layer)],
            "k": layer.k,
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "bit_order": "lsb-first",
            "nodes": nodes,
        }
        path = folder / f"lut_layer_{i}.json"
        path.write_text(json.dumps(doc))
        paths.append(path)
    encoder = next((m for m in model.modules() if isinstance(m, _ENCODERS)), None)
    head = next((m for m in model.modules() if isinstance(m, GroupSum)), None)
    manifest = {
        "format": "hwnas-lut-network-v1",
        "layers": [p.name for p in paths],
        "encoder": None
        if encoder is None
        else {
            "type": type(encoder).__name__,
            "rule": "x > threshold",
            "thresholds": encoder.thresholds.tolist(),
        },
        "head": None if head is None else {"k_classes": head.k_classes, "tau": head.tau},
    }
    path = folder / "network.json"
    path.write_text(json.dumps(manifest, indent=1))
    paths.append(path)
    return paths


def read_truth_tables(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the layer files written by :func:`export_truth_tables`, in network order.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = export_truth_tables(LUTLayer(4, 3, k=2, seed=0), d)
        ...     len(read_truth_tables(d)[0]["nodes"])
        3
    """
    folder = Path(folder)
    manifest = json.loads((folder / "network.json").read_text())
    docs = []
    for name in manifest["layers"]:
        doc = json.loads((folder / name).read_text())
        if doc.get("format") != "hwnas-lut-v1":
            raise ValueError(
                f"{name}: `format` must be 'hwnas-lut-v1', but got {doc.get('format')!r}"
            )
        docs.append(doc)
    return docs
