"""A CI-sized slice of examples/bench_torchvision.py: torchvision's own model classes.

One model per family that needed a new rule: a grouped-conv RegNet, ShuffleNetV2 (channel
shuffle), EfficientNet (stochastic depth), a Vision Transformer (nn.MultiheadAttention),
Swin v1 and v2 (window attention, patch merging, masked LayerNorm) and a segmentation
model (dict output). ViT and Swin are torchvision's classes at reduced width and depth so
that the slice stays fast; the others are the registered builders at 64 px. Each must be
costed exactly (against the op-level reference of tests/flop_reference.py), have >= 90% of
its inner channels gated, and export exactly (pruned == search model, costs equal) to ONNX
that onnxruntime verifies.
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
    from tv_zoo import build, import_torchvision, inner_channels, randomize_, set_random_gates
except ImportError:  # tests/ imported as a package
    from tests.flop_reference import reference_counts
    from tests.tv_zoo import (
        build,
        import_torchvision,
        inner_channels,
        randomize_,
        set_random_gates,
    )

try:
    tv = import_torchvision()
except ImportError:  # pragma: no cover - the test extra installs torchvision
    pytest.skip("torchvision is not installed (pip install -e '.[test]')",
                allow_module_level=True)

pytestmark = pytest.mark.slow


def _small_vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                        hidden_dim=32, mlp_dim=64, num_classes=10)
    return randomize_(model, 1).eval(), torch.randn(1, 3, 32, 32)


def _small_swin(v2: bool) -> tuple[nn.Module, torch.Tensor]:
    from torchvision.models import swin_transformer as sw

    torch.manual_seed(0)
    extra: dict[str, Any] = {}
    if v2:
        extra = {"block": sw.SwinTransformerBlockV2, "downsample_layer": sw.PatchMergingV2}
    model = sw.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2],
                               num_heads=[2, 4], window_size=[4, 4],
                               stochastic_depth_prob=0.1, num_classes=10, **extra)
    return randomize_(model, 1).eval(), torch.randn(1, 3, 32, 32)


CASES = {
    "regnet_y_400mf": lambda: build("regnet_y_400mf"),
    "shufflenet_v2_x0_5": lambda: build("shufflenet_v2_x0_5"),
    "efficientnet_b0": lambda: build("efficientnet_b0"),
    "vit (2 layers, width 32)": _small_vit,
    "swin (depths 2, 2, width 16)": lambda: _small_swin(False),
    "swin_v2 (depths 2, 2, width 16)": lambda: _small_swin(True),
    "lraspp_mobilenet_v3_large": lambda: build("lraspp_mobilenet_v3_large"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_torchvision_model(name: str, tmp_path: Path) -> None:
    model, x = CASES[name]()
    ref = reference_counts(model, x)
    total = hwnas.profile(model, x).iloc[-1]
    assert (int(total["params"]), int(total["ops"])) == (ref.params, ref.ops)

    search = hwnas.wrap(model, x)
    inner, gated = inner_channels(search)
    assert inner > 0 and gated / inner >= 0.9, (gated, inner)
    set_random_gates(search, 0.5, seed=0)
    search.eval()
    pruned = hwnas.materialize(search).eval()
    with torch.no_grad():
        a, b = tree_leaves(search(x)), tree_leaves(pruned(x))
    scale = max(float(t.abs().max()) for t in a)
    assert max(float((s - p).abs().max()) for s, p in zip(a, b, strict=True)) <= 1e-5 * scale
    costs = search.costs()
    p_total = hwnas.profile(pruned, x).iloc[-1]
    assert (costs["params"], costs["ops"]) == (float(p_total["params"]), float(p_total["ops"]))
    assert costs["params"] < 0.8 * ref.params
    result = hwnas.export_onnx(pruned, tmp_path / "model.onnx", x)
    assert result.batch_sizes == (1, 3) and result.max_rel_diff <= 1e-3
    assert result.params == costs["params"]


def test_vit_attention_is_one_layer_per_block() -> None:
    model, x = _small_vit()
    gm = hwnas.graph.trace(model, x)
    attention = [i for i in hwnas.graph.layers(gm) if i.kind == "attention"]
    assert [i.target for i in attention] == [
        "encoder.layers.encoder_layer_0.self_attention",
        "encoder.layers.encoder_layer_1.self_attention"]
    # 4 heads of 8: the residual stream's channel j of every head is one channel
    assert attention[0].in_slots[1].tolist() == list(range(8)) * 4
    groups = hwnas.graph.channel_groups(gm)
    assert groups[int(attention[0].in_slots[0, 0])].frozen is None
