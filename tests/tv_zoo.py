"""torchvision's models as test and benchmark subjects (does not import hwnas).

torchvision is a test/benchmark-only dependency. Its compiled ops do not load beside every
torch build, so :func:`import_torchvision` stubs ``torchvision._meta_registrations`` (the
module that registers meta kernels for those ops) before importing it; the model code is
pure Python and needs none of them.

:func:`build` makes a model with ``weights=None`` at a small input: classification and
segmentation models whole, detection models as their backbone (the detection heads run
data-dependent post-processing that torch.fx cannot trace). Parameters that torchvision
initialises to constants (zero classifier heads, unit norm scales, zero biases) are
randomised, and BatchNorm gets random running statistics, so that a wrong slice changes the
output.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch
from torch import nn

__all__ = ["FAMILIES", "build", "family", "import_torchvision", "inner_channels", "inputs",
           "names", "set_random_gates"]

#: The families :func:`names` lists by default.
FAMILIES = ("classification", "segmentation", "detection")

#: Input side per model where the default (64 px) is too small for the architecture.
_SIZES = {"inception_v3": 96, "quantized_inception_v3": 96, "maxvit_t": 224,
          "ssd300_vgg16": 300, "vit_h_14": 56, "ssdlite320_mobilenet_v3_large": 320,
          "s3d": 224, "mvit_v1_b": 224, "mvit_v2_s": 224, "raft_large": 128, "raft_small": 128}
#: Frames of a video model's input (batch, channels, frames, height, width); default 4.
_FRAMES = {"s3d": 16, "mvit_v1_b": 16, "mvit_v2_s": 16}


def import_torchvision() -> Any:
    """Import torchvision with its compiled-op registrations stubbed (ImportError if absent)."""
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def family(name: str) -> str:
    """``classification``, ``segmentation``, ``detection``, ``video``, ``quantization`` or
    ``optical_flow``: the torchvision package the model's builder lives in."""
    tv = import_torchvision()
    module = tv.models.get_model_builder(name).__module__.split(".")
    return module[2] if len(module) > 3 else "classification"


def names(families: tuple[str, ...] = FAMILIES) -> list[str]:
    """Every model of ``torchvision.models.list_models()`` in one of ``families``."""
    tv = import_torchvision()
    return [n for n in tv.models.list_models() if family(n) in families]


def input_size(name: str, size: int = 64) -> int:
    return _SIZES.get(name, size)


def build(name: str, size: int = 64, seed: int = 0,
          **kwargs: Any) -> tuple[nn.Module, torch.Tensor]:
    """Model ``name`` (weights=None, seeded, randomised constants, eval mode) and an input
    (for an optical-flow model, a pair of images stacked on a leading dim: see
    :func:`inputs`)."""
    tv = import_torchvision()
    fam = family(name)
    side = input_size(name, size)
    if name.startswith("vit_"):
        kwargs.setdefault("image_size", side)
    if fam in ("segmentation", "detection"):
        kwargs.setdefault("weights_backbone", None)
    if fam == "quantization":
        kwargs.setdefault("quantize", False)
    torch.manual_seed(seed)
    model = tv.models.get_model(name, weights=None, **kwargs)
    if fam == "detection":
        model = model.backbone
    randomize_(model, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    if fam == "video":
        shape: tuple[int, ...] = (1, 3, _FRAMES.get(name, 4), side, side)
    elif fam == "optical_flow":
        shape = (2, 1, 3, side, side)
    else:
        shape = (1, 3, side, side)
    return model.eval(), torch.randn(shape, generator=gen)


def inputs(x: torch.Tensor, name: str) -> tuple[torch.Tensor, ...]:
    """The positional inputs of model ``name`` from :func:`build`'s tensor."""
    return tuple(x) if family(name) == "optical_flow" else (x,)


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random values for constant-initialised parameters and BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().reshape(-1)
            if flat.numel() and bool((flat == flat[0]).all()):
                p.copy_(flat[0] + 0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def inner_channels(search: Any) -> tuple[int, int]:
    """(inner channels, of them gated) of a ``hwnas.SearchModel``: output channels of conv,
    linear and attention layers whose group is neither a model input nor a model output."""
    inner = gated = 0
    for info in search.layer_infos:
        if info.kind not in ("conv", "linear", "attention") or info.out_slots is None:
            continue
        for g in info.out_slots[0]:
            frozen = search.groups[int(g)].frozen
            if frozen in ("model input", "model output"):
                continue
            inner += 1
            gated += frozen is None
    return inner, gated


def set_random_gates(search: Any, fraction: float, seed: int) -> None:
    """Seeded deterministic gates: ``fraction`` of each free group's gates closed, the
    others in [0.3, 1]."""
    g = torch.Generator().manual_seed(seed)
    for group in search.free_groups:
        gate = search.gate(group)
        v = 0.3 + 0.7 * torch.rand(gate.n, generator=g)
        v[torch.randperm(gate.n, generator=g)[: int(round(fraction * gate.n))]] = 0.0
        gate.set_deterministic_(v)
