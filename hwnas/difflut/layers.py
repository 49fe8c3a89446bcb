"""DiffLUT layers: LUT nodes, thermometer encoders and the GroupSum head.

A LUT node reads ``k`` binary inputs and stores a truth table of ``2^k`` entries. During
training the table holds logits, the node's value is ``sigmoid`` of the table entry, and
inputs in ``[0, 1]`` are interpolated multilinearly between table entries, so the output is
differentiable in the table and in the inputs. In binary mode (the default in ``eval()``)
inputs are thresholded at 0.5 and the node returns the bit ``logit > 0`` (equivalently
``sigmoid(logit) > 0.5``): the binary network is a pure truth table of bits.

Bit order everywhere: input ``j`` of a node is bit ``j`` of the table address,
``address = sum_j bit_j * 2^j`` (least significant bit first).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hwnas.errors import InvalidTypeError, InvalidValueError, ShapeError

__all__ = [
    "ENCODERS",
    "GaussianThermometerEncoder",
    "GroupSum",
    "LUTLayer",
    "ThermometerEncoder",
    "lut_layers",
    "set_binary_",
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
        raise InvalidValueError(f"`{name}` must be an integer {where}, but got {value!r}")
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
            :func:`~hwnas.difflut.sensitivity.functional_sensitivity`'s input mode.
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
            raise InvalidValueError(
                f"`connections` must be one of {_CONNECTIONS}, but got {connections!r}"
            )
        if not isinstance(init_std, (int, float)) or init_std < 0:
            raise InvalidValueError(f"`init_std` must be a number >= 0, but got {init_std!r}")
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
        if self.connections is None:  # unreachable: one of the two is always set
            raise InvalidTypeError("LUTLayer has neither connections nor connection logits")
        return self.connections

    def is_binary(self) -> bool:
        """Whether forward runs in binary mode now (``binary``, else ``not training``)."""
        return (not self.training) if self.binary is None else self.binary

    def gather_inputs(self, x: Tensor) -> Tensor:
        """Each node's ``k`` inputs: (batch, in_features) -> (batch, nodes, k)."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ShapeError(
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
            raise InvalidValueError(f"`tau` must be a number > 0, but got {tau!r}")
        self.tau = float(tau)

    def extra_repr(self) -> str:
        return f"k_classes={self.k_classes}, tau={self.tau}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] % self.k_classes:
            raise ShapeError(
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
            raise InvalidValueError(f"`method` must be one of {self.methods}, but got {method!r}")
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
            raise InvalidValueError(
                f"`x` must hold at least one sample, but got shape {tuple(x.shape)}"
            )
        self.thresholds = self._fit_thresholds(x).contiguous()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.in_features == 0:
            raise InvalidValueError(f"{type(self).__name__} is not fitted; call .fit(data) first")
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ShapeError(
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


#: The encoder types a LUT network may start with.
ENCODERS = (ThermometerEncoder,)


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
        raise InvalidValueError(f"`binary` must be True, False or None, but got {binary!r}")
    for m in model.modules():
        if isinstance(m, LUTLayer):
            m.binary = binary
    return model


def lut_layers(model: nn.Module) -> list[LUTLayer]:
    """The :class:`LUTLayer` modules of ``model`` in ``model.modules()`` order (at least one).

    Example:
        >>> len(lut_layers(nn.Sequential(LUTLayer(4, 3, k=2), LUTLayer(3, 1, k=2))))
        2
    """
    layers = [m for m in model.modules() if isinstance(m, LUTLayer)]
    if not layers:
        raise InvalidValueError(f"no LUTLayer in {type(model).__name__}")
    return layers

