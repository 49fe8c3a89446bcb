"""A CI-sized slice of examples/bench_timm.py: timm models that needed the tracer's new parts.

- ``test_efficientnet`` with TensorFlow "same" padding: its ``Conv2dSame`` computes the
  padding from the input size, so torch.fx's symbolic trace fails and the trace specialised
  on the example's shapes takes over; each ``Conv2dSame`` stays one layer;
- ``lcnet_035``: an efficient head whose classifier is timm's ``Linear`` subclass (it must
  stay a module in the exported model, where forward hooks see it);
- ``test_vit``: its forward takes ``attn_mask=None`` and ``is_causal=False``, which the
  example inputs omit.

Each at 32 px must be costed exactly (FlopCounterMode reference and forward hooks), have
every inner channel gated, export exactly (outputs, and ``search.costs()`` equal to the
exported model's reference and, without attention, its forward hooks) and pass ONNX
verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import hwnas

try:  # tests/ as a plain directory on sys.path (pytest rootdir "prepend" import mode)
    from flop_reference import reference_counts
    from hook_reference import hook_counts
    from timm_zoo import import_timm
    from tv_zoo import inner_channels, randomize_, set_random_gates
except ImportError:  # tests/ imported as a package
    from tests.flop_reference import reference_counts
    from tests.hook_reference import hook_counts
    from tests.timm_zoo import import_timm
    from tests.tv_zoo import inner_channels, randomize_, set_random_gates

try:
    timm = import_timm()
except ImportError:  # pragma: no cover - the test extra installs timm
    pytest.skip("timm is not installed (pip install -e '.[test]')", allow_module_level=True)

pytestmark = pytest.mark.slow  # about 45 s of CPU (three ONNX exports), as test_torchvision

CASES: dict[str, dict[str, Any]] = {
    "test_efficientnet": {"pad_type": "same"},
    "lcnet_035": {},
    "test_vit": {"img_size": 32},
}


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **CASES[name])
    return randomize_(model, 1).eval(), torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("name", list(CASES))
def test_timm_model(name: str, tmp_path: Path) -> None:
    model, x = _build(name)
    ref = reference_counts(model, x)
    total = hwnas.profile(model, x).iloc[-1]
    assert (int(total["params"]), int(total["ops"])) == (ref.params, ref.ops)
    search = hwnas.wrap(model, x)
    inner, gated = inner_channels(search)
    assert inner > 0 and gated == inner, (gated, inner)
    set_random_gates(search, 0.5, seed=0)
    search.eval()
    pruned = hwnas.materialize(search).eval()
    with torch.no_grad():
        for want, got in zip(tree_leaves(search(x)), tree_leaves(pruned(x)), strict=True):
            torch.testing.assert_close(got, want, rtol=0.0, atol=1e-5 * float(want.abs().max()))
    costs, exported = search.costs(), reference_counts(pruned, x)
    assert (costs["params"], costs["ops"]) == (exported.params, exported.ops) and \
        costs["params"] < 0.8 * ref.params
    if name != "test_vit":  # no attention: hooks on conv / linear modules see every MAC
        assert hook_counts(pruned, x).total == (costs["params"], costs["ops"])
    result = hwnas.export_onnx(pruned, tmp_path / "model.onnx", x)
    assert result.batch_sizes == (1, 3) and result.max_rel_diff <= 1e-3


def test_conv2d_same_stays_one_layer() -> None:
    """The specialised trace keeps each of timm's Conv2dSame as a module (its padding is
    computed from the input size, so the symbolic trace fails inside it)."""
    gm = hwnas.graph.trace(*_build("test_efficientnet"))
    same = [n.target for n in gm.graph.nodes if n.op == "call_module"
            and type(gm.get_submodule(str(n.target))).__name__ == "Conv2dSame"]
    assert len(same) == 5
