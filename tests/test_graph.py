"""Tests for hwnas/graph/: tracing, LayerInfo, channel groups and frozen groups."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from hwnas.errors import TraceError
from hwnas.graph import channel_groups, layers, trace
from hwnas.graph.ir import ChannelGroup, LayerInfo

try:  # tests/ as a plain directory on sys.path (pytest rootdir "prepend" import mode)
    from zoo import build, names
except ImportError:  # tests/ imported as a package
    from tests.zoo import build, names

LIGHT = names()


@functools.lru_cache(maxsize=None)
def _zoo(name: str) -> tuple[nn.Module, torch.fx.GraphModule]:
    model, x = build(name)
    model.eval()
    return model, trace(model, x)


def _infos(gm: torch.fx.GraphModule) -> dict[str, LayerInfo]:
    return {n.name: n.meta["hwnas"] for n in gm.graph.nodes}


def _summary(gm: torch.fx.GraphModule) -> list[tuple]:
    return [(g.size, g.producers, g.consumers, g.frozen) for g in channel_groups(gm)]


def _out_group(gm: torch.fx.GraphModule, node: str) -> int:
    groups = set(_infos(gm)[node].out_slots[0].tolist())
    assert len(groups) == 1, f"{node} writes channels of several groups: {groups}"
    return groups.pop()


def _slots(gm: torch.fx.GraphModule, node: str) -> tuple[list, list]:
    info = _infos(gm)[node]
    return info.in_slots.tolist(), info.out_slots.tolist()


# --------------------------------------------------------------------------- residual


class ResBlocks(nn.Module):
    """Stem, an identity residual block, a stride-2 block with a 1x1 conv shortcut, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(16, 16, 3, padding=1)
        self.short = nn.Conv2d(8, 16, 1, stride=2)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = F.relu(x + y)
        y = self.conv4(F.relu(self.conv3(x)))
        x = F.relu(y + self.short(x))
        return self.head(x.mean((2, 3)))


def test_residual_groups_by_hand() -> None:
    gm = trace(ResBlocks().eval(), torch.randn(1, 3, 8, 8))
    assert _summary(gm) == [
        (3, ("x",), ("stem",), "model input"),
        # identity shortcut: conv2's output is added to the stem's output
        (8, ("stem", "conv2"), ("conv1", "bn2", "conv3", "short"), None),
        (8, ("conv1",), ("bn1", "conv2"), None),
        (16, ("conv3",), ("conv4",), None),
        # stride-2 block: the main branch's last conv and the 1x1 shortcut conv
        (16, ("conv4", "short"), ("head",), None),
        (4, ("head",), (), "model output"),
    ]
    # position i of one producer is position i of the other (channel i + channel i)
    assert _slots(gm, "conv2")[1] == [[1] * 8, list(range(8))]
    assert _slots(gm, "stem")[1] == [[1] * 8, list(range(8))]
    assert _slots(gm, "short") == ([[1] * 8, list(range(8))], [[4] * 16, list(range(16))])
    assert _slots(gm, "conv4")[1] == [[4] * 16, list(range(16))]
    assert _slots(gm, "head")[0] == [[4] * 16, list(range(16))]


def test_residual_groups_in_zoo_resnet() -> None:
    _, gm = _zoo("resnet")
    g = _out_group(gm, "conv1")
    assert _out_group(gm, "layers_0_0_conv2") == g
    assert _out_group(gm, "layers_0_1_conv2") == g
    assert _out_group(gm, "layers_1_0_conv2") == _out_group(gm, "layers_1_0_downsample_0")
    assert _out_group(gm, "layers_1_0_conv1") != _out_group(gm, "layers_1_0_conv2")
    group = channel_groups(gm)[_out_group(gm, "layers_1_0_downsample_0")]
    assert group.producers == ("layers_1_0_downsample_0", "layers_1_0_conv2")
    assert group.size == 32 and group.frozen is None
    assert "fc" in group.consumers


# ----------------------------------------------------------------------------- concat


def test_concat_fire_groups() -> None:
    _, gm = _zoo("squeezenet")
    a = _out_group(gm, "features_3_expand1x1")
    b = _out_group(gm, "features_3_expand3x3")
    assert a != b
    groups = channel_groups(gm)
    assert (groups[a].size, groups[a].producers, groups[a].frozen) == (
        16, ("features_3_expand1x1",), None)
    assert (groups[b].size, groups[b].producers, groups[b].frozen) == (
        16, ("features_3_expand3x3",), None)
    # both expand convs read the squeeze conv's group
    sq = _out_group(gm, "features_3_squeeze")
    assert groups[sq].consumers == ("features_3_expand1x1", "features_3_expand3x3")
    # the next Fire's squeeze reads group A positions 0..15, then group B positions 0..15
    in_slots, _ = _slots(gm, "features_4_squeeze")
    assert in_slots == [[a] * 16 + [b] * 16, list(range(16)) + list(range(16))]


# ------------------------------------------------------------------------ split/chunk


class ChunkNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.ca = nn.Conv2d(8, 4, 1)
        self.cb = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.c1(x).chunk(2, dim=1)
        return self.fc(torch.cat([self.ca(a), self.cb(b)], 1).mean((2, 3)))


def test_chunk_halves_are_positions_of_the_producer_group() -> None:
    gm = trace(ChunkNet(), torch.randn(1, 3, 4, 4))
    assert _summary(gm) == [
        (3, ("x",), ("c1",), "model input"),
        (16, ("c1",), ("ca", "cb"), None),
        (4, ("ca",), ("fc",), None),
        (4, ("cb",), ("fc",), None),
        (2, ("fc",), (), "model output"),
    ]
    assert _slots(gm, "ca")[0] == [[1] * 8, [0, 1, 2, 3, 4, 5, 6, 7]]
    assert _slots(gm, "cb")[0] == [[1] * 8, [8, 9, 10, 11, 12, 13, 14, 15]]
    assert _slots(gm, "fc")[0] == [[2, 2, 2, 2, 3, 3, 3, 3], [0, 1, 2, 3, 0, 1, 2, 3]]


def test_shufflenet_chunk_after_channel_shuffle() -> None:
    _, gm = _zoo("shufflenet")
    g1 = _out_group(gm, "stage2_0_branch1_2")  # left branch of the first unit (24 ch)
    g2 = _out_group(gm, "stage2_0_branch2_5")  # right branch (24 ch)
    # cat -> view(n, 2, 24, h, w) -> transpose(1, 2) -> view(n, 48, h, w) is a fixed
    # permutation: channel 2k + j is channel k of branch j. The view keeps a rectangle only
    # when both branches keep the same k, so channel k of the two branches is one channel.
    assert g1 == g2
    assert _slots(gm, "stage2_0_branch1_2")[1] == [[g1] * 24, list(range(24))]
    assert _slots(gm, "stage2_0_branch2_5")[1] == [[g1] * 24, list(range(24))]
    # chunk(2)[1] of the shuffled channels holds k = 12..23, each twice (from both branches)
    in_slots, _ = _slots(gm, "stage2_1_branch2_0")
    assert in_slots == [[g1] * 24, [k for k in range(12, 24) for _ in range(2)]]
    groups = channel_groups(gm)
    assert groups[g1].frozen is None
    assert _infos(gm)["stage2_0_branch1_2"].frozen is None
    # the shuffle's view sizes are recorded per channel: (n, 2, 24, h, w) -> channels at dim 2
    views = [n for n in gm.graph.nodes if n.op == "call_method" and n.target == "view"]
    assert [n.meta["hwnas_chan"].dim for n in views[:2]] == [2, 1]


# -------------------------------------------------------------------------- depthwise


def test_depthwise_shares_the_expand_group() -> None:
    _, gm = _zoo("mobilenetv2")
    infos = _infos(gm)
    g = _out_group(gm, "blocks_0_conv_0")  # 1x1 expand conv, 16 -> 64
    assert _out_group(gm, "blocks_0_conv_1") == g  # its BN
    assert _out_group(gm, "blocks_0_conv_3") == g  # depthwise 3x3
    assert _out_group(gm, "blocks_0_conv_4") == g  # the depthwise conv's BN
    dw = infos["blocks_0_conv_3"]
    assert dw.depthwise and dw.groups == 64 and dw.kernel == (3, 3)
    np.testing.assert_array_equal(dw.in_slots, dw.out_slots)
    assert dw.in_slots.tolist() == [[g] * 64, list(range(64))]
    group = channel_groups(gm)[g]
    assert (group.size, group.producers, group.frozen) == (64, ("blocks_0_conv_0",), None)
    assert group.consumers == (
        "blocks_0_conv_1", "blocks_0_conv_3", "blocks_0_conv_4", "blocks_0_conv_6")


# --------------------------------------------------------------------------------- SE


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.c2(x * s).flatten(1)


def test_se_scale_joins_the_scaled_tensor_group() -> None:
    gm = trace(SENet(), torch.randn(1, 3, 4, 4))
    assert _summary(gm) == [
        (3, ("x",), ("c1",), "model input"),
        (8, ("c1", "fc2"), ("fc1", "c2"), None),
        (2, ("fc1",), ("fc2",), None),
        (4, ("c2",), (), "model output"),
    ]


def test_se_in_zoo() -> None:
    _, gm = _zoo("se")
    # conv-style SE (x * s with s from a 1x1 conv)
    assert _out_group(gm, "block1_se_fc2") == _out_group(gm, "block1_body_2_0")
    # linear-style SE (s from a Linear, viewed to (n, c, 1, 1), expand_as)
    assert _out_group(gm, "block2_se_fc_2") == _out_group(gm, "block2_body_2_0")
    assert _out_group(gm, "block2_se_fc_0") != _out_group(gm, "block2_se_fc_2")
    assert channel_groups(gm)[_out_group(gm, "block2_se_fc_2")].frozen is None


# ---------------------------------------------------------------------- flatten->linear


def test_flatten_linear_repeats_positions() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    gm = trace(net, torch.randn(1, 3, 3, 3))
    in_slots, _ = _slots(gm, "_3")
    assert in_slots == [[1] * 36, [0] * 9 + [1] * 9 + [2] * 9 + [3] * 9]
    assert channel_groups(gm)[1] == ChannelGroup(1, 4, ("_0",), ("_3",), None)


@pytest.mark.parametrize(
    ("name", "conv", "fc", "channels", "positions"),
    [
        ("flatten_linear", "conv2", "fc1", 16, 8 * 8),  # torch.flatten
        ("vgg_functional", "c4", "fc1", 32, 4 * 4),  # x.view(n, -1)
        ("mixed_1d_linear", "conv2", "fc1", 16, 16),  # x.reshape(n, -1), Conv1d
    ],
)
def test_flatten_linear_in_zoo(name: str, conv: str, fc: str, channels: int,
                               positions: int) -> None:
    _, gm = _zoo(name)
    g = _out_group(gm, conv)
    info = _infos(gm)[fc]
    assert info.in_channels == channels * positions
    np.testing.assert_array_equal(info.in_slots[0], np.full(channels * positions, g))
    np.testing.assert_array_equal(info.in_slots[1],
                                  np.repeat(np.arange(channels), positions))
    assert channel_groups(gm)[g].frozen is None


# ------------------------------------------------------------------------------ frozen


def test_grouped_conv_ties_the_index_within_a_group() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3, groups=2), nn.Conv2d(6, 4, 1))
    gm = trace(net, torch.randn(1, 3, 5, 5))
    placeholder = next(n.name for n in gm.graph.nodes if n.op == "placeholder")
    # channel j of every group is one channel: 8 = 2 groups x 4, 6 = 2 groups x 3
    assert _summary(gm) == [
        (3, (placeholder,), ("_0",), "model input"),
        (4, ("_0",), ("_1",), None),
        (3, ("_1",), ("_2",), None),
        (4, ("_2",), (), "model output"),
    ]
    in_slots, out_slots = _slots(gm, "_1")
    assert in_slots == [[1] * 8, [0, 1, 2, 3] * 2]
    assert out_slots == [[2] * 6, [0, 1, 2] * 2]
    info = _infos(gm)["_1"]
    assert (info.groups, info.depthwise, info.frozen) == (2, False, None)


def test_grouped_conv_in_zoo() -> None:
    _, gm = _zoo("grouped")
    groups = channel_groups(gm)
    for conv, width, n_groups in (("block1_conv2", 16, 2), ("block2_conv2", 32, 4),
                                  ("gconv", 32, 4)):
        g = _out_group(gm, conv)
        assert groups[g].frozen is None
        assert groups[g].size == width // n_groups
    # the grouped conv's input (block1.conv1's output) is tied the same way
    assert groups[_out_group(gm, "block1_conv1")].size == 16 // 2
    assert groups[_out_group(gm, "block1_conv3")].frozen is None


class ChannelsLastNorm(nn.Module):
    """LayerNorm over channels (NHWC) and LayerNorm over the spatial dims (NCHW)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.ln_spatial = nn.LayerNorm([4, 4])
        self.c2 = nn.Conv2d(8, 6, 1)
        self.ln_chan = nn.LayerNorm(6)
        self.c3 = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c2(self.ln_spatial(self.c1(x)))
        x = self.ln_chan(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.c3(x).mean((2, 3))


def test_layernorm_over_channels_is_a_masked_norm() -> None:
    gm = trace(ChannelsLastNorm(), torch.randn(1, 3, 4, 4))
    assert _summary(gm) == [
        (3, ("x",), ("c1",), "model input"),
        (8, ("c1",), ("c2",), None),  # LayerNorm over (H, W) does not mix channels
        (6, ("c2",), ("ln_chan", "c3"), None),  # over the channels: masked during search
        (2, ("c3",), (), "model output"),
    ]
    infos = _infos(gm)
    assert (infos["ln_chan"].kind, infos["ln_chan"].reads) == ("norm", (0, 3))
    assert infos["ln_spatial"].reads is None and infos["ln_spatial"].in_slots is None
    # NHWC round trip: c3 reads c2's channels in order
    assert _slots(gm, "c3")[0] == [[2] * 6, list(range(6))]


def test_layernorm_in_zoo() -> None:
    _, gm = _zoo("mlp_layernorm")
    groups = channel_groups(gm)
    assert groups[_out_group(gm, "fc1")].frozen is None
    assert _infos(gm)["ln1"].reads == (0, 2)


@pytest.mark.parametrize("name", LIGHT)
def test_model_input_and_output_are_frozen(name: str) -> None:
    _, gm = _zoo(name)
    groups = channel_groups(gm)
    first, last = layers(gm)[0], layers(gm)[-1]
    assert all(groups[g].frozen for g in set(first.in_slots[0].tolist()))
    assert [groups[g].frozen for g in set(last.out_slots[0].tolist())] == ["model output"]
    inputs = [g for g in groups if "x" in g.producers]
    assert inputs and all(g.frozen == "model input" for g in inputs)


# -------------------------------------------------------------- functional == modules


class StyleNet(nn.Module):
    """Same network written with modules or with functional calls and no-op reshapes."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.ca = nn.Conv2d(8, 8, 3, padding=1)
        self.cb = nn.Conv2d(8, 8, 1)
        self.c2 = nn.Conv2d(16, 24, 1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.fc1 = nn.Linear(24, 10)
        self.fc2 = nn.Linear(24, 10)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.flat = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.functional:  # structural flag fixed at construction: traceable
            n = x.size(0)
            x = F.relu(self.c1(x))
            a, b = x.chunk(2, dim=1)
            x = F.relu(torch.cat([self.ca(a), self.cb(b)], 1))
            x = x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)  # NCHW -> NHWC -> NCHW
            x = x.view(n, 16, -1).reshape(n, 16, 8, 8)
            x = x.transpose(1, 3).transpose(1, 3)
            y = self.c2(x)
            y1, y2 = torch.split(y, [8, 16], dim=1)
            y = torch.cat([self.c3(y1), y2], dim=1)
            h1 = F.dropout(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1), 0.5, self.training)
            h2 = y.mean((2, 3))
        else:
            x = self.relu(self.c1(x))
            a, b = torch.split(x, 8, dim=1)
            x = self.relu(torch.cat([self.ca(a), self.cb(b)], 1))
            y = self.c2(x)
            y1, y2 = y.split([8, 16], 1)
            y = torch.cat([self.c3(y1), y2], dim=1)
            h1 = self.drop(self.flat(self.pool(y)))
            h2 = self.flat(self.pool(y))
        return self.fc1(h1) + self.fc2(h2)


def test_functional_calls_count_like_modules() -> None:
    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(0)
    gm_mod = trace(StyleNet(functional=False).eval(), x)
    gm_fn = trace(StyleNet(functional=True).eval(), x)
    expected = [
        (3, ("x",), ("c1",), "model input"),
        (16, ("c1",), ("ca", "cb"), None),
        (8, ("ca",), ("c2",), None),
        (8, ("cb",), ("c2",), None),
        (24, ("c2",), ("c3", "fc1", "fc2"), None),
        (8, ("c3",), ("fc1", "fc2"), None),
        (10, ("fc1", "fc2"), (), "model output"),
    ]
    assert _summary(gm_mod) == expected
    assert _summary(gm_fn) == expected
    lay_mod = {i.target: (i.in_slots.tolist(), i.out_slots.tolist()) for i in layers(gm_mod)}
    lay_fn = {i.target: (i.in_slots.tolist(), i.out_slots.tolist()) for i in layers(gm_fn)}
    assert lay_mod == lay_fn
    assert lay_fn["cb"][0] == [[1] * 8, list(range(8, 16))]
    assert lay_fn["c3"][0] == [[4] * 8, list(range(8))]
    assert lay_fn["fc1"][0] == [[5] * 8 + [4] * 16, list(range(8)) + list(range(8, 24))]


# --------------------------------------------------------------------------- bad input


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return -x


class WithDataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.gate = DataDependent()
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.gate(self.c1(x))).mean((2, 3))


def test_untraceable_control_flow_names_module_line_and_fix() -> None:
    with pytest.raises(TraceError) as info:
        trace(WithDataDependent(), torch.randn(1, 3, 8, 8))
    msg = str(info.value)
    assert "inside module 'gate' (DataDependent)" in msg
    assert "if x.sum() > 0:" in msg
    assert "test_graph.py:" in msg
    assert "leaf_modules=(DataDependent,)" in msg
    assert "leaf_modules=('gate',)" in msg
    assert isinstance(info.value.__cause__, Exception)


@pytest.mark.parametrize("leaf", [DataDependent, "gate"])
def test_leaf_modules_make_it_traceable_and_frozen(leaf) -> None:
    gm = trace(WithDataDependent(), torch.randn(1, 3, 8, 8), leaf_modules=(leaf,))
    reason = "DataDependent gate is opaque to channel pruning"
    assert _summary(gm) == [
        (3, ("x",), ("c1",), "model input"),
        (8, ("c1",), ("gate",), reason),
        (8, ("gate",), ("c2",), reason),
        (4, ("c2",), (), "model output"),
    ]
    info = _infos(gm)["gate"]
    assert (info.kind, info.module_type, info.in_channels, info.out_channels) == (
        "layer", DataDependent, 8, 8)
    assert [i.name for i in layers(gm)] == ["c1", "gate", "c2"]


def test_wrong_input_shape_names_the_node() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.raises(ValueError, match=r"^input 1x4x8x8 does not fit layer '0' \(Conv2d\)"):
        trace(net, torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"expected input\[1, 4, 8, 8\] to have 3 channels"):
        trace(net, torch.randn(1, 4, 8, 8))


class _Buggy(nn.Module):
    """A model with a bug unrelated to shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) / _zero()


def _zero() -> int:
    return 1 // 0


def test_only_shape_errors_are_reported_as_shape_errors() -> None:
    from hwnas.errors import ShapeError

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.raises(ShapeError, match="Check that example_inputs have the shape"):
        trace(net, torch.randn(1, 4, 8, 8))
    leaf = nn.Sequential(_Buggy())
    with pytest.raises(TraceError) as info:
        trace(leaf, torch.randn(1, 3, 8, 8), leaf_modules=(_Buggy,))
    message = str(info.value)
    assert "ZeroDivisionError: integer division or modulo by zero" in message
    assert "failed at node %_0" in message and "shape" not in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_wrong_number_of_inputs() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"takes 1 input\(s\), but 2 example input\(s\)"):
        trace(net, (x, x))
    with pytest.raises(ValueError, match=r"takes 1 input\(s\), but 0 example input\(s\)"):
        trace(net, ())


def test_type_errors() -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TypeError, match="`model` must be an nn.Module, but got str"):
        trace("resnet", x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`example_inputs` must be a tensor or a tuple"):
        trace(nn.Conv2d(3, 8, 3), [1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`leaf_modules` entries must be classes or names"):
        trace(nn.Conv2d(3, 8, 3), x, leaf_modules=(3,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"was not made by hwnas.graph.trace\(\)"):
        channel_groups(torch.fx.symbolic_trace(nn.Conv2d(3, 8, 3)))


# -------------------------------------------------------------------------------- zoo


@pytest.mark.parametrize("name", LIGHT)
def test_zoo_traces_with_consistent_slots(name: str) -> None:
    model, gm = _zoo(name)
    assert all(isinstance(n.meta.get("hwnas"), LayerInfo) for n in gm.graph.nodes)
    assert [n.meta["hwnas"].name for n in gm.graph.nodes] == [n.name for n in gm.graph.nodes]
    groups = channel_groups(gm)
    assert [g.index for g in groups] == list(range(len(groups)))
    seen: dict[int, set[int]] = {g.index: set() for g in groups}
    for info in layers(gm):
        module = model.get_submodule(info.target) if info.module_type is not None else None
        if isinstance(module, nn.modules.conv._ConvNd):
            assert (info.in_channels, info.out_channels) == (
                module.in_channels, module.out_channels)
        elif isinstance(module, nn.Linear):
            assert (info.in_channels, info.out_channels) == (
                module.in_features, module.out_features)
        for slots, n in ((info.in_slots, info.in_channels), (info.out_slots, info.out_channels)):
            if slots is None:
                continue
            assert slots.shape == (2, n)
            for g, p in slots.T.tolist():
                assert 0 <= p < groups[g].size
                seen[g].add(p)
    # every position of every group that a layer touches is used
    for g in groups:
        if seen[g.index]:
            assert seen[g.index] == set(range(g.size)), g
    # same outputs as the model (the trace does not change the computation)
    x = build(name)[1]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


# ------------------------------------------------------------- permutations and heads


class Shuffle(nn.Module):
    """A 2-way channel shuffle written with view / permute / reshape between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1)
        self.c2 = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)
        return self.c2(y).mean((2, 3))


def test_channel_shuffle_is_a_tracked_permutation() -> None:
    gm = trace(Shuffle(), torch.randn(1, 3, 4, 4))
    # c1's channel k of each half is one channel (3 of them); after the shuffle channel
    # 2k + j is channel k of half j, so c2 reads k = 0, 0, 1, 1, 2, 2
    assert _summary(gm) == [
        (3, ("x",), ("c1",), "model input"),
        (3, ("c1",), ("c2",), None),
        (4, ("c2",), (), "model output"),
    ]
    assert _slots(gm, "c1")[1] == [[1] * 6, [0, 1, 2, 0, 1, 2]]
    assert _slots(gm, "c2")[0] == [[1] * 6, [0, 0, 1, 1, 2, 2]]


def test_shufflenet_v1_in_zoo() -> None:
    _, gm = _zoo("shufflenet_v1")
    groups = channel_groups(gm)
    g = _out_group(gm, "units_0_gconv1_0")
    # 12 channels in 3 conv groups: 4 channels, each in every group, shuffled
    assert (groups[g].size, groups[g].frozen) == (4, None)
    assert _slots(gm, "units_0_gconv2_0")[0][1] == [k for k in range(4) for _ in range(3)]


def test_attention_heads_share_the_per_head_dim() -> None:
    _, gm = _zoo("vit")
    infos = _infos(gm)
    mha = infos["blocks_0_attn"]
    assert (mha.kind, mha.frozen) == ("attention", None)
    # nn.MultiheadAttention(24, 4): its input is also its q/k/v width; index j of every
    # head is one channel of the residual stream: 6 channels, each in all 4 heads
    g = int(mha.in_slots[0, 0])
    assert mha.in_slots.tolist() == [[g] * 24, list(range(6)) * 4]
    assert channel_groups(gm)[g].size == 6
    assert (mha.positions, mha.attn_positions, mha.param_positions) == (4 * 17, 17 * 17, 4)


def test_functional_attention_in_zoo() -> None:
    _, gm = _zoo("attention")
    infos = _infos(gm)
    qkv = infos["attns_0_qkv"]
    g = int(qkv.out_slots[0, 0])
    # reshape (b, n, 3, heads, head_dim): q, k and v share the per-head index, tied over heads
    assert qkv.out_slots.tolist() == [[g] * 72, list(range(6)) * 12]
    sdpa = infos["scaled_dot_product_attention"]
    assert (sdpa.kind, sdpa.in_channels, sdpa.out_channels, sdpa.reads) == (
        "attention", 6, 6, (0, 3))
    scores = infos["matmul"]  # q @ k^T: q's head dim read through a mask on q
    assert (scores.kind, scores.in_channels, scores.out_channels, scores.reads) == (
        "matmul", 6, 16, (0, 3))
    mixed = infos["einsum_1"]  # attn @ v: over 16 tokens, writes v's channels
    assert (mixed.in_slots, mixed.in_channels, mixed.out_channels) == (None, 16, 6)
    assert channel_groups(gm)[g].frozen is None


def test_parameters_take_the_channels_they_meet() -> None:
    _, gm = _zoo("vit")
    params = {n.target: n.meta["hwnas_param"] for n in gm.graph.nodes if "hwnas_param" in n.meta}
    stream = int(_infos(gm)["patch"].out_slots[0, 0])
    for name in ("cls", "pos"):  # class token (cat over tokens), position embedding (add)
        assert params[name].dims == (2,)
        assert params[name].slots[0][0].tolist() == [stream] * 24
        assert not params[name].scaled[0].any()
    _, gm = _zoo("convnext")
    params = {n.target: n.meta["hwnas_param"] for n in gm.graph.nodes if "hwnas_param" in n.meta}
    assert params["stage1.gamma"].dims == (0,)  # layer scale
    # LayerNorm2d traced into: F.layer_norm's affine follows the channels
    assert set(params) >= {"stem.1.weight", "stem.1.bias", "down.0.weight"}
    ln = _infos(gm)["layer_norm"]
    assert (ln.kind, ln.reads) == ("norm", (0, 3))
    # stochastic depth passes the channels on
    assert _infos(gm)["stochastic_depth"].kind == "elementwise"
    assert all(g.frozen in (None, "model input", "model output") for g in channel_groups(gm))
    # F.linear / F.conv2d on explicit parameters are layers; their weights take channels
    _, gm = _zoo("attention")
    infos = _infos(gm)
    assert (infos["conv2d"].kind, infos["linear"].kind) == ("conv", "linear")
    params = {n.target: n.meta["hwnas_param"] for n in gm.graph.nodes if "hwnas_param" in n.meta}
    assert params["conv_w"].dims == (0, 1)  # out: the GroupNorm group; in: the (frozen) input
    assert params["w_out"].dims == (0, 1) and params["w_out"].scaled[1].all()
    assert infos["linear"].scaled_params == ("w_out",)


# ------------------------------------------------------------- tracing traps (issues 23, 25)


class _ShapeBranch(nn.Module):
    """Branches on a shape (symbolic tracing fails) and reads the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        if y.shape[-1] % 2 == 0:  # TensorFlow-style "same" padding of even sizes
            y = F.pad(y, (0, 1, 0, 1))
        batch = y.shape[0]
        return self.conv2(y).reshape(batch, -1)


def test_shape_dependent_control_flow_is_specialised_on_the_example() -> None:
    import hwnas

    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    total = hwnas.profile(_ShapeBranch(), x).iloc[-1]
    # conv1 8 * (27 + 1) at 8x8, conv2 4 * (8 + 1) at 9x9 (the padded size)
    assert (int(total["params"]), int(total["ops"])) == (260, 224 * 64 + 36 * 81)
    search = hwnas.wrap(_ShapeBranch(), x)
    assert [g.frozen for g in search.groups] == ["model input", None, "model output"]
    search.gate(1).set_deterministic_([1.0, 0.0] * 4)
    search.eval()
    pruned = hwnas.materialize(search).eval()
    x3 = torch.randn(3, 3, 8, 8)  # the batch stays free
    with torch.no_grad():
        assert pruned(x3).shape == (3, 324)
        assert float((pruned(x3) - search(x3)).abs().max()) < 1e-5
    assert pruned.get_submodule("conv1").out_channels == 4


class _WithDefaults(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                double: bool = False) -> torch.Tensor:
        y = self.fc(x)
        if mask is not None:
            y = y * mask
        return y * 2 if double else y


def test_example_inputs_may_omit_arguments_with_defaults() -> None:
    import hwnas

    x = torch.randn(1, 4)
    gm = trace(_WithDefaults(), x)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    search = hwnas.wrap(_WithDefaults(), x)
    assert search.costs() == {"params": 30.0, "ops": 30.0}


class _MyLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _StdConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_layer_subclasses_computing_their_base_stay_layers() -> None:
    import hwnas

    net = nn.Sequential(_MyLinear(4, 8), nn.ReLU(), _MyLinear(8, 2))
    gm = trace(net, torch.randn(1, 4))
    assert [(n.op, n.target) for n in gm.graph.nodes if n.op != "placeholder"][:3] == [
        ("call_module", "0"), ("call_module", "1"), ("call_module", "2")]
    search = hwnas.wrap(net, torch.randn(1, 4))
    search.gate(1).set_deterministic_([1.0, 0.0] * 4)
    pruned = hwnas.materialize(search.eval())
    assert type(pruned.get_submodule("0")) is _MyLinear
    assert pruned.get_submodule("0").out_features == 4
    # a weight computed from the parameter (weight standardisation) is traced through
    gm = trace(nn.Sequential(_StdConv(3, 8, 3)), torch.randn(1, 3, 8, 8))
    assert "conv2d" in [getattr(n.target, "__name__", n.target) for n in gm.graph.nodes]


class _SignSTE(torch.autograd.Function):
    """Straight-through sign: forward sign(x), backward the incoming gradient."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad


class _BinaryCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _SignSTE.apply(self.bn(self.conv1(x)))
        return self.fc(self.conv2(y).flatten(1))


def _conv1_grad(model: nn.Module, x: torch.Tensor) -> float:
    model(x).square().sum().backward()
    return next(float(p.grad.norm()) for n, p in model.named_parameters()
                if n.endswith("conv1.weight"))


def test_custom_autograd_function_keeps_its_backward() -> None:
    import hwnas

    torch.manual_seed(0)
    net, x = _BinaryCNN().eval(), torch.randn(4, 1, 8, 8)
    plain = _conv1_grad(net, x)
    search = hwnas.wrap(net, x[:1])
    assert [g.frozen for g in search.groups] == ["model input", None, None, "model output"]
    for g in search.free_groups:
        search.gate(g).set_deterministic_(torch.ones(search.gate(g).n))
    search.eval()
    wrapped = _conv1_grad(search, x)
    exported = _conv1_grad(hwnas.materialize(search).eval(), x)
    assert plain > 0.1 and wrapped == pytest.approx(plain, rel=1e-5)
    assert exported == pytest.approx(plain, rel=1e-5)


def test_unknown_ops_freezing_channels_warn_once() -> None:
    import hwnas
    from hwnas.errors import FrozenChannelsWarning

    class Flip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv1(x)
            y = y * (y > 0)  # an element-wise comparison: channels pass through
            return self.conv2(torch.flip(y, dims=[1]))

    with pytest.warns(FrozenChannelsWarning) as caught:
        search = hwnas.wrap(Flip(), torch.randn(1, 3, 8, 8))
    assert len(caught) == 1
    assert str(caught[0].message).startswith(
        "8 channels in 1 group are frozen by ops without a channel rule: unknown op 'flip' "
        "at node flip (8 channels)")
    assert search.groups[1].frozen == "unknown op 'flip' at node flip"


def test_error_messages_name_the_layer_and_shapes() -> None:
    import hwnas

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.raises(ValueError) as info:
        hwnas.wrap(net, torch.randn(1, 1, 8, 8))
    message = str(info.value)
    assert len(message) < 200 and "\n" not in message
    assert message.startswith("input 1x1x8x8 does not fit layer '0' (Conv2d) (expected input"
                              "[1, 1, 8, 8] to have 3 channels, but got 1 channels instead)")
    with pytest.raises(TypeError) as info:
        hwnas.wrap(net, (1, 1, 8, 8))  # type: ignore[arg-type]
    assert str(info.value) == (
        "`example_inputs` must be a tensor or a tuple of tensors, but got the tuple of ints "
        "(1, 1, 8, 8); pass a tensor of that shape, like torch.randn(1, 1, 8, 8)")


class _Caching(nn.Module):
    """Caches a tensor in a dict in eval mode (timm's LeViT attention biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bias = nn.Parameter(torch.randn(4))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.bias * 2
        return self.fc(x) + self.cache[key]


def test_tracing_leaves_no_proxy_in_the_model() -> None:
    import hwnas

    model = _Caching()
    total = hwnas.profile(model, torch.randn(1, 4)).iloc[-1]
    assert int(total["params"]) == 20 and model.cache == {}
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert float((model(x) - (model.fc(x) + model.bias * 2)).abs().max()) == 0.0
