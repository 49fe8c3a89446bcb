"""Sanity checks for the test model zoo (tests/zoo.py)."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

try:  # tests/ as a plain directory on sys.path (pytest rootdir "prepend" import mode)
    from zoo import HEAVY, ZOO, build, names
except ImportError:  # tests/ imported as a package
    from tests.zoo import HEAVY, ZOO, build, names

LIGHT = names()
REQUIRED = {
    "resnet",
    "resnet18",
    "mobilenetv2",
    "squeezenet",
    "shufflenet",
    "densenet",
    "se",
    "grouped",
    "tcn",
    "mlp_layernorm",
    "inception",
    "flatten_linear",
    "digits_cnn",
}


def _batch(x: torch.Tensor, n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rest = torch.randn((n - 1, *x.shape[1:]), generator=gen)
    return torch.cat([x, rest], 0)


def test_registry() -> None:
    assert REQUIRED <= set(ZOO)
    assert HEAVY <= set(ZOO)
    assert "resnet18" in HEAVY
    for name, entry in ZOO.items():
        assert entry.name == name
        assert entry.input_shape[0] == 1
    assert set(LIGHT) == set(ZOO) - HEAVY


@pytest.mark.parametrize("name", LIGHT)
def test_forward_and_trace(name: str) -> None:
    model, x = build(name)
    assert isinstance(model, nn.Module)
    assert model.training  # build() leaves the model in its default (train) mode
    assert tuple(x.shape) == ZOO[name].input_shape
    model.eval()
    x3 = _batch(x, 3)
    with torch.no_grad():
        y1 = model(x)
        y3 = model(x3)
    assert y1.dim() == 2 and y1.shape[0] == 1 and y1.shape[1] >= 2
    assert y3.shape == (3, y1.shape[1])
    assert torch.isfinite(y1).all() and torch.isfinite(y3).all()
    # the batch dimension is free and samples do not interact in eval mode
    torch.testing.assert_close(y3[:1], y1, atol=1e-5, rtol=1e-4)

    traced = torch.fx.symbolic_trace(model)
    assert isinstance(traced, torch.fx.GraphModule)
    traced.eval()
    with torch.no_grad():
        t1 = traced(x)
        t3 = traced(x3)
    torch.testing.assert_close(t1, y1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t3, y3, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", LIGHT)
def test_train_mode_forward_backward(name: str) -> None:
    model, x = build(name)
    y = model(_batch(x, 2))
    assert y.shape[0] == 2 and torch.isfinite(y).all()
    y.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("name", LIGHT)
def test_build_is_seeded(name: str) -> None:
    m1, x1 = build(name, seed=3)
    m2, x2 = build(name, seed=3)
    assert torch.equal(x1, x2)
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    _, x3 = build(name, seed=4)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("name", sorted(HEAVY))
def test_heavy_trace_only(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name].factory()
    traced = torch.fx.symbolic_trace(model)
    ops = {n.op for n in traced.graph.nodes}
    assert {"placeholder", "call_module", "output"} <= ops
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in traced.parameters()) == n_params
    if name == "resnet18":
        assert n_params == 11_689_512  # the canonical ResNet-18 parameter count
