"""hwnas: hardware-aware neural architecture search for PyTorch.

Wrap a model for search, set cost targets, export the pruned model to ONNX:

    >>> import torch
    >>> from torch import nn
    >>> import hwnas
    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 2))
    >>> search = hwnas.wrap(net, torch.randn(1, 1, 8, 8), costs=("params", "ops"))
    >>> reg = hwnas.DUCCIO({"params": 60.0}, final_strengths={"params": 1e-3})
    >>> float(reg(search).detach()) > 0
    True

``hwnas.__all__`` holds the verbs a user types. The layers under them stay importable
from their modules: the IR records from :mod:`hwnas.graph.ir`, tracing from :mod:`hwnas.graph`,
the cost registry from :mod:`hwnas.cost`, the cutting table from :mod:`hwnas.pruning`.
"""

from hwnas import cost, graph, regularizers
from hwnas.cost import register as register_cost
from hwnas.cost.profile import profile
from hwnas.cost.target import Target, known_targets, load_target
from hwnas.errors import (
    CheckpointError,
    ExportError,
    HwnasError,
    ShapeError,
    TraceError,
    TrainingError,
)
from hwnas.search.gates import L0, HardConcreteGate
from hwnas.graph import register_channel_rule
from hwnas.export.onnx import ExportResult, export_onnx
from hwnas.pruning import register_slicer
from hwnas.regularizers import DUCCIO, BaseRegularizer
from hwnas.search import SearchModel, materialize, wrap
from hwnas.training.fit import (
    EarlyStopping,
    FitConfig,
    FitResult,
    TargetsNotMetWarning,
    fit,
    relative_targets,
)

__version__ = "0.2.0"

__all__ = [
    "DUCCIO",
    "BaseRegularizer",
    "CheckpointError",
    "EarlyStopping",
    "ExportError",
    "ExportResult",
    "FitConfig",
    "FitResult",
    "HardConcreteGate",
    "HwnasError",
    "L0",
    "SearchModel",
    "ShapeError",
    "Target",
    "TargetsNotMetWarning",
    "TraceError",
    "TrainingError",
    "__version__",
    "cost",
    "export_onnx",
    "fit",
    "graph",
    "known_targets",
    "load_target",
    "materialize",
    "profile",
    "register_channel_rule",
    "register_cost",
    "register_slicer",
    "regularizers",
    "relative_targets",
    "wrap",
]
