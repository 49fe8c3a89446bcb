"""Tests for hwnas/difflut/kernels/: the fused Triton kernels against the PyTorch reference.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, which must be
set before Triton is first imported) on small CPU tensors; with one, they run compiled on
CUDA. The PyTorch functions of ``reference.py`` are the specification. In the whole suite
Triton is already imported when this file is collected (torchvision imports it), so there
:func:`test_kernel_tests_in_the_interpreter` runs this file again in a fresh process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede Triton's first import

from hwnas.difflut import LUTLayer, kernels  # noqa: E402
from hwnas.difflut.kernels import reference  # noqa: E402
from hwnas.difflut.kernels.memory import peak_bytes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _interpreted() -> bool:
    import triton

    return bool(triton.knobs.runtime.interpret)


def _triton_lut():
    pytest.importorskip("triton", reason="triton is not installed")
    if DEVICE == "cpu" and not _interpreted():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set: "
                    "test_kernel_tests_in_the_interpreter runs these in a fresh process")
    from hwnas.difflut.kernels import triton_lut

    return triton_lut


def test_kernel_tests_in_the_interpreter():
    """Where this process could not run the kernels' tests, a fresh one with the interpreter
    runs them all; each must pass (none skipped)."""
    pytest.importorskip("triton", reason="triton is not installed")
    if DEVICE == "cuda" or _interpreted():
        pytest.skip("the kernel tests run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "not test_kernel_tests_in_the_interpreter"],
        capture_output=True, text=True, env=env, cwd=root, timeout=600)
    summary = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0, out.stdout[-3000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 25 and "skipped" not in summary, summary


def _case(k: int, batch: int = 5, nodes: int = 11, features: int = 13, seed: int = 0):
    g = torch.Generator().manual_seed(seed + k)
    x = torch.rand(batch, features, generator=g)
    index = torch.randint(0, features, (nodes, k), generator=g)
    table = torch.rand(nodes, 2**k, generator=g)
    return x.to(DEVICE), index.to(DEVICE), table.to(DEVICE)


def _reference(x, index, table, grad):
    x = x.detach().clone().requires_grad_()
    table = table.detach().clone().requires_grad_()
    sel = x.index_select(1, index.reshape(-1)).reshape(x.shape[0], *index.shape)
    out = reference.fold(table, sel)
    return (out, *torch.autograd.grad(out, (x, table), grad))


@pytest.mark.parametrize("k", range(2, 9))
def test_fused_values_and_gradients_equal_reference(k):
    triton_lut = _triton_lut()
    x, index, table = _case(k)
    x.requires_grad_()
    table.requires_grad_()
    out = triton_lut.interpolate(x, index.reshape(-1), table)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(k)).to(DEVICE)
    got = (out, *torch.autograd.grad(out, (x, table), grad))
    for a, b in zip(got, _reference(x, index, table, grad), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    assert float(got[1].abs().sum()) > 0 and float(got[2].abs().sum()) > 0


@pytest.mark.parametrize("k", [2, 5, 8])
def test_fused_lookup_equals_reference(k):
    triton_lut = _triton_lut()
    x, index, table = _case(k, batch=7)
    bits = (table > 0.5).to(torch.float32)
    got = triton_lut.lookup(x, index.reshape(-1), bits)
    assert torch.equal(got, reference.lookup(bits, x[:, index]))
    assert got.sum().item() == pytest.approx(float(reference.lookup(bits, x[:, index]).sum()))


@pytest.mark.parametrize("k", [3, 6])
def test_fused_reads_the_table_exactly_on_binary_inputs(k):
    triton_lut = _triton_lut()
    corners = torch.arange(2**k)
    x = ((corners[:, None] >> torch.arange(k)) & 1).float().to(DEVICE)  # row a = address a
    table = torch.rand(3, 2**k, generator=torch.Generator().manual_seed(k)).to(DEVICE)
    index = torch.arange(k, device=DEVICE).expand(3, k)
    assert torch.equal(triton_lut.interpolate(x, index.reshape(-1), table), table.t())


def test_fused_accepts_bfloat16_inputs():
    triton_lut = _triton_lut()
    x, index, table = _case(4)
    xb = x.bfloat16().requires_grad_()
    out = triton_lut.interpolate(xb, index.reshape(-1), table.requires_grad_())
    assert out.dtype == torch.bfloat16
    ref = reference.fold(table, xb.float()[:, index])
    torch.testing.assert_close(out.float(), ref, atol=8e-3, rtol=0)
    out.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and table.grad.dtype == torch.float32


def test_layer_uses_fused_path_when_chosen(monkeypatch):
    """The layer's fused path (chosen on CUDA) gives the reference path's values and grads."""
    _triton_lut()
    torch.manual_seed(0)
    x = torch.rand(6, 12, device=DEVICE)
    results = {}
    for fused in (False, True):
        monkeypatch.setattr(kernels, "uses_fused", lambda table, x, fused=fused: fused)
        random = LUTLayer(12, 9, k=4, seed=1, device=DEVICE).train()
        learnable = LUTLayer(12, 7, k=3, connections="learnable", seed=2, device=DEVICE).train()
        xs = x.clone().requires_grad_()
        out = random(xs).sum() + learnable(xs).pow(2).sum()
        out.backward()
        binary = torch.cat([random.eval()(x), learnable.eval()(x)], 1)
        results[fused] = (out.detach(), xs.grad, random.logits.grad,
                          learnable.connection_logits.grad, binary)
    for a, b in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert float(results[True][-1].sum()) == float(results[False][-1].sum())


def test_tiles_bound_the_partial_table_gradients():
    triton_lut = _triton_lut()
    assert [triton_lut.tile(k) for k in (2, 4, 6, 8)] == [(64, 32), (64, 32), (32, 32),
                                                           (8, 128)]
    for k in range(2, 9):  # ceil(batch / ROWS) * nodes * 2^k <= batch * nodes * k
        assert 2**k / triton_lut.tile(k)[1] <= k


# --------------------------------------------------------------------------- CPU path


@pytest.mark.parametrize("k", range(1, 9))
def test_split_interpolate_equals_fold(k):
    g = torch.Generator().manual_seed(k)
    table = torch.rand(5, 2**k, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.rand(4, 5, k, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 5, generator=g, dtype=torch.float64)
    a = reference.split_interpolate(table, x)
    b = reference.fold(table, x)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    for ga, gb in zip(torch.autograd.grad(a, (table, x), grad),
                      torch.autograd.grad(b, (table, x), grad), strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-12, rtol=0)


def test_cpu_path_chunks_and_memory():
    g = torch.Generator().manual_seed(0)
    table = torch.rand(64, 64, generator=g, requires_grad=True)
    x = torch.rand(64, 64, 6, generator=g, requires_grad=True)

    def step(fn):
        table.grad = x.grad = None
        fn(table, x).sum().backward()
        return table.grad.clone(), x.grad.clone()

    fold_grads = step(reference.fold)
    chunked = step(lambda t, v: reference.interpolate(t, v, max_elements=4096))
    for a, b in zip(chunked, fold_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    fold_peak = peak_bytes(lambda: step(reference.fold))
    split_peak = peak_bytes(lambda: step(reference.split_interpolate))
    # fold keeps batch * nodes * (2^5 + 2^4 + ...) floats for backward, split a few
    # 2^3-wide ones: 2.32 MB and 1.00 MB with torch 2.13
    assert fold_peak > 2 * split_peak
    assert split_peak < 64 * 64 * 4 * 64


def test_dispatch_runs_the_reference_off_cuda():
    table, x = torch.rand(3, 16), torch.rand(2, 3, 4)
    assert not kernels.uses_fused(table, x)
    assert not kernels.uses_fused(table.to("meta"), x.to("meta"))
    assert not kernels.uses_fused(torch.rand(3, 2**9), torch.rand(2, 3, 9))
    torch.testing.assert_close(kernels.interpolate(table, x), reference.fold(table, x))


def test_package_runs_without_triton(tmp_path):
    """hwnas.difflut imports and trains on the CPU when Triton cannot be imported."""
    script = tmp_path / "no_triton.py"
    script.write_text(
        "import sys\n"
        "sys.modules['triton'] = None  # as if not installed: find_spec None, import fails\n"
        "import torch\n"
        "from hwnas.difflut import LUTLayer, kernels\n"
        "layer = LUTLayer(8, 4, k=3, seed=0)\n"
        "x = torch.rand(5, 8, generator=torch.Generator().manual_seed(0))\n"
        "layer.train()(x).sum().backward()\n"
        "print(kernels.triton_available(), sys.modules['triton'] is not None,"
        " round(float(layer.logits.grad.abs().sum()), 4))\n"
        "layer.eval()(x)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    available, imported, grad = out.stdout.split()
    assert (available, imported) == ("False", "False") and float(grad) > 0.1
