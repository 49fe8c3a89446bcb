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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hwnas.errors import (
    CheckpointError,
    ExportError,
    HwnasError,
    ShapeError,
    TraceError,
    TrainingError,
)

__version__ = "0.2.0"

#: Public name -> (module, attribute) it is loaded from on first use.
_EXPORTS: dict[str, tuple[str, str]] = {
    "BaseRegularizer": ("hwnas.regularizers.base", "BaseRegularizer"),
    "DUCCIO": ("hwnas.regularizers.duccio", "DUCCIO"),
    "EarlyStopping": ("hwnas.training.config", "EarlyStopping"),
    "ExportResult": ("hwnas.export.onnx", "ExportResult"),
    "FitConfig": ("hwnas.training.config", "FitConfig"),
    "FitResult": ("hwnas.training.fit", "FitResult"),
    "HardConcreteGate": ("hwnas.search.gates", "HardConcreteGate"),
    "L0": ("hwnas.search.l0", "L0"),
    "PrecisionSpace": ("hwnas.search.bitspace", "PrecisionSpace"),
    "SearchModel": ("hwnas.search.model", "SearchModel"),
    "Target": ("hwnas.cost.target", "Target"),
    "TargetsNotMetWarning": ("hwnas.training.fit", "TargetsNotMetWarning"),
    "export_onnx": ("hwnas.export.onnx", "export_onnx"),
    "export_qdq": ("hwnas.export.qdq", "export_qdq"),
    "export_qonnx": ("hwnas.export.qonnx", "export_qonnx"),
    "fit": ("hwnas.training.fit", "fit"),
    "known_targets": ("hwnas.cost.target", "known_targets"),
    "load": ("hwnas.cli.runs", "load"),
    "load_target": ("hwnas.cost.target", "load_target"),
    "materialize": ("hwnas.search.materialize", "materialize"),
    "profile": ("hwnas.cost.profile", "profile"),
    "register_channel_rule": ("hwnas.graph.rules.base", "register_channel_rule"),
    "register_cost": ("hwnas.cost", "register"),
    "register_slicer": ("hwnas.pruning.slicers", "register_slicer"),
    "relative_targets": ("hwnas.training.fit", "relative_targets"),
    "wrap": ("hwnas.search.wrap", "wrap"),
    "write_report": ("hwnas.cli.report", "write_report"),
}
#: Subpackages reachable as attributes (``hwnas.cost``, ``hwnas.difflut``, ...).
_PACKAGES = ("cli", "cost", "difflut", "export", "graph", "hw", "pruning", "regularizers",
             "search", "training", "zoo")

__all__ = [
    "BaseRegularizer",
    "CheckpointError",
    "DUCCIO",
    "EarlyStopping",
    "ExportError",
    "ExportResult",
    "FitConfig",
    "FitResult",
    "HardConcreteGate",
    "HwnasError",
    "L0",
    "PrecisionSpace",
    "SearchModel",
    "ShapeError",
    "Target",
    "TargetsNotMetWarning",
    "TraceError",
    "TrainingError",
    "__version__",
    "cost",
    "export_onnx",
    "export_qdq",
    "export_qonnx",
    "fit",
    "graph",
    "known_targets",
    "load",
    "load_target",
    "materialize",
    "profile",
    "register_channel_rule",
    "register_cost",
    "register_slicer",
    "regularizers",
    "relative_targets",
    "wrap",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _PACKAGES:
        value = importlib.import_module(f"hwnas.{name}")
    else:
        raise AttributeError(f"module 'hwnas' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_PACKAGES})


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these
    from hwnas import cost, graph, regularizers
    from hwnas.cli.report import write_report
    from hwnas.cli.runs import load
    from hwnas.cost import register as register_cost
    from hwnas.cost.profile import profile
    from hwnas.cost.target import Target, known_targets, load_target
    from hwnas.export.onnx import ExportResult, export_onnx
    from hwnas.export.qdq import export_qdq
    from hwnas.export.qonnx import export_qonnx
    from hwnas.graph.rules.base import register_channel_rule
    from hwnas.pruning.slicers import register_slicer
    from hwnas.regularizers.base import BaseRegularizer
    from hwnas.regularizers.duccio import DUCCIO
    from hwnas.search.bitspace import PrecisionSpace
    from hwnas.search.gates import HardConcreteGate
    from hwnas.search.l0 import L0
    from hwnas.search.materialize import materialize
    from hwnas.search.model import SearchModel
    from hwnas.search.wrap import wrap
    from hwnas.training.config import EarlyStopping, FitConfig
    from hwnas.training.fit import FitResult, TargetsNotMetWarning, fit, relative_targets
