"""Functional-sensitivity regularizers of LUT nodes (DiffLUT's L regularizer).

For a node ``g`` with ``k`` binary inputs and ``z^(i)`` the input ``z`` with bit ``i``
flipped, ``S_p(g) = (1/k) sum_i E_z |g(z) - g(z^(i))|^p``. Registered names (one function
each, all in :mod:`hwnas.regularizers`' registry):

- ``"functional"``: :func:`functional_sensitivity` (``p`` and ``mode`` as given);
- ``"functional_l1"`` / ``"functional_l2"``: ``p = 1`` / ``p = 2``;
- ``"functional_input"``: ``mode="input"``; ``"functional_exact"``: ``mode="exact"``.

Not to be confused with ``"expected_l2"`` (:func:`hwnas.regularizers.expected_l2_penalty`),
Louizos et al.'s expected L2 norm of gated weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hwnas.difflut.layers import LUTLayer, _bit_weights, _check_int, _pack_bits, lut_layers
from hwnas.errors import InvalidValueError, ShapeError
from hwnas.regularizers.registry import register as _register_regularizer

__all__ = [
    "functional_exact",
    "functional_input",
    "functional_l1",
    "functional_l2",
    "functional_sensitivity",
]


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
            raise ShapeError(
                f"`inputs` of shape (batch, nodes, k) must be (batch, {layer.out_features}, "
                f"{layer.k}), but got {tuple(inputs.shape)}"
            )
        return inputs >= 0.5 if inputs.dtype != torch.bool else inputs
    if inputs.dim() == 2:
        idx = layer.connection_indices().to(inputs.device)
        sel = inputs.index_select(1, idx.reshape(-1)).reshape(inputs.shape[0], -1, layer.k)
        return sel >= 0.5
    raise ShapeError(
        "`inputs` must be the node bits (batch, nodes, k) or the layer inputs "
        f"(batch, in_features), but got shape {tuple(inputs.shape)}"
    )


def _one_mode(layers: list[LUTLayer], inputs: Tensor | None) -> str:
    """``mode=None``: "input" when every layer has inputs, "exact" when none has."""
    recorded = [m.last_inputs is not None for m in layers]
    if inputs is not None or all(recorded):
        return "input"
    if not any(recorded):
        return "exact"
    missing = [i for i, r in enumerate(recorded) if not r]
    raise InvalidValueError(
        f"mode=None needs one mode for every LUT layer, but LUT layers {missing} have not "
        "recorded inputs and the others have: pass mode='exact', or build every layer with "
        "record_inputs=True and run a training forward for mode='input'")


def _layer_sensitivity(
    layer: LUTLayer, p: float, num_samples: int, inputs: Tensor | None, mode: str
) -> Tensor:
    if inputs is None and mode != "exact":
        inputs = layer.last_inputs
    k, table = layer.k, layer.table().float()  # a regularizer term is float32
    if mode == "exact":
        return _exact_sensitivity(table, k, p)
    if mode == "input":
        if inputs is None:
            raise InvalidValueError(
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


@_register_regularizer("functional")
def functional_sensitivity(
    node: nn.Module,
    epoch: int | None = None,
    n_epochs: int | None = None,
    *,
    p: float = 2,
    num_samples: int = 64,
    inputs: Tensor | None = None,
    mode: str | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Functional sensitivity penalty of LUT nodes (DiffLUT's L regularizer), ``"functional"``.

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
    - ``None``: one mode for every layer: ``"input"`` when ``inputs`` are given or every
      LUT layer has recorded its inputs, ``"exact"`` when none has; a model where some
      layers recorded inputs and others did not is an error (say which mode you mean).

    Args:
        node: A :class:`LUTLayer` or a module containing LUT layers (summed over them).
        epoch / n_epochs: The regularizer protocol's arguments (``reg(model, epoch,
            n_epochs)``, how :func:`hwnas.fit` calls a regularizer); the penalty has no
            schedule, so they change nothing. Everything after them is keyword-only.
        p: Exponent, > 0 (use ``p >= 1`` for finite gradients at equal entries).
        num_samples: Samples per node in random mode.
        inputs: For a single layer: its node bits (batch, nodes, k) or its layer inputs
            (batch, in_features), thresholded at 0.5.
        mode: ``"random"``, ``"input"``, ``"exact"`` or ``None``.
        reduction: ``"mean"`` over all nodes of all layers, or ``"sum"``.

    Returns:
        A scalar tensor, differentiable in the tables.

    Example:
        >>> import torch
        >>> layer = LUTLayer(6, 4, k=3, seed=0)
        >>> with torch.no_grad():
        ...     _ = layer.logits.fill_(-20.0)   # constant nodes: no sensitivity
        >>> functional_sensitivity(layer, p=2, mode="exact").item()
        0.0
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not p > 0:
        raise InvalidValueError(f"`p` must be a number > 0, but got {p!r}")
    _check_int("num_samples", num_samples, 1)
    if mode not in _MODES + (None,):
        raise InvalidValueError(f"`mode` must be one of {_MODES} or None, but got {mode!r}")
    if reduction not in _REDUCTIONS:
        raise InvalidValueError(f"`reduction` must be one of {_REDUCTIONS}, but got {reduction!r}")
    layers = [node] if isinstance(node, LUTLayer) else lut_layers(node)
    if inputs is not None and len(layers) != 1:
        raise InvalidValueError(
            "`inputs` can only be given for a single LUTLayer; for a model, "
            "build its layers with record_inputs=True"
        )
    mode = mode or _one_mode(layers, inputs)
    per_node = torch.cat([_layer_sensitivity(m, p, num_samples, inputs, mode) for m in layers])
    return per_node.mean() if reduction == "mean" else per_node.sum()


@_register_regularizer("functional_l1")
def functional_l1(node: nn.Module, epoch: int | None = None, n_epochs: int | None = None,
                  **kwargs: Any) -> Tensor:
    """:func:`functional_sensitivity` with ``p=1``.

    Example:
        >>> functional_l1(LUTLayer(4, 2, k=2, seed=0), mode="exact").item() > 0
        True
    """
    return functional_sensitivity(node, p=1, **kwargs)


@_register_regularizer("functional_l2")
def functional_l2(node: nn.Module, epoch: int | None = None, n_epochs: int | None = None,
                  **kwargs: Any) -> Tensor:
    """:func:`functional_sensitivity` with ``p=2``.

    Example:
        >>> functional_l2(LUTLayer(4, 2, k=2, seed=0), mode="exact").item() > 0
        True
    """
    return functional_sensitivity(node, p=2, **kwargs)


@_register_regularizer("functional_input")
def functional_input(node: nn.Module, epoch: int | None = None, n_epochs: int | None = None,
                     **kwargs: Any) -> Tensor:
    """:func:`functional_sensitivity` with ``mode="input"``.

    Example:
        >>> import torch
        >>> layer = LUTLayer(4, 2, k=2, seed=0, record_inputs=True)
        >>> _ = layer.train()(torch.rand(8, 4))
        >>> functional_input(layer).shape
        torch.Size([])
    """
    return functional_sensitivity(node, mode="input", **kwargs)


@_register_regularizer("functional_exact")
def functional_exact(node: nn.Module, epoch: int | None = None, n_epochs: int | None = None,
                     **kwargs: Any) -> Tensor:
    """:func:`functional_sensitivity` with ``mode="exact"``.

    Example:
        >>> functional_exact(LUTLayer(4, 2, k=2, seed=0)).item() >= 0
        True
    """
    return functional_sensitivity(node, mode="exact", **kwargs)

