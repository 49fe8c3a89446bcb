"""DiffLUT on any device and dtype: the model's device decides (DESIGN.md, "Devices").

Without a GPU the ``meta`` device stands in for "not the CPU": a CPU tensor meeting a meta
tensor raises, as on CUDA, a host read (``.item()``, ``.cpu()``, ``.tolist()``) of a meta
tensor raises, and a dispatch mode records any op that still receives a CPU tensor (a CPU
index tensor is copied to the GPU on every call). CUDA tests run where CUDA is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from hwnas import cost
from hwnas.cost import load_target
from hwnas.difflut import (
    GaussianThermometerEncoder,
    GroupSum,
    LUTLayer,
    ThermometerEncoder,
    binary_inference_module,
    export_lut_onnx,
    functional_sensitivity,
    lut_report,
)
from hwnas.graph.ir import LayerInfo
from hwnas.hw import export_verilog


def _model(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    data = torch.rand(32, 5) * 10
    model = nn.Sequential(
        ThermometerEncoder(4).fit(data),
        LUTLayer(20, 30, k=4, seed=1, record_inputs=True),
        LUTLayer(30, 20, k=6, connections="learnable", seed=2, record_inputs=True),
        GroupSum(4, tau=3.0),
    )
    return model, data


def _regularizers(model: nn.Module, layer_inputs: torch.Tensor) -> torch.Tensor:
    terms = [functional_sensitivity(model, p=p, mode=mode) for p in (1, 2)
             for mode in (None, "input", "random", "exact")]
    terms.append(functional_sensitivity(model[1], inputs=layer_inputs, mode="input"))
    return torch.stack(terms).sum()


class CpuTensors(TorchDispatchMode):
    """Records the aten ops that get a CPU tensor with a dim (0-d CPU scalars are allowed)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = pytree.tree_leaves((args, kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0
               for t in flat):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


# --------------------------------------------------------------------------- meta


def test_meta_training_step_meets_no_cpu_tensor_and_reads_nothing_back():
    model, data = _model()
    model = model.to("meta")
    x = data.to("meta")
    with CpuTensors() as mode:
        for _ in range(2):  # the second call has nothing left to create on the CPU
            out = model.train()(x)
            loss = out.logsumexp(1).mean() + _regularizers(model, model[0](x))
            loss.backward()
        binary = model.eval()(x)
    assert mode.ops == []
    assert (out.device.type, binary.device.type, loss.dtype) == ("meta", "meta", torch.float32)
    assert model[2].connection_logits.grad.device.type == "meta"
    assert tuple(binary.shape) == (32, 4)


def test_layers_and_encoders_are_built_and_fitted_where_asked():
    cpu = LUTLayer(10, 6, k=3, seed=4, connections="learnable")
    with torch.device("meta"):
        meta = LUTLayer(10, 6, k=3, seed=4)
        enc = ThermometerEncoder(3)
    assert (meta.logits.device.type, meta.connections.device.type) == ("meta", "meta")
    assert enc.thresholds.device.type == "meta"
    wide = LUTLayer(10, 6, k=3, seed=4, connections="learnable", dtype=torch.float64)
    assert wide.logits.dtype == torch.float64
    assert torch.equal(wide.logits, cpu.logits.double())  # drawn on the CPU, then converted
    assert torch.equal(wide.connection_indices(), cpu.connection_indices())
    enc.fit(torch.rand(10, 2))  # computed where the data is, kept where the encoder is
    assert enc.thresholds.device.type == "meta" and tuple(enc.thresholds.shape) == (2, 3)
    data = torch.rand(10, 2, device="meta")  # thresholds computed on the data's device
    for fitted in (ThermometerEncoder(3).to("meta").fit(data),
                   ThermometerEncoder(3, method="uniform").to("meta").fit(data),
                   GaussianThermometerEncoder(3).to("meta").fit(data)):
        assert fitted.thresholds.device.type == "meta" and fitted.out_features == 6


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-6), (torch.bfloat16, 3e-2)])
def test_float64_and_bfloat16_models_match_float32(dtype, atol):
    ref, data = _model()
    model, _ = _model()
    model = model.to(dtype)
    x = data.to(dtype)
    soft, soft_ref = model.train()(x), ref.train()(data)
    assert soft.dtype == dtype
    torch.testing.assert_close(soft.float(), soft_ref, atol=atol * 10, rtol=0)
    torch.manual_seed(1)  # the same random addresses for both
    reg = _regularizers(model, model[0](x))
    torch.manual_seed(1)
    reg_ref = _regularizers(ref, ref[0](data))
    assert reg.dtype == torch.float32  # a regularizer term is float32 whatever the model
    assert reg.item() == pytest.approx(reg_ref.item(), abs=atol * 40)
    (soft.float().sum() + reg).backward()
    assert model[1].logits.grad.dtype == dtype
    # binary mode: the truth tables are the same bits in every dtype
    bits = (torch.rand(16, 20) > 0.5).float()
    layer_ref = ref[1].eval()
    assert torch.equal(model[1].eval()(bits.to(dtype)).float(), layer_ref(bits))


@pytest.mark.parametrize("connections", ["random", "learnable"])
def test_bfloat16_inputs_to_a_float32_layer(connections):
    layer = LUTLayer(12, 8, k=5, connections=connections, seed=3)
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(3))
    xb = x.bfloat16().requires_grad_()
    out = layer.train()(xb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(xb.detach().float()), atol=2e-2, rtol=0)
    out.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and layer.logits.grad.dtype == torch.float32
    assert torch.equal(layer.eval()(xb).float(), layer(xb.float()))


def test_encoders_fit_float64_data_as_before():
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    quantile = ThermometerEncoder(2).fit(x).thresholds
    uniform = ThermometerEncoder(2, method="uniform").fit(x).thresholds
    gauss = GaussianThermometerEncoder(2).fit(x).thresholds
    assert quantile.dtype == uniform.dtype == gauss.dtype == torch.float32
    expected = x.float().quantile(torch.tensor([1 / 3, 2 / 3]), dim=0).t()
    torch.testing.assert_close(quantile, expected)
    assert uniform[0, 0].item() == pytest.approx(
        float(x[:, 0].min() + (x[:, 0].max() - x[:, 0].min()) / 3), abs=1e-5)
    assert gauss[1, 1].item() == pytest.approx(
        float(x[:, 1].mean() + x[:, 1].std(unbiased=False) * 0.4307273), abs=1e-5)


# --------------------------------------------------------------------------- devices


def test_training_step_and_exports_on_device(device, tmp_path):
    model, data = _model()
    cpu_model, _ = _model()
    model = model.to(device)
    x = data.to(device)
    out = model.train()(x)
    loss = out.logsumexp(1).mean() + _regularizers(model, model[0](x))
    loss.backward()
    assert model[1].logits.grad.device.type == device
    model.eval()
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    cpu_model.eval()
    net = binary_inference_module(model)
    assert next(iter(net.buffers())).device.type == device  # on the model's device
    with torch.no_grad():  # the same scores (a GPU may round count / tau in the last bit)
        torch.testing.assert_close(net(x).cpu(), cpu_model(data), rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x).cpu(), cpu_model(data), rtol=0, atol=1e-6)
    path = export_lut_onnx(model, tmp_path / "m.onnx", x[:4])
    assert path.exists()
    v = export_verilog(model, tmp_path / "m.v", input_bits=4, input_range=(0.0, 10.0))
    v_cpu = export_verilog(cpu_model, tmp_path / "c.v", input_bits=4, input_range=(0.0, 10.0))
    assert (tmp_path / "m.v").read_text() == (tmp_path / "c.v").read_text()
    assert v.node_inputs == v_cpu.node_inputs
    report, report_cpu = lut_report(model, "xc7-lut6"), lut_report(cpu_model, "xc7-lut6")
    assert report["luts"].tolist() == report_cpu["luts"].tolist()
    luts = [float(cost.evaluate("luts", LayerInfo(name="n", target="n", kind="layer",
                                                   module_type=LUTLayer, module=m[1]),
                                {}, load_target("ice40-lut4"))) for m in (model, cpu_model)]
    assert luts[0] == luts[1] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_step_reads_nothing_back_after_the_first_call():
    model, data = _model()
    model = model.cuda().train()
    x = data.cuda()
    model(x)  # a training forward records the layers' inputs (mode "input" reads them)
    _regularizers(model, model[0](x)).backward()  # first call: may create what it reuses
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(x)
        (out.logsumexp(1).mean() + _regularizers(model, model[0](x))).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(out.detach().cpu().numpy()).all()
