"""The device and precision policy (hwnas/_internal/devices.py and DESIGN.md's "Devices and
precision"): the model's device decides; the search step reads nothing back to the host;
gate logits, the differentiable costs and the regularizer stay float32 whatever the model's dtype;
exports verify a float32 CPU copy; wrap -> fit -> export -> ONNX on every device the
machine has and in every precision FitConfig offers.

Without a GPU the ``meta`` device stands in for "not the CPU": a meta tensor has no
values, so a host read (``.item()``, ``float()``, ``.tolist()``) raises there, and a CPU
tensor that meets a meta tensor raises, as it does on CUDA.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from zoo import build

import hwnas
from hwnas._internal.devices import autocast, resolve_device
from hwnas.errors import ExportError, InvalidValueError
from hwnas.training.distributed import device_for_rank

# models with every kind of mask: weight masks, BatchNorm folds, channel masks on
# activations, parameter masks, masked LayerNorm / GroupNorm, attention
META_MODELS = ["digits_cnn", "resnet", "densenet", "grouped", "mlp_layernorm", "vit",
               "attention", "convnext", "shufflenet_v1", "tcn"]


def _data(n: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def _cfg(**kw) -> hwnas.FitConfig:
    base = dict(warmup_epochs=1, search_epochs=2, finetune_epochs=1, progress=False)
    base.update(kw)
    return hwnas.FitConfig(**base)


def _small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))


# ----------------------------------------------------------------------------- meta device
class CpuTensors(TorchDispatchMode):
    """Records every aten op that gets a CPU tensor with a dim (a 0-d CPU scalar is allowed
    beside a device tensor, as on CUDA). Meta catches a CPU operand of arithmetic by itself,
    but not a CPU index tensor, which CUDA copies to the device on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in pytree.tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0:
                self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def test_meta_is_a_faithful_stand_in_for_a_device():
    """The premise of the meta tests: a host read and a CPU operand both fail there, and
    the dispatch mode sees a CPU index."""
    t = torch.ones(3, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        float(t.sum())
    with pytest.raises(RuntimeError, match="not on the expected device"):
        t * torch.ones(3)
    index, two = torch.tensor([0, 1]), torch.tensor(2.0)
    with CpuTensors() as mode:
        t.index_select(0, index)
        t * two
    assert mode.found == ["aten.index_select.default"]


@pytest.mark.parametrize("name", META_MODELS)
@pytest.mark.parametrize("mode", ["expected", "straight_through"])
def test_search_step_on_meta_reads_nothing_back(name, mode):
    """Forward with sampled gates, the differentiable costs, DUCCIO after its first call and
    the backward pass all run on the meta device: no host read, no CPU tensor."""
    model, x = build(name)
    search = hwnas.wrap(model, x)
    search.cost_mode = mode
    reference = search.reference_costs()
    reg = hwnas.DUCCIO({k: 0.5 * reference[k] for k in ("params", "ops")}, task_loss=1.0)
    reg(search, 0, 4)  # the first call may read the costs once (Eq. 13)
    search.to("meta").train()

    def step():
        out = search(torch.randn(4, *x.shape[1:], device="meta"))
        term = reg(search, 1, 4)
        (out.float().sum() + term).backward()
        return out, term

    step()  # the first step on a device builds its index and cost plans there, once
    with CpuTensors() as cpu:
        out, term = step()
    assert out.device.type == "meta" and term.device.type == "meta"
    assert cpu.found == []
    grad = search.gates.log_alpha.grad
    assert grad is not None and grad.device.type == "meta"
    assert search.cost("luts" if "luts" in search.cost_names else "params").device.type == "meta"


def test_wrap_puts_the_search_where_the_model_is():
    """A model on another device (meta here): gates, every mask index buffer and the cost
    plans live there; the unpruned costs are still exact (counted on the CPU)."""
    model, x = build("resnet")
    search = hwnas.wrap(model.to("meta"), x)  # the CPU example follows the model
    devices = {t.device.type for t in (*search.parameters(), *search.buffers())}
    assert devices == {"meta"}
    assert search.cost("params").device.type == "meta"
    plain = hwnas.wrap(build("resnet")[0], x)
    assert search.reference_costs() == plain.reference_costs()


def test_to_moves_gates_and_masks_and_back():
    model, x = build("attention")
    search = hwnas.wrap(model, x)
    search.to("meta")
    assert {t.device.type for t in (*search.parameters(), *search.buffers())} == {"meta"}
    search.to_empty(device="cpu")  # values are gone on meta; a real device again
    assert {t.device.type for t in (*search.parameters(), *search.buffers())} == {"cpu"}


# --------------------------------------------------------------------------------- dtypes
def test_gate_logits_stay_float32_in_a_bf16_search():
    model, x = build("digits_cnn")
    search = hwnas.wrap(model, x).to(torch.bfloat16)
    assert search.gates.log_alpha.dtype == torch.float32
    assert {p.dtype for p in search.weight_parameters()} == {torch.bfloat16}
    out = search.train()(x.bfloat16().repeat(4, 1, 1, 1))
    assert out.dtype == torch.bfloat16
    reg = hwnas.DUCCIO({"params": 1000.0}, task_loss=1.0)
    term = reg(search)
    assert term.dtype == torch.float32 and float(term.detach()) > 0  # costs are never bf16
    # a bf16 logit could not tell 0.999 from 1: the float32 one keeps the value
    search.gate(search.free_groups[0]).set_deterministic_(
        torch.full((search.gate(search.free_groups[0]).n,), 0.999))
    value = search.channel_gate_values(search.free_groups[0])[0].detach()
    assert float(value) == pytest.approx(0.999)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["digits_cnn", "attention", "vit", "mlp_layernorm"])
def test_materialize_keeps_the_dtype(tmp_path, name, dtype):
    """A float64 / bf16 search (attention products included, whose folded gate values become
    constants) materialises in its own dtype and exports float32 ONNX."""
    model, x = build(name)
    search = hwnas.wrap(model.to(dtype), x.to(dtype))
    torch.manual_seed(1)
    for g in search.free_groups:
        gate = search.gate(g)
        values = 0.5 + 0.5 * torch.rand(gate.n)
        values[::3] = 0.0
        gate.set_deterministic_(values)
    pruned = hwnas.materialize(search.eval())
    assert {t.dtype for t in pruned.parameters()} == {dtype}
    assert {b.dtype for b in pruned.buffers() if b.is_floating_point()} <= {dtype}
    xb = x.to(dtype).repeat(3, *[1] * (x.dim() - 1))
    with torch.no_grad():
        expected, got = search(xb), pruned(xb)
    tol = 1e-9 if dtype == torch.float64 else 0.1
    assert got.dtype == dtype and float((expected - got).abs().max()) <= tol
    result = hwnas.export_onnx(pruned, tmp_path / "m.onnx", x.to(dtype))
    assert result.max_abs_diff < 1e-4 and result.params > 0
    assert next(pruned.parameters()).dtype == dtype  # the user's model is not converted


def test_export_onnx_of_a_float64_model_verifies_a_float32_copy(tmp_path):
    import onnx

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    result = hwnas.export_onnx(net, tmp_path / "d.onnx", torch.randn(1, 4, dtype=torch.float64))
    proto = onnx.load(str(tmp_path / "d.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert result.max_abs_diff < 1e-5 and result.params == 58.0
    assert net[0].weight.dtype == torch.float64


def test_export_onnx_turns_onnxruntime_errors_into_export_errors(tmp_path, monkeypatch):
    import onnxruntime as ort

    def broken(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : simulated")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    with pytest.raises(ExportError, match="onnxruntime cannot load the exported model: "
                                          r"\[ONNXRuntimeError\]"):
        hwnas.export_onnx(nn.Linear(3, 2), tmp_path / "x.onnx", torch.randn(1, 3))
    assert not (tmp_path / "x.onnx").exists()


def test_export_onnx_refuses_a_meta_model(tmp_path):
    with pytest.raises(ExportError, match="'meta' device"):
        hwnas.export_onnx(nn.Linear(3, 2).to("meta"), tmp_path / "x.onnx", torch.randn(1, 3))


def test_masked_norm_statistics_in_float32():
    """A bf16 LayerNorm over gated channels: the masked statistics are float32 sums, so
    the result equals the float32 computation rounded once."""
    model, x = build("mlp_layernorm")
    search = hwnas.wrap(model, x)
    search32 = copy.deepcopy(search).eval()
    search16 = search.to(torch.bfloat16).eval()
    xb = torch.randn(4, *x.shape[1:]) * 50 + 1000  # a large mean: bf16 statistics fail here
    with torch.no_grad():
        ref, got = search32(xb.bfloat16().float()), search16(xb.bfloat16())
    assert got.dtype == torch.bfloat16
    assert float((ref - got.float()).abs().max()) < 0.25


# ----------------------------------------------------------------------------------- fit
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_fit_export_onnx_on_each_device_and_precision(tmp_path, device, precision):
    """wrap -> fit -> export -> ONNX (DESIGN contract 8) with contracts 1-2 on the result."""
    torch.manual_seed(0)
    search = hwnas.wrap(_small_cnn().to(device), torch.randn(1, 1, 8, 8))
    targets = hwnas.relative_targets(search, {"params": 0.6})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fp16 on the CPU is slow: it says so
        result = hwnas.fit(search, _data(), _data(32, 1), targets=targets,
                           config=_cfg(precision=precision))
    assert result.finished and result.met == {"params": True}
    assert search.gates.log_alpha.device.type == device
    assert search.gates.log_alpha.dtype == torch.float32
    assert next(result.model.parameters()).device.type == device
    assert result.history["loss"].notna().all()
    # the exported model equals the search model in eval mode before fine-tuning
    exported = hwnas.materialize(search.eval())
    x = torch.randn(5, 1, 8, 8, device=device)
    with torch.no_grad():
        assert float((exported(x) - search(x)).abs().max()) < 1e-5
    costs = hwnas.profile(exported.cpu(), torch.randn(1, 1, 8, 8)).iloc[-1]
    assert float(costs["params"]) == search.costs()["params"]
    onnx = hwnas.export_onnx(result.model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    assert onnx.max_abs_diff < 1e-4


def test_fit_trains_the_forward_under_autocast():
    """precision='bf16': the layers of a training step compute in bf16, the loss and the
    regularizer do not, and the weights stay float32."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.dtype)
            return x

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), Probe(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    search = hwnas.wrap(net, torch.randn(1, 1, 8, 8), leaf_modules=(Probe,))
    seen.clear()
    hwnas.fit(search, _data(), regularizer=lambda model, e, n: 1e-3 * model.cost("params"),
              config=_cfg(precision="bf16", search_epochs=1, finetune_epochs=0))
    assert torch.bfloat16 in seen
    assert {p.dtype for p in search.parameters()} == {torch.float32}


def test_fit_refuses_a_device_the_machine_lacks():
    search = hwnas.wrap(_small_cnn(), torch.randn(1, 1, 8, 8))
    if torch.cuda.is_available():
        bad = f"cuda:{torch.cuda.device_count()}"
    else:
        bad = "cuda"
    with pytest.raises(InvalidValueError, match=f"`device` '{bad}' is not available"):
        hwnas.fit(search, _data(), targets={"params": 100.0}, config=_cfg(device=bad))
    with pytest.raises(InvalidValueError, match="`device` must be 'auto', 'cpu', 'cuda'"):
        _cfg(device="gpu0")
    with pytest.raises(InvalidValueError, match="`precision` must be one of 'fp32', 'bf16'"):
        _cfg(precision="fp8")


def test_fit_on_cpu_with_fp16_says_it_is_slow():
    search = hwnas.wrap(_small_cnn(), torch.randn(1, 1, 8, 8))
    with pytest.warns(UserWarning, match="'fp16' on the CPU has no fast kernels"):
        hwnas.fit(search, _data(16), config=_cfg(precision="fp16", search_epochs=0,
                                                 finetune_epochs=0))


def test_resolve_device():
    net = nn.Linear(1, 1)
    assert resolve_device(None, net) == torch.device("cpu")
    assert resolve_device(None, net.to("meta")) == torch.device("meta")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").index == torch.cuda.current_device()


def test_device_for_rank(monkeypatch):
    """Under torchrun a CUDA setting becomes cuda:LOCAL_RANK (DDP's device_ids=[rank])."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_for_rank("auto") == "cuda:1"
    assert device_for_rank("cuda:0") == "cuda:1"
    assert device_for_rank("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_for_rank("auto") == "auto"
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_for_rank("cuda:0") == "cuda:0"


def test_autocast_context():
    with autocast(torch.device("cpu"), "fp32"):
        assert F.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert F.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.bfloat16


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_resumes_on_another_device(tmp_path, device):
    """A checkpoint written on one device resumes on another (here: written on ``device``,
    resumed on the CPU, and the other way round), equal to an uninterrupted run."""
    def run(dev, ckpt, stop_after=None):
        torch.manual_seed(0)
        search = hwnas.wrap(_small_cnn(), torch.randn(1, 1, 8, 8))
        return hwnas.fit(search, _data(), targets={"params": 400.0}, checkpoint=ckpt,
                         config=_cfg(device=dev, stop_after=stop_after))

    full = run(device, None)
    for k, (first, second) in enumerate(((device, "cpu"), ("cpu", device))):
        ckpt = tmp_path / f"{k}-{first}-{second}.pt"
        run(first, ckpt, stop_after=2)
        resumed = run(second, ckpt)
        assert resumed.resumed_from == 2
        assert resumed.costs == full.costs
        if first == second == "cpu":
            assert resumed.history["loss"].tolist() == full.history["loss"].tolist()


class Ops(TorchDispatchMode):
    """Every aten operation dispatched inside the block, with the dtypes it produced."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.float64: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64
               for t in pytree.tree_leaves(out)):
            self.float64.append(str(func))
        return out


@pytest.mark.parametrize("name", ["digits_cnn", "resnet", "densenet"])
def test_a_search_step_reads_nothing_back_and_computes_no_float64(name):
    """The whole training step (forward, loss, DUCCIO, backward, fit's Adam) of a search:
    no host read (``aten._local_scalar_dense`` is ``.item()``), no float64 arithmetic; and
    its operation count stays where reports/gpu.md measured it."""
    from hwnas.training.config import FitConfig
    from hwnas.training.run import make_optimizer

    model, x = build(name)
    search = hwnas.wrap(model, x).train()
    search.cost_mode = "straight_through"
    reg = hwnas.DUCCIO(hwnas.relative_targets(search, {"params": 0.5, "ops": 0.5}),
                       task_loss=1.0)
    opt = make_optimizer(search.weight_parameters(), search.arch_parameters(), FitConfig())
    xb, y = torch.randn(8, *x.shape[1:]), torch.randint(0, 10, (8,))

    def step():
        loss = F.cross_entropy(search(xb), y) + reg(search, 5, 20)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with Ops() as ops:
        step()
    assert "aten._local_scalar_dense.default" not in ops.ops
    assert ops.float64 == []
    if name == "digits_cnn":  # reports/gpu.md: 158-161 with fused Adam (71 for plain
        assert len(ops.ops) <= 165  # training); 303 before the fused costs and keep mask
