"""Export of DiffLUT networks: binary inference in PyTorch, ONNX, JSON truth tables.

- :func:`binary_inference_module`: pure-tensor binary inference (exports to ONNX).
- :func:`export_lut_onnx`, :func:`export_truth_tables`, :func:`read_truth_tables`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hwnas._internal.files import atomic_write, ensure_writable_dir
from hwnas.difflut.layers import ENCODERS, GroupSum, lut_layers
from hwnas.difflut.network import LUTNetwork, lut_network, simplify
from hwnas.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "binary_inference_module",
    "export_lut_onnx",
    "export_truth_tables",
    "read_truth_tables",
]


class _BinaryLUTNet(nn.Module):
    """Pure-tensor binary inference: thresholds, bit packing, table gathers, group sums."""

    thresholds: Tensor

    def __init__(self, net: LUTNetwork, divide_by_tau: bool) -> None:
        super().__init__()
        self.encode = net.thresholds is not None
        thresholds = torch.empty(0, 0) if net.thresholds is None else net.thresholds.clone()
        self.register_buffer("thresholds", thresholds)
        self.shapes: list[tuple[int, int]] = []
        for i, t in enumerate(net.layers):
            self.register_buffer(f"s{i}_conn", t.connections.reshape(-1).clone())
            self.register_buffer(f"s{i}_table", t.table.to(torch.float32).reshape(-1).clone())
            self.register_buffer(f"s{i}_offset", torch.arange(t.nodes) * 2**t.k)
            self.register_buffer(
                f"s{i}_pow2", torch.pow(2.0, torch.arange(t.k, dtype=torch.float32))
            )
            self.shapes.append((t.nodes, t.k))
        self.k_classes = net.k_classes
        self.tau = net.tau if divide_by_tau else 1.0

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1).to(torch.float32)
        if self.encode:
            x = (x.unsqueeze(-1) > self.thresholds).to(torch.float32).reshape(x.shape[0], -1)
        else:
            x = (x >= 0.5).to(torch.float32)
        for i, (nodes, k) in enumerate(self.shapes):
            sel = x.index_select(1, getattr(self, f"s{i}_conn")).reshape(-1, nodes, k)
            address = (sel * getattr(self, f"s{i}_pow2")).sum(-1).to(torch.int64)
            flat = (address + getattr(self, f"s{i}_offset")).reshape(-1)
            x = getattr(self, f"s{i}_table").index_select(0, flat).reshape(-1, nodes)
        if self.k_classes is not None:
            x = x.reshape(x.shape[0], self.k_classes, -1).sum(-1)
            if self.tau != 1.0:
                x = x / self.tau
        return x


def binary_inference_module(model: nn.Module, divide_by_tau: bool = True) -> nn.Module:
    """A plain module computing ``model``'s binary-mode output from its truth tables.

    The network is read by :func:`lut_network`; inputs are flattened to (batch, features).
    Without an encoder the first LUT layer's inputs are thresholded at 0.5. The result only
    uses comparisons, index_select, sums and reshapes, so it exports to ONNX; it holds
    copies, not references, of the tables, on the device of ``model``'s first LUT layer
    (a model on CUDA gives a module on CUDA; ``.cpu()`` gives the CPU copy that
    :func:`export_lut_onnx` and :func:`hwnas.hw.verify_verilog` check). It computes in
    float32 whatever the model's dtype.

    Args:
        model: A LUT network.
        divide_by_tau: With a GroupSum head, divide the per-class popcounts by ``tau`` as
            the model does (default); False returns the popcounts themselves (integers, what
            the Verilog of :func:`hwnas.hw.export_verilog` outputs).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hwnas.difflut import GroupSum, LUTLayer
        >>> model = nn.Sequential(LUTLayer(6, 8, k=3, seed=0), GroupSum(2, tau=4.0)).eval()
        >>> x = torch.rand(5, 6)
        >>> torch.equal(binary_inference_module(model)(x), model(x))
        True
        >>> torch.equal(binary_inference_module(model, divide_by_tau=False)(x), model(x) * 4)
        True
    """
    device = lut_layers(model)[0].logits.device
    return _BinaryLUTNet(lut_network(model), divide_by_tau).to(device).eval()


def _as_input(example_inputs: Tensor | tuple[Tensor, ...]) -> Tensor:
    if isinstance(example_inputs, tuple):
        if len(example_inputs) != 1:
            raise InvalidValueError(
                f"`example_inputs` must be one tensor, but got a tuple of {len(example_inputs)}"
            )
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, Tensor) or example_inputs.dim() < 2:
        raise InvalidTypeError("`example_inputs` must be a tensor of shape (batch, features...)")
    return example_inputs.detach().float().cpu()


def export_lut_onnx(
    model: nn.Module, path: str | os.PathLike[str], example_inputs: Tensor | tuple[Tensor, ...]
) -> Path:
    """Export ``model``'s binary network to ONNX (dynamic batch) and check it.

    The graph (from :func:`binary_inference_module`): thresholds (``Greater``), bit packing
    (``Mul`` by ``2^j``, ``ReduceSum``), ``Gather`` from the flattened {0, 1} tables,
    group sums; output: (batch, classes) scores, or the last layer's bits without a GroupSum.
    The model may live on any device; the file is made from a float32 CPU copy. The export
    is :func:`hwnas.export_onnx` with ``atol=0``: a single file written only
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
        >>> from hwnas.difflut import GroupSum, LUTLayer
        >>> model = nn.Sequential(LUTLayer(6, 8, k=3, seed=0), GroupSum(2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     out = export_lut_onnx(model, f"{d}/lut.onnx", torch.rand(4, 6))
        ...     out.name
        'lut.onnx'
    """
    from hwnas.export.onnx import export_onnx

    path = Path(path)
    net = binary_inference_module(model).cpu()  # exports check a float32 CPU copy
    ensure_writable_dir(path.parent)
    return export_onnx(net, path, (_as_input(example_inputs),), atol=0.0).path


def _write_json(path: Path, doc: Any, indent: int | None = None) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=indent))


def export_truth_tables(model: nn.Module, folder: str | os.PathLike[str]) -> list[Path]:
    """Write one JSON file per LUT layer (``lut_layer_<i>.json``) plus ``network.json``.

    Layer file schema (``"format": "hwnas-lut-v1"``)::

        {"format": "hwnas-lut-v1", "index": i, "name": "<module path>",
         "k": k, "in_features": F, "out_features": N,
         "bit_order": "lsb-first",
         "nodes": [{"node": n, "used": true, "inputs": [s0, s1, ...], "table": "0110..."}]}

    The nodes are those the Verilog builds, from the same analysis
    (:func:`hwnas.difflut.simplify`): ``inputs`` are the node's effective inputs (indices
    into the layer's input vector; ignored inputs removed, constant nodes of the layer
    before folded into the table) and ``table`` has ``2^len(inputs)`` characters: character
    ``a`` is the output bit at address ``a = sum_j bit(inputs[j]) * 2^j``. ``used`` is False
    for the nodes that are not built: constant, or read by no built node
    (:func:`used_nodes`). ``network.json`` lists the layer files in order,
    the encoder (``{"type", "thresholds": [[...] per feature], "rule": "x > threshold"}`` or
    null) and the head (``{"k_classes", "tau"}`` or null).

    Returns:
        The written paths, layer files first, ``network.json`` last.

    Example:
        >>> import tempfile
        >>> from hwnas.difflut import LUTLayer
        >>> with tempfile.TemporaryDirectory() as d:
        ...     paths = export_truth_tables(LUTLayer(4, 2, k=2, seed=0), d)
        ...     [p.name for p in paths], read_truth_tables(d)[0]["k"]
        (['lut_layer_0.json', 'network.json'], 2)
    """
    folder = ensure_writable_dir(folder)
    layers = lut_layers(model)
    simple, _ = simplify(lut_network(model))
    names = {id(m): n for n, m in model.named_modules()}
    paths = []
    for i, (layer, reduced) in enumerate(zip(layers, simple, strict=True)):
        live = set(reduced.live())
        nodes = [{"node": n, "used": n in live, "inputs": list(node.sources),
                  "table": "".join(str((node.table >> a) & 1)
                                   for a in range(2 ** len(node.sources)))}
                 for n, node in enumerate(reduced.nodes)]
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
        _write_json(path, doc)
        paths.append(path)
    encoder = next((m for m in model.modules() if isinstance(m, ENCODERS)), None)
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
    _write_json(path, manifest, indent=1)
    paths.append(path)
    return paths


def read_truth_tables(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the layer files written by :func:`export_truth_tables`, in network order.

    Example:
        >>> import tempfile
        >>> from hwnas.difflut import LUTLayer
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
            raise InvalidValueError(
                f"{name}: `format` must be 'hwnas-lut-v1', but got {doc.get('format')!r}"
            )
        docs.append(doc)
    return docs
