"""The search step against plain training: operations per step (any machine) and time per
step on a GPU (CUDA only).

1. Operations: every aten operation one training step dispatches (forward, loss,
   regularizer, backward, optimizer step), counted with a ``TorchDispatchMode`` after a
   first step, for plain training and for the wrapped model with DUCCIO: all operations,
   and the ones that launch a kernel (views, ``detach`` and profiler markers excluded),
   with PyTorch's default Adam (a for-loop over the parameters on the CPU) and with
   ``foreach=True`` (the GPU default). On a launch-bound GPU each kernel costs a launch.
2. Time (CUDA only): median of the steps, the variants interleaved in a shuffled order on
   the same batches, ``torch.cuda.synchronize()`` around each step: the digits CNN
   (batch 64), ResNet-18 at 32 px (batch 256), ResNet-18 and MobileNetV2 at 224 px
   (batch 64). Without CUDA this part says so and is skipped.

Writes reports/gpu.md.

Run: python examples/bench_gpu.py [--steps 60]
"""

from __future__ import annotations

import argparse
import collections
import copy
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import hwnas
from hwnas.zoo.models import digits_cnn, resnet8

ROOT = Path(__file__).resolve().parents[1]
#: Operations that launch no kernel: views, detach, and the optimizer's profiler markers.
NO_KERNEL = {"aten.detach.default", "aten.view.default", "aten.t.default",
             "aten.expand.default", "aten.slice.Tensor", "aten.narrow.default",
             "aten._unsafe_view.default", "aten.alias.default", "aten.as_strided.default",
             "profiler._record_function_enter_new.default",
             "profiler._record_function_exit._RecordFunction"}


class Ops(TorchDispatchMode):
    """Counts every aten operation dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def kernels(self) -> int:
        return sum(v for k, v in self.counts.items() if k not in NO_KERNEL)


def steps(factory, shape, batch: int, adam: dict, seed: int = 0, device: str = "cpu"):
    """(plain step, search step with DUCCIO) on one batch on ``device``, each a closure."""
    torch.manual_seed(seed)
    net = factory().to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    plain = copy.deepcopy(net).train()
    opt = torch.optim.Adam(plain.parameters(), 1e-3, **adam)
    search = hwnas.wrap(net, x[:1]).train()
    reg = hwnas.DUCCIO(hwnas.relative_targets(search, {"params": 0.5, "ops": 0.5}),
                       task_loss=1.0)
    opt2 = torch.optim.Adam([{"params": list(search.weight_parameters())},
                             {"params": list(search.arch_parameters()), "lr": 0.1}], 1e-3,
                            **adam)

    def plain_step():
        loss = F.cross_entropy(plain(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def search_step():
        loss = F.cross_entropy(search(x), y) + reg(search, 5, 20)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()

    return plain_step, search_step


def count(step) -> Ops:
    step()  # the first step builds caches and the optimizer state
    with Ops() as ops:
        step()
    return ops


#: The Adam variants counted: PyTorch's default (a for-loop over the parameters on the
#: CPU), foreach (the default on a GPU) and fused (what hwnas.fit uses).
ADAMS = {"default (for-loop on CPU)": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def op_rows() -> list[dict]:
    rows = []
    for name, factory, shape in (("digits CNN", digits_cnn, (1, 8, 8)),
                                 ("ResNet-8", resnet8, (3, 32, 32))):
        counted = {label: [count(s) for s in steps(factory, shape, 16, adam)]
                   for label, adam in ADAMS.items()}
        pairs = [(label, label) for label in ADAMS]
        pairs.append(("default (for-loop on CPU)", "fused"))  # your loop against fit's step
        for plain_adam, search_adam in pairs:
            plain, search = counted[plain_adam][0], counted[search_adam][1]
            rows.append({"model": name, "Adam": plain_adam if plain_adam == search_adam
                         else f"plain {plain_adam}, search {search_adam} (as fit runs it)",
                         "plain": plain.total, "search": search.total,
                         "ratio": search.total / plain.total,
                         "plain kernels": plain.kernels, "search kernels": search.kernels,
                         "kernel ratio": search.kernels / plain.kernels})
    return rows


def gpu_rows(n_steps: int) -> list[dict]:
    """Median step time of plain / wrapped / wrapped + DUCCIO on CUDA (import of
    torchvision's model definitions as the tests do; see tests/tv_zoo.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tv_zoo import import_torchvision  # the model definitions only (CUDA part)

    models = import_torchvision().models
    cases = [("digits CNN", digits_cnn, (1, 8, 8), 64),
             ("ResNet-18, 32 px", lambda: models.resnet18(num_classes=10), (3, 32, 32), 256),
             ("ResNet-18, 224 px", lambda: models.resnet18(num_classes=10), (3, 224, 224), 64),
             ("MobileNetV2, 224 px", lambda: models.mobilenet_v2(num_classes=10),
              (3, 224, 224), 64)]
    rows = []
    for name, factory, shape, batch in cases:
        plain, search = steps(factory, shape, batch, {"fused": True}, device="cuda")
        times: dict[str, list[float]] = {"plain": [], "search": []}
        for i in range(n_steps + 10):
            order = list(times)
            random.shuffle(order)
            for key in order:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                (plain if key == "plain" else search)()
                torch.cuda.synchronize()
                if i >= 10:
                    times[key].append(time.perf_counter() - t0)
        p, s = (statistics.median(times[k]) * 1e3 for k in ("plain", "search"))
        rows.append({"model": name, "batch": batch, "plain_ms": p, "ratio": s / p})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default=str(ROOT / "reports" / "gpu.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = op_rows()
    lines = ["# The search step against plain training", "",
             f"Command: `python examples/bench_gpu.py --steps {args.steps}` (torch "
             f"{torch.__version__}).", "",
             "## Operations per step (counted on the CPU with a TorchDispatchMode)", "",
             "One step: forward, cross-entropy, DUCCIO on params and MACs (search only), "
             "backward, Adam (gates in their own parameter group); batch 16, after a first "
             "step. 'kernels' leaves out the operations that launch none (views, detach, "
             "profiler markers).", "",
             "| model | Adam | plain | search + DUCCIO | ratio | plain kernels | search "
             "kernels | kernel ratio |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['Adam']} | {r['plain']} | {r['search']} | "
                     f"{r['ratio']:.2f}x | {r['plain kernels']} | {r['search kernels']} | "
                     f"{r['kernel ratio']:.2f}x |")
    lines += ["", "## Time per step on a GPU", ""]
    if torch.cuda.is_available():
        lines += [f"Device: {torch.cuda.get_device_name()}; median of {args.steps} steps, "
                  "interleaved in a shuffled order.", "",
                  "| model | batch | plain (ms) | search + DUCCIO |", "|---|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['plain_ms']:.2f} | {r['ratio']:.2f}x |"
                  for r in gpu_rows(args.steps)]
    else:
        lines.append("Skipped: this machine has no CUDA device, so no GPU time was measured "
                     "(run this script on a GPU machine to fill this table).")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
