"""What every verified export shares: the inputs it is checked on, the float32 CPU copy it
is made from, and the output comparison (a non-finite value is a mismatch, never a pass).

Used by :mod:`hwnas.export.onnx` and :mod:`hwnas.export.program`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree

from hwnas.errors import ExportError, InvalidTypeError, InvalidValueError

__all__ = ["batched", "check_tolerance", "compare", "example_tuple", "float32_cpu_copy",
           "tensor_leaves"]


def batched(x: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    """A batch of ``batch`` inputs like ``x``: random with x's mean and std, or x repeated."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch,) + tuple(x.shape[1:])
    if x.is_floating_point():
        std = x.float().std().clamp(min=1e-3) if x.numel() > 1 else torch.tensor(1.0)
        out = torch.randn(shape, generator=g) * std + x.float().mean()
        return out.to(x.dtype)
    return x[:1].expand(shape).clone()


def tensor_leaves(value: Any, what: str) -> list[torch.Tensor]:
    """The tensors of a (nested) output, in pytree order; other leaves are an error."""
    leaves = _pytree.tree_leaves(value)
    bad = [type(v).__name__ for v in leaves if not isinstance(v, torch.Tensor)]
    if bad:
        raise ExportError(
            f"{what} holds non-tensor values ({', '.join(sorted(set(bad)))}); outputs must "
            "be tensors, or tuples, lists and dicts of tensors"
        )
    return leaves


def compare(expected: torch.Tensor, got: np.ndarray, atol: float, rtol: float,
            where: str, runtime: str = "onnxruntime") -> tuple[float, float]:
    """(max abs diff, max rel diff) of one output against what ``runtime`` returned;
    ExportError on any mismatch (a non-finite value on either side is one)."""
    ref = expected.detach().cpu()
    if ref.dtype == torch.bfloat16:
        ref = ref.float()
    ref_np = ref.numpy()
    if ref_np.shape != got.shape:
        raise ExportError(f"{where}: {runtime} returned shape {got.shape}, PyTorch "
                          f"{ref_np.shape}")
    if ref_np.size == 0:
        return 0.0, 0.0
    a = ref_np.astype(np.float64)
    b = got.astype(np.float64)
    for side, arr in (("PyTorch", a), (runtime, b)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ExportError(
                f"{where}: the {side} output is not finite ({int(bad.sum())} of {arr.size} "
                "values are NaN or infinite); a non-finite output is never a match"
            )
    diff = np.abs(a - b)
    scale = np.abs(a)
    allowed = atol + rtol * scale
    over = diff > allowed
    rel = np.divide(diff, scale, out=np.where(diff > 0, np.inf, 0.0), where=scale > 0)
    if over.any():
        i = int(np.argmax(diff - allowed))
        raise ExportError(
            f"{where}: {runtime} differs from PyTorch by {float(diff.flat[i]):.3g} at flat "
            f"index {i} (PyTorch {float(a.flat[i]):.6g}, {runtime} {float(b.flat[i]):.6g}); "
            f"allowed |diff| <= atol + rtol*|PyTorch| = {atol:g} + {rtol:g}*"
            f"{float(scale.flat[i]):.3g}; {int(over.sum())} of {over.size} values differ"
        )
    return float(diff.max()), float(rel.max())


def check_tolerance(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(f"`{name}` must be a number, but got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise InvalidValueError(f"`{name}` must be a finite number >= 0, but got {value!r}")
    return float(value)


def example_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs or not all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        raise InvalidTypeError("`example_inputs` must be a tensor or a non-empty tuple of "
                               f"tensors, but got {type(example_inputs).__name__}")
    if any(t.dim() == 0 for t in example_inputs):
        raise InvalidValueError("`example_inputs` must have a batch dim, but got a 0-d tensor")
    return tuple(example_inputs)


def float32_cpu_copy(model: nn.Module, inputs: tuple[torch.Tensor, ...]
                     ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The model and inputs as exported and verified: float32 on the CPU.

    A model with any parameter or buffer off the CPU or in another floating dtype (CUDA,
    float64, bf16, fp16) is deep-copied and converted; the user's model is not touched.
    Floating inputs become float32 CPU tensors, integer inputs CPU tensors.

    Example:
        >>> from torch import nn
        >>> m, (x,) = float32_cpu_copy(nn.Linear(2, 2).double(), (torch.ones(1, 2).double(),))
        >>> m.weight.dtype, x.dtype
        (torch.float32, torch.float32)
    """
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32)
           for t in tensors):
        if any(t.device.type == "meta" for t in tensors):
            raise ExportError("the model lives on the 'meta' device (it has no values); "
                              "move it to a real device with .to_empty() and load weights")
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    inputs = tuple(x.detach().to("cpu", torch.float32) if x.is_floating_point()
                   else x.detach().cpu() for x in inputs)
    return model, inputs
