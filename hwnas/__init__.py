"""hwnas: hardware-aware neural architecture search for PyTorch.

Wrap a model for search, set cost targets, export the pruned model to ONNX:

    >>> import torch
    >>> from torch import nn
    >>> import hwnas
    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 2))
    >>> search = hwnas.wrap(net, torch.randn(1, 1, 8, 8), costs=("params", "ops"))
    >>> reg = hwnas.regularizers.DUCCIO({"params": 60.0}, final_strengths={"params": 1e-3})
    >>> float(reg(search).detach()) > 0
    True
"""

from hwnas import cost, regularizers
from hwnas.cost.targets import Target, known_targets, load_target
from hwnas.export import ExportError, ExportResult, export_onnx, materialize
from hwnas.gates import L0, HardConcreteGate
from hwnas.graph import ChannelGroup, LayerInfo, TraceError, channel_groups, layers, trace
from hwnas.profile import profile
from hwnas.search import SearchModel, wrap
from hwnas.train import EarlyStopping, FitConfig, FitResult, fit, relative_targets

__version__ = "0.1.0"

__all__ = [
    "ChannelGroup",
    "EarlyStopping",
    "ExportError",
    "ExportResult",
    "FitConfig",
    "FitResult",
    "HardConcreteGate",
    "L0",
    "LayerInfo",
    "SearchModel",
    "Target",
    "TraceError",
    "channel_groups",
    "cost",
    "export_onnx",
    "fit",
    "known_targets",
    "layers",
    "load_target",
    "materialize",
    "profile",
    "regularizers",
    "relative_targets",
    "trace",
    "wrap",
]
