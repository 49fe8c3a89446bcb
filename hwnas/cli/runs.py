"""The end-to-end runs behind the command line: search, demo, profile, export.

:func:`run_search` is ``hwnas search``: it checks the output folder, builds the model and
the data from the config's factories, wraps, fits (resuming the folder's checkpoint when it
belongs to the same run), and writes ``search.pt``, the verified ONNX file and the report.
Each step is a function of its own (:func:`build_model`, :func:`build_data`,
:func:`build_search`, :func:`write_outputs`) so other runs (a demo on a LUT target, a
DiffLUT search) can reuse them. Every user-caused problem is an
:class:`~hwnas.errors.HwnasError` naming what was wrong; :mod:`hwnas.cli` prints it as one
line.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from hwnas._internal.devices import describe_device, resolve_device
from hwnas._internal.files import (
    atomic_write,
    ensure_writable_dir,
    load_torch_file,
    remove_stale_parts,
)
from hwnas.cli.console import step
from hwnas.cli.report import fit_profiles, write_report
from hwnas.cli.schema import DEMO_CONFIG, SearchConfig, load_factory, parse_config
from hwnas.cost.profile import profile
from hwnas.errors import (
    ConfigError,
    InvalidTypeError,
    InvalidValueError,
    MissingFileError,
    OutputError,
)
from hwnas.export.onnx import ExportResult, export_onnx
from hwnas.export.program import ProgramResult, export_program, load_program
from hwnas.search import SearchModel, wrap
from hwnas.training.distributed import device_for_rank, init_from_env, is_distributed, shard_loader
from hwnas.training.fit import FitResult, TargetsNotMetWarning, fit, relative_targets

__all__ = ["Loaders", "RunSummary", "build_data", "build_model", "build_search",
           "check_output_file", "demo_config", "export_search_result", "leaf_module_keys",
           "load", "profile_factory", "run_search", "with_overrides", "write_outputs"]

#: Files a search writes into its output folder (besides the report's figures and CSVs).
OUTPUTS = ("checkpoint.pt", "search.pt", "model.onnx", "report.md", "report.html",
           "history.csv", "layers.csv", "costs.csv")
SEARCH_RESULT_FORMAT = "hwnas-search"


@dataclass(frozen=True)
class Loaders:
    """The data of a run: training, validation (early stopping) and test loaders."""

    train: Any
    val: Any | None
    test: Any | None

    def sizes(self) -> dict[str, int | None]:
        """Examples per split (None where a loader's dataset has no length)."""
        def size(loader: Any) -> int | None:
            dataset = getattr(loader, "dataset", None)
            return len(dataset) if dataset is not None and isinstance(dataset, Sized) else None

        return {"train": size(self.train), "validation": size(self.val),
                "test": size(self.test)}


@dataclass
class RunSummary:
    """What :func:`run_search` wrote and measured (rank 0; other ranks get no paths)."""

    folder: Path
    costs: dict[str, float]
    targets: dict[str, float]
    met: dict[str, bool]
    paths: dict[str, Path] = field(default_factory=dict)
    onnx: ExportResult | None = None
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    sizes: dict[str, int | None] = field(default_factory=dict)
    before: pd.DataFrame | None = None
    after: pd.DataFrame | None = None
    resumed_from: int | None = None
    test_accuracy_before: float | None = None
    early_stopping: bool = False
    #: With a [precision] table: what :func:`hwnas.cli.quantized.write_quantized` wrote.
    quantized: dict[str, Any] = field(default_factory=dict)

    @property
    def all_met(self) -> bool:
        return all(self.met.values())


def _call(factory: Any, spec: str, what: str, kwargs: dict[str, Any]) -> Any:
    try:
        return factory(**kwargs)
    except Exception as e:
        raise ConfigError(f"{what} {spec!r} raised {type(e).__name__}: {e}") from e


def _module(value: Any, spec: str, what: str) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise InvalidTypeError(f"{what} {spec!r} must return an nn.Module, but returned "
                               f"{type(value).__name__}")
    return value


def build_model(config: SearchConfig) -> nn.Module:
    """The [model] factory's model (seeded by [search] ``seed``)."""
    torch.manual_seed(config.search.seed)
    spec = config.model.factory
    model = _call(config.factory("model"), spec, "[model] factory", config.model.kwargs)
    return _module(model, spec, "[model] factory")


def build_data(config: SearchConfig) -> Loaders:
    """The [data] factory's loaders: ``.train``, ``.val`` (optional), ``.test``, or a
    ``(train, val, test)`` / ``(train, test)`` tuple."""
    spec = config.data.factory
    data = _call(config.factory("data"), spec, "[data] factory", config.data.kwargs)
    if hasattr(data, "train") and hasattr(data, "test"):
        loaders = Loaders(data.train, getattr(data, "val", None), data.test)
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        loaders = Loaders(data[0], data[1] if len(data) == 3 else None, data[-1])
    else:
        raise InvalidTypeError(
            f"[data] factory {spec!r} must return an object with .train, .val (optional) and "
            f".test loaders, or a (train, val, test) or (train, test) tuple, but returned "
            f"{type(data).__name__}")
    for name in ("train", "val", "test"):
        loader = getattr(loaders, name)
        if loader is not None and isinstance(loader, Sized) and len(loader) == 0:
            raise InvalidValueError(f"the {name} loader of [data] factory {spec!r} is empty "
                                    "(0 batches)")
    if config.search.patience and loaders.val is None:
        raise ConfigError(
            f"[search] patience = {config.search.patience} needs a validation split, but "
            f"[data] factory {spec!r} returned none: return .val (or a (train, val, test) "
            "tuple), or set patience = 0")
    return loaders


def build_search(config: SearchConfig, model: nn.Module) -> tuple[SearchModel, torch.Tensor]:
    """``hwnas.wrap`` of ``model`` as the config says, and the example input."""
    s = config.search
    example = torch.randn(config.model.input_shape)
    search = wrap(model, example, costs=tuple(s.targets), target=config.hardware_target,
                  droprate_init=s.droprate_init, channel_multiple=s.channel_multiple,
                  leaf_modules=leaf_module_keys(model, config.model.leaf_modules),
                  precision=config.precision)
    return search, example


def leaf_module_keys(model: nn.Module, names: tuple[str, ...]) -> tuple[type | str, ...]:
    """The ``[model] leaf_modules`` entries as ``wrap`` takes them: a class name of one of
    the model's modules becomes that class (every module of it stays opaque), a module path
    (as in ``model.named_modules()``) stays a path.

    Raises:
        ConfigError: a name that is neither.

    Example:
        >>> from torch import nn
        >>> leaf_module_keys(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), ("ReLU", "0"))
        (<class 'torch.nn.modules.activation.ReLU'>, '0')
    """
    paths = {name for name, _ in model.named_modules() if name}
    classes = {type(m).__name__: type(m) for m in model.modules()}
    keys: list[type | str] = []
    for name in names:
        if name in classes:
            keys.append(classes[name])
        elif name in paths:
            keys.append(name)
        else:
            raise ConfigError(
                f"[model] leaf_modules: {name!r} is neither the class of a module of the model "
                f"nor a module path; classes: {', '.join(sorted(classes))}; paths are e.g. "
                f"{', '.join(sorted(paths)[:5])}")
    return tuple(keys)


def run_search(config: SearchConfig, progress: bool = True, resume: bool = True,
               trust: bool = False) -> RunSummary:
    """Run a whole search from a :class:`~hwnas.cli.schema.SearchConfig`; write its outputs.

    Writes to ``config.output_dir`` (checked for writability before any training):
    ``checkpoint.pt`` (resumable fit state), ``search.pt`` (config + weights, read by
    ``hwnas export``), ``model.onnx`` (verified), and the report (``report.md``,
    ``report.html``, figures, CSVs). With ``resume`` an existing ``checkpoint.pt`` of the
    same run continues it (one of another run is an error); otherwise it is replaced.
    Early stopping uses the validation split; the test accuracy comes from the test split,
    on which nothing was chosen.
    """
    rank0 = init_from_env()
    out = ensure_writable_dir(config.output_dir)
    for name in OUTPUTS:
        remove_stale_parts(out, name)
    model = build_model(config)
    loaders = build_data(config)
    search, example = build_search(config, model)
    targets = relative_targets(search, config.search.targets)
    fit_config = config.search.fit_config(progress=True if progress else "lines",
                                          device=device_for_rank(config.search.device))
    if rank0:
        print(f"training on {describe_device(resolve_device(fit_config.device))}, precision "
              f"{fit_config.precision}", flush=True)
    checkpoint = out / "checkpoint.pt"
    if not resume and rank0 and checkpoint.exists():
        checkpoint.unlink()
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()  # no rank reads the checkpoint before rank 0 has removed it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TargetsNotMetWarning)  # the summary says it
        result = fit(search, shard_loader(loaders.train, seed=config.search.seed), loaders.val,
                     targets=targets, config=fit_config, checkpoint=checkpoint,
                     resume_key=config.resume_key(), test_data=loaders.test,
                     trust_checkpoint=trust)
    assert result.model is not None  # no stop_after: fit ran to the end
    summary = RunSummary(out, result.costs, targets, result.met, sizes=loaders.sizes(),
                         resumed_from=result.resumed_from,
                         test_accuracy=result.test_accuracy_after,
                         val_accuracy=result.val_accuracy_after,
                         test_accuracy_before=result.test_accuracy_before,
                         early_stopping=bool(config.search.patience))
    if rank0:  # only rank 0 writes files
        write_outputs(summary, config, result)
        if config.precision is not None:  # QONNX, QDQ and the bits, beside the report
            from hwnas.cli.quantized import check_inputs, write_quantized

            assert result.model is not None
            with step(f"exporting and verifying {out / 'model.qonnx.onnx'} (qonnx executor) "
                      f"and {out / 'model.qdq.onnx'} (onnxruntime)"):
                summary.quantized = write_quantized(out, result.search, result.model.cpu(),
                                                    check_inputs(loaders))
            summary.quantized["model"] = result.model
            summary.paths.update(summary.quantized["paths"])
    return summary


def write_outputs(summary: RunSummary, config: SearchConfig, result: FitResult) -> None:
    """``search.pt``, ``model.onnx`` and the report, each announced before and after (they
    take seconds to minutes); fills ``summary``'s measurements."""
    out = summary.folder
    exported = result.model.eval().cpu() if result.model is not None else None
    assert exported is not None
    search = result.search.cpu()
    with atomic_write(out / "search.pt") as tmp:
        torch.save({"format": SEARCH_RESULT_FORMAT, "config": config.to_dict(),
                    "search": search.state_dict(), "model": exported.state_dict()}, tmp)
    with step(f"exporting and verifying {out / 'model.onnx'} (torch.onnx, onnx.checker, "
              "onnxruntime)"):
        summary.onnx = export_onnx(exported, out / "model.onnx", search.example_inputs)
    with step(f"writing the report to {out}"):
        summary.before, summary.after = fit_profiles(result, config.hardware_target)
        summary.paths = write_report(result, out, title=f"hwnas search: {config.model.factory}",
                                     notes=_notes(summary, config),
                                     profiles=(summary.before, summary.after))


def _notes(summary: RunSummary, config: SearchConfig) -> dict[str, str]:
    """The run facts of the CLI's report (the accuracies and targets come from the result)."""
    s = config.search
    onnx = summary.onnx
    assert onnx is not None
    return {
        "model": config.model.factory,
        "target hardware": s.target,
        "split sizes (train / validation / test)":
            " / ".join("-" if v is None else f"{v:,}" for v in summary.sizes.values()),
        "early stopping": (f"on the validation split (warm-up and fine-tune), patience "
                           f"{s.patience}" if s.patience else "off"),
        "test split": "untouched: only reported, never chosen on" if summary.sizes.get("test")
        else "none",
        "resumed from epoch": "" if summary.resumed_from is None else str(summary.resumed_from),
        "ONNX": f"{onnx.path.name}, opset {onnx.opset}, max |ORT - torch| "
                f"{onnx.max_abs_diff:.2e} at batch {onnx.batch_sizes}",
    }


def demo_config(out: str | None = None, quick: bool = False) -> SearchConfig:
    """The built-in digits demo's config (``quick``: 2 warm-up, 3 search, 1 fine-tune epochs)."""
    config = parse_config(DEMO_CONFIG)
    if out is not None:
        config = replace(config, output=replace(config.output, folder=out))
    if quick:
        config = replace(config, search=replace(config.search, warmup_epochs=2,
                                                search_epochs=3, finetune_epochs=1))
    return config


def with_overrides(config: SearchConfig, device: str | None = None,
                   precision: str | None = None) -> SearchConfig:
    """``config`` with the command line's ``--device`` / ``--amp`` (None: keep), which
    set ``[search] device`` / ``precision``.

    Example:
        >>> with_overrides(demo_config(), precision="bf16").search.precision
        'bf16'
    """
    changes: dict[str, Any] = {k: v for k, v in (("device", device), ("precision", precision))
                               if v is not None}
    if not changes:
        return config
    try:
        return replace(config, search=replace(config.search, **changes))
    except ConfigError as e:
        flags = ", ".join("--amp" if k == "precision" else f"--{k}" for k in changes)
        raise ConfigError(f"{flags}: {str(e).removeprefix('[search] ')}") from e


def check_output_file(path: str | Path, what: str) -> Path:
    """``path`` as a file to write: its folder must exist and be writable."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {str(path)!r}: folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a folder, not a file")
    ensure_writable_dir(folder, f"folder of {what}")
    return path


def profile_factory(spec: str, input_shape: tuple[int, ...], target: str) -> pd.DataFrame:
    """``hwnas profile``: the per-layer costs of the model a factory returns."""
    model = _module(_call(load_factory(spec), spec, "factory", {}), spec, "factory")
    return profile(model, torch.randn(input_shape), target=target)


def load(path: str | os.PathLike, trust: bool = False) -> nn.Module:
    """The pruned model of a search, as a plain PyTorch module.

    ``search.pt`` (written by ``hwnas search`` / ``hwnas demo``) holds the run's config and
    state dicts, read with ``weights_only=True``: the model is rebuilt from the config's
    factory, wrapped, pruned and loaded, so the result is a ``torch.fx.GraphModule`` of
    plain ``torch.nn`` layers that trains like any model. A ``.pt2`` file (``hwnas export
    --torch``) is a ``torch.export`` program: it needs neither hwnas nor the model's code,
    and runs in inference mode.

    Args:
        path: ``search.pt`` or a ``.pt2`` program.
        trust: Load a ``search.pt`` that holds more than tensors and plain data (an older
            hwnas's, or one of unknown origin: it could run code when loaded).

    Raises:
        MissingFileError: no such file. InvalidValueError: not a search result.
        UntrustedFileError: the file would run code and ``trust`` is False.

    Example:
        >>> import hwnas
        >>> hwnas.load("no/such/search.pt")
        Traceback (most recent call last):
        ...
        hwnas.errors.MissingFileError: search result 'no/such/search.pt' does not exist
    """
    return _load(path, trust)[0]


def _load(path: str | os.PathLike, trust: bool) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """:func:`load`, and the example inputs of the search (none for a program)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"search result {str(path)!r} does not exist")
    if path.suffix == ".pt2":
        return load_program(path), ()
    state = load_torch_file(path, "search result", trust)
    if not isinstance(state, dict) or state.get("format") != SEARCH_RESULT_FORMAT:
        raise InvalidValueError(f"{str(path)!r} is not a search result written by `hwnas "
                                "search` (expected search.pt of its output folder, or a .pt2 "
                                "program)")
    config = SearchConfig.from_dict(state["config"])
    search, _ = build_search(config, build_model(config))
    search.load_state_dict(state["search"])
    exported = search.eval().export()  # materialize (quantised with a [precision] table)
    exported.load_state_dict(state["model"])
    return exported, search.example_inputs


def export_search_result(path: str | Path, onnx_path: str | Path | None,
                         torch_path: str | Path | None = None, trust: bool = False
                         ) -> tuple[ExportResult | None, ProgramResult | None]:
    """``hwnas export``: the pruned model of a ``search.pt`` as verified ONNX and/or a
    verified ``torch.export`` program, each step announced."""
    onnx_out = check_output_file(onnx_path, "--onnx") if onnx_path is not None else None
    torch_out = check_output_file(torch_path, "--torch") if torch_path is not None else None
    if onnx_out is None and torch_out is None:
        raise InvalidValueError("`hwnas export` needs --onnx PATH and/or --torch PATH, but got "
                                "neither")
    with step(f"rebuilding the pruned model from {path}"):
        model, example = _load(path, trust)
    if not example:
        raise InvalidValueError(f"`hwnas export` reads a search.pt, but got {str(path)!r}")
    onnx = program = None
    if onnx_out is not None:
        with step(f"exporting and verifying {onnx_out} (onnx.checker, onnxruntime)"):
            onnx = export_onnx(model, onnx_out, example)
    if torch_out is not None:
        with step(f"exporting and verifying {torch_out} (torch.export)"):
            program = export_program(model, torch_out, example)
    return onnx, program
