"""Differentiable LUT networks: LUT nodes, input encoders, a GroupSum head, LUT cost, export.

A LUT node reads ``k`` binary inputs and stores a truth table of ``2^k`` entries. During
training the table holds logits and inputs in ``[0, 1]`` are interpolated multilinearly
between table entries; in binary mode (the default in ``eval()``) the node returns the table
bit ``logit > 0`` of its thresholded inputs. Bit order everywhere: input ``j`` of a node is
bit ``j`` of the table address (least significant bit first).

The package, one concept per module:

- :mod:`~hwnas.difflut.layers`: :class:`LUTLayer`, :class:`GroupSum`, :func:`set_binary_`.
- :mod:`~hwnas.difflut.encoders`: :class:`ThermometerEncoder`,
  :class:`GaussianThermometerEncoder`.
- :mod:`~hwnas.difflut.kernels`: the layer's arithmetic: the PyTorch reference (the CPU
  path) and fused Triton kernels chosen on CUDA (Triton optional).
- :mod:`~hwnas.difflut.sensitivity`: the functional-sensitivity regularizers, registered as
  ``"functional"``, ``"functional_l1"``, ``"functional_l2"``, ``"functional_input"``,
  ``"functional_exact"``.
- :mod:`~hwnas.difflut.cost`: :func:`input_dependence`, :func:`effective_inputs`,
  :func:`used_nodes`, :func:`table_luts`, :func:`group_sum_luts`, :func:`lut_report` and
  the registered ``luts`` / ``params`` costs (formulas in ``hwnas/cost/targets/DIFFLUT.md``).
- :mod:`~hwnas.difflut.network`: :func:`lut_network` (the binary network as plain data) and
  :func:`simplify` (constant propagation, unused nodes), shared by every export.
- :mod:`~hwnas.difflut.export`: :func:`binary_inference_module`, :func:`export_lut_onnx`,
  :func:`export_truth_tables`, :func:`read_truth_tables`. Verilog, simulation and synthesis
  live in :mod:`hwnas.hw`.

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

from hwnas.difflut.cost import (
    effective_inputs,
    group_sum_luts,
    input_dependence,
    lut_report,
    table_luts,
    used_nodes,
)
from hwnas.difflut.export import (
    binary_inference_module,
    export_lut_onnx,
    export_truth_tables,
    read_truth_tables,
)
from hwnas.difflut.layers import (
    GaussianThermometerEncoder,
    GroupSum,
    LUTLayer,
    ThermometerEncoder,
    set_binary_,
)
from hwnas.difflut.network import LUTNetwork, LUTTable, lut_network, simplify
from hwnas.difflut.sensitivity import (
    functional_exact,
    functional_input,
    functional_l1,
    functional_l2,
    functional_sensitivity,
)

__all__ = [
    "GaussianThermometerEncoder",
    "GroupSum",
    "LUTLayer",
    "LUTNetwork",
    "LUTTable",
    "ThermometerEncoder",
    "binary_inference_module",
    "effective_inputs",
    "export_lut_onnx",
    "export_truth_tables",
    "functional_exact",
    "functional_input",
    "functional_l1",
    "functional_l2",
    "functional_sensitivity",
    "group_sum_luts",
    "input_dependence",
    "lut_network",
    "lut_report",
    "read_truth_tables",
    "set_binary_",
    "simplify",
    "table_luts",
    "used_nodes",
]
