"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test tensors are tiny: intra-op threads only add contention (tens of times
    slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clean_registry():
    """Restore the cost registry after a test that registers its own cost functions."""
    from hwnas import cost

    saved = {metric: table.copy() for metric, table in cost._REGISTRY.items()}
    yield cost
    cost._REGISTRY.clear()
    cost._REGISTRY.update(saved)


def _devices() -> list:
    """``cpu`` always, ``cuda`` when there is one (skipped with a reason otherwise), the way
    PyTorch's own suite instantiates device tests."""
    cuda = pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device on this machine"))
    return ["cpu", cuda]


@pytest.fixture(params=_devices())
def device(request) -> str:
    """The device a test runs on: ``cpu``, and ``cuda`` where present."""
    return request.param
