"""Built-in models for the demo, the examples and ``hwnas profile``."""

from __future__ import annotations

from torch import nn

__all__ = ["digits_cnn", "resnet8"]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """The digits CNN of the examples and the demo.

    Conv(1,32,3)-BN-ReLU-Conv(32,64,3)-BN-ReLU-MaxPool2-Conv(64,64,3)-BN-ReLU-GAP-Linear(64,10),
    padding 1, for 8x8 inputs.

    Example:
        >>> import torch
        >>> digits_cnn()(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        *_conv_bn(1, 32), *_conv_bn(32, 64), nn.MaxPool2d(2), *_conv_bn(64, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet8(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    """A ResNet-8 (CIFAR style, 3 stages of one basic block) for 32x32 or smaller inputs.

    Example:
        >>> import torch
        >>> resnet8(1, 10)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    w = width
    return nn.Sequential(
        nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        _Basic(w, w, 1), _Basic(w, 2 * w, 2), _Basic(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes),
    )
