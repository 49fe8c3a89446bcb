"""Bundled data for examples, the demo and tests: scikit-learn's digits (no download)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from hwnas.errors import InvalidTypeError, InvalidValueError

__all__ = ["Digits", "digits"]


@dataclass(frozen=True)
class Digits:
    """The digits splits: tensors and loaders.

    Attributes:
        train / val / test: DataLoaders of ``(images (N, 1, 8, 8) in [0, 1], labels)``;
            ``val`` is carved from the training data (None when ``val_size=0``) and is
            the split to choose on (early stopping); ``test`` is never chosen on.
        x_train, y_train, x_val, y_val, x_test, y_test: The tensors behind them.
        example: One training image with batch size 1, for tracing.
    """

    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def example(self) -> torch.Tensor:
        return self.x_train[:1]

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        return {"train": len(self.y_train), "validation": len(self.y_val),
                "test": len(self.y_test)}


def digits(batch_size: int = 64, seed: int = 0, test_size: float = 0.2,
           val_size: float = 0.1) -> Digits:
    """scikit-learn's 8x8 digits (1797 images, 10 classes): train / validation / test.

    The test split is ``test_size`` of the images, drawn with ``random_state=0`` (the same
    for every seed). The validation split is ``val_size`` of the remaining training
    images, drawn with ``seed``; the training loader shuffles with a generator seeded by
    ``seed``. Pixel values 0..16 are scaled to [0, 1].

    Example:
        >>> d = digits()
        >>> d.sizes()
        {'train': 1293, 'validation': 144, 'test': 360}
        >>> digits(val_size=0).val is None
        True
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidValueError(f"`batch_size` must be an integer >= 1, but got {batch_size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidTypeError(f"`seed` must be an integer, but got {seed!r}")
    for name, value in (("test_size", test_size), ("val_size", val_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value < 1 or (name == "test_size" and value == 0):
            raise InvalidValueError(f"`{name}` must be a fraction in "
                                    f"{'(0, 1)' if name == 'test_size' else '[0, 1)'}, "
                                    f"but got {value!r}")
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=test_size, random_state=0, stratify=None
    )
    n_val = round(val_size * len(idx_train))
    held = torch.zeros(len(idx_train), dtype=torch.bool)
    held[torch.randperm(len(idx_train), generator=torch.Generator().manual_seed(seed))[:n_val]] \
        = True
    idx_val = [i for i, h in zip(idx_train, held.tolist(), strict=True) if h]
    idx_fit = [i for i, h in zip(idx_train, held.tolist(), strict=True) if not h]
    x_train, y_train = x[idx_fit], y[idx_fit]
    x_val, y_val = x[idx_val], y[idx_val]
    x_test, y_test = x[idx_test], y[idx_test]
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True,
                       generator=g)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=256) if n_val else None
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return Digits(train, val, test, x_train, y_train, x_val, y_val, x_test, y_test)
