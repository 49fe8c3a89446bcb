"""timm's models as test and benchmark subjects (does not import hwnas).

timm is a test/benchmark-only dependency. It imports torchvision, whose compiled ops are
stubbed as in :mod:`tv_zoo` (:func:`import_timm`); it only downloads weights through
huggingface_hub, which ``pretrained=False`` never calls.

- :func:`families`: ``timm.list_models()`` grouped by architecture family: the module that
  defines the model and the name's leading word without its size digits (``tf_`` /
  ``legacy_`` / ``gluon_`` kept: ``tf_efficientnet`` is TensorFlow-padded), ``test_*``
  models left out;
- :func:`representative`: the family's smallest model by parameter count (counted on the
  ``meta`` device, nothing allocated);
- :func:`build`: the model (``pretrained=False``, seeded, constants randomised as in
  :func:`tv_zoo.randomize_`, eval mode) and an input at the smallest side of
  :data:`SIDES` that forwards (``img_size=`` passed where the model takes it).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

try:  # tests/ as a plain directory on sys.path
    from tv_zoo import import_torchvision, randomize_
except ImportError:  # tests/ imported as a package
    from tests.tv_zoo import import_torchvision, randomize_

__all__ = ["SIDES", "build", "families", "family_of", "import_timm", "representative"]

#: Input sides tried in order by :func:`build` (64 px where the model allows).
SIDES = (64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)
_PREFIXES = ("tf", "legacy", "gluon")


def import_timm() -> Any:
    """Import timm with torchvision's compiled-op registrations stubbed (ImportError if
    absent)."""
    import_torchvision()
    import timm

    return timm


def family_of(name: str) -> str:
    """The family of model ``name``: ``module`` or ``module/prefix`` where the name's
    leading word differs from the module (``efficientnet/tf_efficientnet``)."""
    module = import_timm().models._registry._model_to_module[name]
    words = name.split("_")
    word = re.sub(r"[0-9].*$", "", words[0])
    if words[0] in _PREFIXES and len(words) > 1:
        word = f"{words[0]}_{re.sub(r'[0-9].*$', '', words[1])}"
    return module if word == module else f"{module}/{word}"


def families(names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Family -> its models (``timm.list_models()`` by default; ``test_*`` left out)."""
    timm = import_timm()
    out: dict[str, list[str]] = {}
    for name in names if names is not None else timm.list_models():
        if not name.startswith("test_"):
            out.setdefault(family_of(name), []).append(name)
    return dict(sorted(out.items()))


def param_count(name: str) -> int:
    """Parameters of model ``name`` (built on the meta device; -1 when it does not build)."""
    timm = import_timm()
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
    except Exception:  # a model that cannot be built is never the representative
        return -1
    return sum(p.numel() for p in model.parameters())


def representative(models: list[str]) -> str:
    """The model with the fewest parameters (ties: the first name in sorted order)."""
    counts = {m: param_count(m) for m in models}
    built = [m for m in sorted(models) if counts[m] >= 0] or sorted(models)
    return min(built, key=lambda m: counts[m])


def _create(name: str, side: int | None, seed: int) -> nn.Module:
    timm = import_timm()
    torch.manual_seed(seed)
    if side is not None:
        try:
            return timm.create_model(name, pretrained=False, img_size=side)
        except TypeError:  # the model takes no img_size: it adapts to the input
            torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False)


def build(name: str, side: int | None = None, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Model ``name`` (pretrained=False, seeded, randomised constants, eval mode) and an
    input ``1x3xSxS``: at ``side`` when given, else at the smallest of :data:`SIDES` at
    which the model runs."""
    errors = []
    for s in [side] if side is not None else SIDES:
        try:
            model = _create(name, s, seed).eval()
            x = torch.randn((1, 3, s, s), generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                model(x)
        except Exception as e:  # too small for the architecture: try the next side
            errors.append(f"{s}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}")
            continue
        return randomize_(model, seed + 1).eval(), x
    raise RuntimeError(f"{name} runs at none of the sides tried ({'; '.join(errors[-2:])})")
