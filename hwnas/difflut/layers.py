"""DiffLUT layers: LUT nodes and the GroupSum head (the encoders, from ``encoders``, too).

A LUT node reads ``k`` binary inputs and stores a truth table of ``2^k`` entries. During
training the table holds logits, the node's value is ``sigmoid`` of the table entry, and
inputs in ``[0, 1]`` are interpolated multilinearly between table entries, so the output is
differentiable in the table and in the inputs. In binary mode (the default in ``eval()``)
inputs are thresholded at 0.5 and the node returns the bit ``logit > 0`` (equivalently
``sigmoid(logit) > 0.5``): the binary network is a pure truth table of bits.

Bit order everywhere: input ``j`` of a node is bit ``j`` of the table address,
``address = sum_j bit_j * 2^j`` (least significant bit first). The layer's arithmetic is
in :mod:`hwnas.difflut.kernels` (PyTorch reference, fused CUDA kernels).
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor, nn

from hwnas.difflut import kernels
from hwnas.difflut._checks import check_int as _check_int
from hwnas.difflut.encoders import ENCODERS, GaussianThermometerEncoder, ThermometerEncoder
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
_CPU = torch.device("cpu")


# --------------------------------------------------------------------------- helpers


def _bit_weights(k: int, device: torch.device | None = None) -> Tensor:
    """``[1, 2, 4, ..., 2^(k-1)]`` as int64: address = sum_j bit_j * 2^j."""
    return torch.pow(2, torch.arange(k, device=device, dtype=torch.int64))


def _pack_bits(bits: Tensor) -> Tensor:
    """Address of each bit vector on the last dim (LSB first), int64, one dim fewer."""
    return (bits.to(torch.int64) * _bit_weights(bits.shape[-1], bits.device)).sum(-1)


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
                stream.extend(torch.randperm(in_features, generator=gen, device=_CPU).tolist())
            idx = stream.popleft()
            if idx in row and in_features >= k:
                skipped.append(idx)
            else:
                row.append(idx)
        stream.extendleft(reversed(skipped))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64, device=_CPU).reshape(nodes, k)


# --------------------------------------------------------------------------- layers


class LUTLayer(nn.Module):
    """A layer of ``out_features`` LUT nodes, each with ``k`` inputs and a ``2^k`` table.

    Table: ``self.logits`` (nodes, 2^k); a node's soft value at address ``a`` is
    ``sigmoid(logits[:, a])`` and its binary value is ``logits[:, a] > 0``.

    Soft forward (training, or ``binary=False``): each node gathers its ``k`` inputs
    ``x`` in ``[0, 1]`` and returns the multilinear interpolation
    ``sum_a sigmoid(T[a]) * prod_j x_j^{a_j} (1 - x_j)^{1 - a_j}``
    (:mod:`hwnas.difflut.kernels`). On CUDA (with Triton, ``k <= 8``) a fused kernel
    computes it and its gradients without storing the ``2^k`` corners of a sample: memory
    ``O(batch * nodes * k)``. Elsewhere the PyTorch path folds one input at a time
    (``k < 5``; peak extra memory about ``2 * batch * nodes * 2^(k-1)`` values) or contracts
    two corner-weight vectors of ``2^ceil(k/2)`` values with the table (``k >= 5``); when
    the largest intermediate would pass ``max_elements`` the nodes are processed in chunks
    (recomputed in backward with activation checkpointing).

    Binary forward (``eval()`` unless ``binary=False`` was set): inputs are thresholded
    (``x >= 0.5``), packed into an address (input ``j`` is bit ``j``) and the output is the
    table bit, as 0/1 in the input's dtype (one fused lookup kernel on CUDA).

    Devices and dtypes: the connections and the table are drawn on the CPU from the seeded
    generator (the same values on every device) and then put on ``device`` (default: torch's
    default device) in ``dtype``; inputs may be float32, float64 or bfloat16, and the output
    has the input's dtype.

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
        device: Where the table and connections live (default: torch's default device).
        dtype: The table's dtype (default: torch's default dtype).

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
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

        gen = torch.Generator(device=_CPU)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        like = torch.empty(0, device=device, dtype=dtype)  # where the tensors go
        conn = _covering_connections(in_features, out_features, k, gen)
        logits = torch.randn(out_features, 2**k, generator=gen, device=_CPU) * init_std
        self.logits = nn.Parameter(logits.to(like))
        if connections == "random":
            self.register_buffer("connections", conn.to(like.device))
            self.connection_logits = None
        else:
            self.connections = None
            init = torch.randn(out_features, k, in_features, generator=gen, device=_CPU) * 0.01
            init.scatter_(2, conn.unsqueeze(-1), 1.0)
            self.connection_logits = nn.Parameter(init.to(like))

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

    def _check_inputs(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ShapeError(
                f"LUTLayer expects inputs of shape (batch, {self.in_features}), "
                f"but got {tuple(x.shape)}"
            )

    def gather_inputs(self, x: Tensor) -> Tensor:
        """Each node's ``k`` inputs: (batch, in_features) -> (batch, nodes, k)."""
        self._check_inputs(x)
        idx = self.connection_indices()
        hard = x.index_select(1, idx.reshape(-1)).reshape(x.shape[0], self.out_features, self.k)
        if self.connection_logits is not None and not self.is_binary():
            # straight-through: the value is exactly the argmax input (``s - s`` is exactly 0);
            # the connection logits get the softmax mixture's gradient, x the hard one's.
            soft = torch.softmax(self.connection_logits, dim=-1).to(x.dtype)
            mixed = torch.einsum("bi,nki->bnk", x.detach(), soft)
            return hard + (mixed - mixed.detach())
        return hard

    def forward(self, x: Tensor) -> Tensor:
        self._check_inputs(x)
        if self.is_binary():
            bits = self.truth_table().to(x.dtype)
            return kernels.lookup(bits, x, self.connection_indices())
        if self.record_inputs and self.training:
            index = self.connection_indices().reshape(-1)
            sel = x.detach().index_select(1, index).reshape(x.shape[0], self.out_features, -1)
            self.last_inputs = sel >= 0.5
        if self.connection_logits is not None:  # gathered with the straight-through gradient
            return kernels.interpolate(self.table(), self.gather_inputs(x), None,
                                       self.max_elements)
        return kernels.interpolate(self.table(), x, self.connections, self.max_elements)


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

