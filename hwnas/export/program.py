"""A pruned model as a PyTorch file that needs neither hwnas nor the model's code:
``torch.export``'s program (a graph and its weights, no pickled code), verified.

:func:`export_program` writes the program of any ``nn.Module`` (a
:class:`~hwnas.SearchModel` as its pruned plain model) with a dynamic batch, loads it back
and compares it with PyTorch at two batch sizes; :func:`load_program` reads one back as a
module (inference only: ``torch.export`` programs cannot switch to training mode).

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = export_program(net, f"{d}/net.pt2", torch.randn(1, 4))
    ...     loaded = load_program(f"{d}/net.pt2")
    ...     x = torch.randn(3, 4)
    ...     bool(torch.allclose(loaded(x), net(x), atol=1e-6)), result.max_abs_diff < 1e-6
    (True, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwnas._internal.files import atomic_write
from hwnas._internal.modes import eval_mode
from hwnas.errors import ExportError, InvalidTypeError, MissingFileError
from hwnas.export.onnx import Exportable
from hwnas.export.verify import batched, compare, example_tuple, float32_cpu_copy, tensor_leaves

__all__ = ["ProgramResult", "export_program", "load_program"]


@dataclass(frozen=True)
class ProgramResult:
    """What :func:`export_program` wrote and measured: the file, and the largest
    |loaded program - PyTorch| over the checked batch sizes."""

    path: Path
    max_abs_diff: float
    batch_sizes: tuple[int, ...]


def _program(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    traced = tuple(batched(x, 2, 0) for x in inputs)  # export specialises a dim of size 1
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(model, traced, dynamic_shapes=tuple({0: batch} for _ in inputs))
    except Exception as e:
        raise ExportError(f"torch.export failed for {type(model).__name__}: {e}") from e


def export_program(model: nn.Module, path: str | os.PathLike,
                   example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
                   atol: float = 1e-5, rtol: float = 1e-5) -> ProgramResult:
    """Write ``model`` as a verified ``torch.export`` program (``.pt2``) with a dynamic batch.

    The program is made from a float32 CPU copy (as ONNX exports are), saved atomically,
    loaded back and compared with PyTorch on the example and on a batch of 3; a failed
    export or check leaves nothing at ``path``.

    Raises:
        ExportError: torch.export failed, or the loaded program differs from PyTorch.
    """
    if isinstance(model, Exportable):  # a SearchModel: its pruned plain model
        model = model.export()
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"`model` must be an nn.Module, but got {type(model).__name__}")
    model, inputs = float32_cpu_copy(model, example_tuple(example_inputs))
    path = Path(path)
    if not path.parent.is_dir():
        raise MissingFileError(f"folder {str(path.parent)!r} does not exist")
    worst = 0.0
    with eval_mode(model), atomic_write(path) as tmp:
        torch.export.save(_program(model, inputs), tmp)
        loaded = load_program(tmp)
        checks = [inputs, tuple(batched(x, 3, 1) for x in inputs)]
        for xs in checks:
            with torch.no_grad():
                want = tensor_leaves(model(*xs), "the PyTorch output")
                got = tensor_leaves(loaded(*xs), "the program's output")
            for k, (w, g) in enumerate(zip(want, got, strict=True)):
                d, _ = compare(w, g.detach().numpy(), atol, rtol,
                               f"output {k} at batch {xs[0].shape[0]}", "the loaded program")
                worst = max(worst, d)
    return ProgramResult(path, worst, tuple(c[0].shape[0] for c in checks))


def load_program(path: str | os.PathLike) -> nn.Module:
    """The module of a ``torch.export`` program file (no pickled code is run).

    Raises:
        MissingFileError: there is no such file.
        ExportError: the file is not a ``torch.export`` program.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"program file {str(path)!r} does not exist")
    try:
        return torch.export.load(path).module()
    except Exception as e:
        raise ExportError(f"{str(path)!r} is not a torch.export program "
                          f"({type(e).__name__}: {e})") from e
