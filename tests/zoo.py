"""A small but architecturally faithful model zoo for tests.

Every model here:

* is built only from plain ``torch.nn`` modules plus functional calls (module and
  functional styles are mixed on purpose, as real code bases do),
* is traceable by ``torch.fx.symbolic_trace`` (no data-dependent control flow; the
  batch and spatial sizes are read with ``x.size(i)`` only, channel counts are
  constants stored on the modules),
* keeps the batch dimension free (no hard-coded batch sizes),
* returns a 2-D ``(batch, num_outputs)`` tensor,
* is fast on CPU (except the entries in :data:`HEAVY`).

This module must not import ``hwnas``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HEAVY", "ZOO", "ZooEntry", "build", "names"]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # including batch 1, e.g. (1, 3, 32, 32)


def conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1
) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN, residual add, ReLU; 1x1 conv-BN shortcut when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32),
        blocks: tuple[int, ...] = (1, 1),
        num_classes: int = 10,
        in_ch: int = 3,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        w0 = widths[0]
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_ch, w0, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_ch, w0, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        cin = w0
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = [BasicBlock(cin, w, 1 if i == 0 else 2)]
            stage += [BasicBlock(w, w) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_small() -> nn.Module:
    return ResNet(widths=(16, 32), blocks=(2, 1), num_classes=10)


def resnet18() -> nn.Module:
    return ResNet(
        widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), num_classes=1000, imagenet_stem=True
    )


# ----------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:  # structural flag fixed at construction: traceable
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 4),  # residual
            InvertedResidual(16, 24, 2, 4),  # no residual (stride 2, channel change)
            InvertedResidual(24, 24, 1, 4),  # residual
            InvertedResidual(24, 32, 1, 4),  # no residual (channel change)
        )
        self.head = nn.Sequential(
            nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(inplace=True)
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


# ------------------------------------------------------------------------ SqueezeNet


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_act = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_act(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 8, 16, 16),
            Fire(32, 8, 16, 16),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 12, 24, 24),
        )
        self.final_conv = nn.Conv2d(48, num_classes, 1)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), self.final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# ---------------------------------------------------------------------- ShuffleNetV2


def channel_shuffle(x: torch.Tensor, channels: int, groups: int) -> torch.Tensor:
    n, h, w = x.size(0), x.size(2), x.size(3)
    x = x.view(n, groups, channels // groups, h, w)
    x = x.transpose(1, 2).contiguous()
    return x.view(n, channels, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.cout = cout
        branch = cout // 2
        if stride == 1:
            assert cin == cout
            b_in = cin // 2
            self.branch1: nn.Module | None = None
        else:
            b_in = cin
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(b_in, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, self.cout, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(48, 96, 2), ShuffleUnit(96, 96, 1))
        self.conv5 = nn.Sequential(
            nn.Conv2d(96, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage3(self.stage2(x)))
        x = x.mean([2, 3])
        return self.fc(x)


# -------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(F.relu(self.norm1(x)))
        new = self.conv2(F.relu(self.norm2(new)))
        return torch.cat([x, new], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    def __init__(self, growth: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        c = 16
        self.conv0 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        block1 = []
        for _ in range(3):
            block1.append(DenseLayer(c, growth))
            c += growth
        self.block1 = nn.Sequential(*block1)
        self.trans1 = Transition(c, c // 2)
        c = c // 2
        block2 = []
        for _ in range(2):
            block2.append(DenseLayer(c, growth))
            c += growth
        self.block2 = nn.Sequential(*block2)
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.trans1(self.block1(self.conv0(x))))
        x = F.relu(self.norm5(x))
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------- Squeeze-Excitation


class SqueezeExcite(nn.Module):
    """Conv-style SE: mean -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid -> scale."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // reduction, 1)
        self.fc2 = nn.Conv2d(c // reduction, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class LinearSqueezeExcite(nn.Module):
    """Linear-style SE (as in the original paper): GAP -> view -> Linear -> view -> scale."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.c = c
        self.fc = nn.Sequential(
            nn.Linear(c, c // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(c // reduction, c, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        s = F.adaptive_avg_pool2d(x, 1).view(n, self.c)
        s = self.fc(s).view(n, self.c, 1, 1)
        return x * s.expand_as(x)


class SEBlock(nn.Module):
    def __init__(self, c: int, linear_se: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c), nn.ReLU(inplace=True), conv_bn(c, c))
        self.se: nn.Module = LinearSqueezeExcite(c) if linear_se else SqueezeExcite(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.se(self.body(x)))


class SENet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16), nn.ReLU(inplace=True))
        self.block1 = SEBlock(16)
        self.down = nn.Sequential(conv_bn(16, 32, stride=2), nn.ReLU(inplace=True))
        self.block2 = SEBlock(32, linear_se=True)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


# ------------------------------------------------------------------ Grouped (ResNeXt)


class ResNeXtBlock(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, groups: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class GroupedNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16), nn.ReLU(inplace=True))
        self.block1 = ResNeXtBlock(16, 16, 16, groups=2)  # identity shortcut
        self.block2 = ResNeXtBlock(16, 32, 32, groups=4, stride=2)  # projection shortcut
        self.gconv = nn.Conv2d(32, 32, 3, 1, 1, groups=4)  # grouped conv with bias
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        x = F.relu(self.gconv(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ------------------------------------------------------------------------------ TCN


class TemporalBlock(nn.Module):
    """Residual block of two dilated causal Conv1d (kernel 3) with BatchNorm1d."""

    def __init__(self, cin: int, cout: int, dilation: int, k: int = 3, pad_mode: str = "pad"):
        super().__init__()
        self.pad = (k - 1) * dilation
        self.pad_mode = pad_mode
        conv_pad = 0 if pad_mode == "pad" else self.pad
        self.conv1 = nn.Conv1d(cin, cout, k, padding=conv_pad, dilation=dilation)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, k, padding=conv_pad, dilation=dilation)
        self.bn2 = nn.BatchNorm1d(cout)
        self.dropout = nn.Dropout(0.1)
        self.downsample: nn.Module | None = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def _causal(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.pad_mode == "pad":  # left-pad then valid conv
            return conv(F.pad(x, (self.pad, 0)))
        return conv(x)[:, :, : -self.pad]  # symmetric padding, chop the future

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(F.relu(self.bn1(self._causal(self.conv1, x))))
        out = self.dropout(F.relu(self.bn2(self._causal(self.conv2, out))))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class TCN(nn.Module):
    def __init__(self, cin: int = 4, hidden: int = 16, num_classes: int = 5) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            TemporalBlock(cin, hidden, 1, pad_mode="pad"),
            TemporalBlock(hidden, hidden, 2, pad_mode="slice"),
            TemporalBlock(hidden, hidden, 4, pad_mode="pad"),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(x)
        return self.head(y[:, :, -1])  # last time step


# ------------------------------------------------------------------- MLP + LayerNorm


class MLPLayerNorm(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 32, num_classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, tokens, dim)
        h = F.gelu(self.ln1(self.fc1(x)))
        x = self.ln2(x + self.fc2(h))
        return self.head(x.mean(1))


# ------------------------------------------------------------------------- Inception


class BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.branch1 = BasicConv(cin, c1, 1)
        self.branch3 = nn.Sequential(BasicConv(cin, c3r, 1), BasicConv(c3r, c3, 3, 1))
        self.branch5 = nn.Sequential(
            BasicConv(cin, c5r, 1), BasicConv(c5r, c5, 3, 1), BasicConv(c5, c5, 3, 1)
        )
        self.pool_proj = BasicConv(cin, cp, 1)
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1(x)
        b3 = self.branch3(x)
        b5 = self.branch5(x)
        bp = self.pool_proj(F.max_pool2d(x, 3, 1, 1))
        return torch.cat([b1, b3, b5, bp], 1)


class InceptionNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = BasicConv(3, 16, 3, 1)
        self.inc = InceptionBlock(16, 8, 8, 16, 4, 8, 8)
        c = self.inc.out_channels
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, 32, 3, 2, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(self.stem(x))
        x = F.relu(self.bn(x))
        x = F.relu(self.conv(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


# -------------------------------------------------------------------- Flatten+Linear


class FlattenLinear(nn.Module):
    """LeNet/VGG-style: conv features, flatten, Linear-ReLU-Dropout-Linear head."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.bn2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
        return self.fc2(x)


# ------------------------------------------------------------------------ digits CNN


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


# ----------------------------------------------------------------------------- extras


class VGGFunctional(nn.Module):
    """All activations / pooling functional; the view-based flatten feeds a Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 32, 3, padding=1)
        self.c4 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.relu(self.c3(x))
        x = F.max_pool2d(F.relu(self.c4(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.dropout(F.relu(self.fc1(x)), 0.3, self.training)
        return self.fc2(x)


class Mixed1dLinear(nn.Module):
    """Conv1d stack flattened (reshape) into Linear layers."""

    def __init__(self, cin: int = 3, length: int = 32, num_classes: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * (length // 2), 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool1d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.conv2(x))
        x = x.reshape(x.size(0), -1)
        return self.fc2(self.act(self.fc1(x)))


class SplitPermute(nn.Module):
    """torch.split into unequal branches, permute to channels-last for a Linear, back."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24), nn.ReLU(inplace=True))
        self.a = conv_bn(8, 8)
        self.b = conv_bn(16, 16, groups=16)
        self.mix = nn.Linear(24, 32)  # pointwise conv expressed as Linear over channels
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.stem(x), 2)
        xa, xb = torch.split(x, [8, 16], dim=1)
        x = F.relu(torch.cat([self.a(xa), self.b(xb)], dim=1))
        x = x.permute(0, 2, 3, 1)  # NHWC
        x = F.gelu(self.norm(self.mix(x)))
        x = x.permute(0, 3, 1, 2)  # NCHW
        return self.fc(x.mean((2, 3)))


# ------------------------------------------------------------- RegNet-style grouped


class RegNetBlock(nn.Module):
    """1x1 conv, 3x3 grouped conv (group width 4), squeeze-excite, 1x1 conv, residual."""

    def __init__(self, c: int, width: int, group_width: int = 4) -> None:
        super().__init__()
        self.a = conv_bn(c, width, 1)
        self.b = conv_bn(width, width, 3, groups=width // group_width)
        self.se = SqueezeExcite(width)
        self.c = conv_bn(width, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b(F.relu(self.a(x))))
        return F.relu(x + self.c(self.se(y)))


class RegNetSE(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, stride=2), nn.ReLU())
        self.block1 = RegNetBlock(16, 24)
        self.down = nn.Sequential(conv_bn(16, 32, 3, stride=2, groups=4), nn.ReLU())
        self.block2 = RegNetBlock(32, 32, group_width=8)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------- ShuffleNet v1 (3-way shuffle)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 conv, a 3-way channel shuffle (reshape-permute-reshape), depthwise 3x3,
    1x1 conv, residual."""

    def __init__(self, c: int, mid: int, groups: int = 3) -> None:
        super().__init__()
        self.groups = groups
        self.gconv1 = conv_bn(c, mid, 1, groups=groups)
        self.dw = conv_bn(mid, mid, 3, groups=mid)
        self.gconv2 = conv_bn(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.gconv1(x))
        n, c, h, w = y.shape
        y = y.reshape(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4)
        y = y.reshape(n, c, h, w)
        return F.relu(x + self.gconv2(self.dw(y)))


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, stride=2), nn.ReLU())
        self.units = nn.Sequential(ShuffleV1Unit(24, 12), ShuffleV1Unit(24, 18))
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(self.stem(x))
        return self.fc(x.mean((2, 3)))


# ------------------------------------------------------------------ ConvNeXt-style


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drops whole examples of a residual branch in training (torchvision's "row" mode)."""
    if not training or p == 0.0:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device)
    return x * keep.bernoulli_(1.0 - p) / (1.0 - p)


torch.fx.wrap("stochastic_depth")  # one opaque call in the graph, as in torchvision


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (functional, between permutes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, NHWC LayerNorm, MLP, per-channel layer scale, stochastic depth."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1 = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return x + stochastic_depth(y, 0.1, self.training)


class ConvNeXtTiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
        self.stage1 = ConvNeXtBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 24, 2, stride=2))
        self.stage2 = ConvNeXtBlock(24)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


# -------------------------------------------------------------------- tiny ViT (MHA)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, two nn.MultiheadAttention blocks."""

    def __init__(self, dim: int = 24, heads: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.dim = dim
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        self.blocks = nn.Sequential(EncoderBlock(dim, heads), EncoderBlock(dim, heads))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        x = self.patch(x).reshape(n, self.dim, -1).permute(0, 2, 1)
        x = torch.cat([self.cls.expand(n, -1, -1), x], dim=1) + self.pos
        x = self.ln(self.blocks(x))
        return self.head(x[:, 0])


# ----------------------------------------------------------- functional attention


class FunctionalAttention(nn.Module):
    """q/k/v from one Linear, split into heads by reshape; scores by ``F.scaled_dot_product
    _attention``, by ``q @ k^T`` or by einsum with a learned per-head bias."""

    def __init__(self, dim: int, heads: int, style: str) -> None:
        super().__init__()
        self.heads, self.head_dim, self.style = heads, dim // heads, style
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if style == "einsum":
            self.bias = nn.Parameter(torch.randn(heads, 16, 16) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.style == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.style == "matmul":
            attn = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
            out = attn.softmax(dim=-1) @ v
        else:
            attn = torch.einsum("bhid,bhjd->bhij", q, k) * self.head_dim ** -0.5 + self.bias
            out = torch.einsum("bhij,bhjd->bhid", attn.softmax(-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class AttentionNet(nn.Module):
    """Tokens of a conv stem through the three functional attention styles, with
    GroupNorm on the conv features and F.linear / F.conv2d layers on explicit weights."""

    def __init__(self, dim: int = 24, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_w = nn.Parameter(torch.randn(16, 3, 3, 3) * 0.2)
        self.conv_b = nn.Parameter(torch.randn(16) * 0.1)
        self.gn = nn.GroupNorm(4, 16)
        self.stem = nn.Conv2d(16, dim, 2, stride=2)
        self.attns = nn.ModuleList(FunctionalAttention(dim, 4, s)
                                   for s in ("sdpa", "matmul", "einsum"))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.w_out = nn.Parameter(torch.randn(num_classes, dim) * 0.2)
        self.b_out = nn.Parameter(torch.randn(num_classes) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn(F.conv2d(x, self.conv_w, self.conv_b, padding=1, stride=2)))
        x = self.stem(x).flatten(2).transpose(1, 2)  # (b, 16 tokens, dim)
        for norm, attn in zip(self.norms, self.attns, strict=True):
            x = x + attn(norm(x))
        return F.linear(x.mean(1), self.w_out, self.b_out)


# ------------------------------------------------------------------------------ zoo

_ENTRIES = [
    ZooEntry("resnet", resnet_small, (1, 3, 32, 32)),
    ZooEntry("resnet18", resnet18, (1, 3, 224, 224)),
    ZooEntry("mobilenetv2", MobileNetV2, (1, 3, 32, 32)),
    ZooEntry("squeezenet", SqueezeNet, (1, 3, 32, 32)),
    ZooEntry("shufflenet", ShuffleNetV2, (1, 3, 32, 32)),
    ZooEntry("densenet", DenseNet, (1, 3, 32, 32)),
    ZooEntry("se", SENet, (1, 3, 32, 32)),
    ZooEntry("grouped", GroupedNet, (1, 3, 32, 32)),
    ZooEntry("tcn", TCN, (1, 4, 64)),
    ZooEntry("mlp_layernorm", MLPLayerNorm, (1, 8, 16)),
    ZooEntry("inception", InceptionNet, (1, 3, 32, 32)),
    ZooEntry("flatten_linear", FlattenLinear, (1, 1, 16, 16)),
    ZooEntry("digits_cnn", DigitsCNN, (1, 1, 8, 8)),
    ZooEntry("vgg_functional", VGGFunctional, (1, 3, 16, 16)),
    ZooEntry("mixed_1d_linear", Mixed1dLinear, (1, 3, 32)),
    ZooEntry("split_permute", SplitPermute, (1, 3, 16, 16)),
    ZooEntry("regnet_se", RegNetSE, (1, 3, 16, 16)),
    ZooEntry("shufflenet_v1", ShuffleNetV1, (1, 3, 16, 16)),
    ZooEntry("convnext", ConvNeXtTiny, (1, 3, 32, 32)),
    ZooEntry("vit", TinyViT, (1, 3, 16, 16)),
    ZooEntry("attention", AttentionNet, (1, 3, 16, 16)),
]

ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}

#: Entries too slow for per-test use (profiling benchmarks only).
HEAVY: set[str] = {"resnet18"}


def names(include_heavy: bool = False) -> list[str]:
    """Zoo entry names, in definition order, optionally without :data:`HEAVY` ones."""
    return [n for n in ZOO if include_heavy or n not in HEAVY]


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Build zoo model ``name`` with seeded weights (left in train mode) and a seeded
    random example input of the entry's ``input_shape``."""
    entry = ZOO[name]
    torch.manual_seed(seed)
    model = entry.factory()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(entry.input_shape, generator=gen)
    return model, x
