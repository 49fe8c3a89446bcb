"""Bundled data for examples, the demo and tests: scikit-learn's digits (no download)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["Digits", "digits"]


@dataclass(frozen=True)
class Digits:
    """The digits split: tensors and loaders.

    Attributes:
        train / test: DataLoaders of ``(images (N, 1, 8, 8) in [0, 1], labels)``.
        x_train, y_train, x_test, y_test: The tensors behind them.
        example: One training image with batch size 1, for tracing.
    """

    train: DataLoader
    test: DataLoader
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def example(self) -> torch.Tensor:
        return self.x_train[:1]


def digits(batch_size: int = 64, seed: int = 0, test_size: float = 0.2) -> Digits:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), split 80/20 with ``random_state=0``.

    Pixel values 0..16 are scaled to [0, 1]. The training loader shuffles with a
    generator seeded by ``seed``.

    Example:
        >>> d = digits()
        >>> tuple(d.x_train.shape), tuple(d.x_test.shape)
        ((1437, 1, 8, 8), (360, 1, 8, 8))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, but got {batch_size!r}")
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=test_size, random_state=0, stratify=None
    )
    x_train, y_train = x[idx_train], y[idx_train]
    x_test, y_test = x[idx_test], y[idx_test]
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True,
                       generator=g)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return Digits(train, test, x_train, y_train, x_test, y_test)
