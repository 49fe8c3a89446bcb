"""The search configuration file (TOML) of ``hwnas search``: schema, validation, loading.

Schema (every key optional unless marked required)::

    [model]
    factory = "hwnas.zoo.models:digits_cnn"   # required: "module:function" or "file.py:function"
    input_shape = [1, 1, 8, 8]             # required: example input shape, batch 1
    kwargs = {}                            # keyword arguments of the factory
    leaf_modules = []                      # kept opaque by the tracer (frozen channels):
                                           # class names ("MyBlock") or module paths
                                           # ("features.3")

    [data]
    factory = "hwnas.zoo.datasets:digits"      # required: returns an object with .train, .val
                                           # (optional) and .test loaders, or a
                                           # (train, val, test) or (train, test) tuple
    kwargs = {batch_size = 64, val_size = 0.1}

    [search]
    targets = {params = 0.5, ops = 0.5}    # required: fraction of the original cost, in (0, 1]
    target = "generic"                     # hardware target name or .toml path
    warmup_epochs = 5                      # the other keys and their defaults are those
    search_epochs = 20                     # of hwnas.FitConfig (one source of defaults):
    finetune_epochs = 5                    # lr, arch_lr, weight_decay, cost_mode,
                                           # enforce_targets, recalibrate_bn,
                                           # divergence_factor, seed; and of hwnas.wrap:
                                           # droprate_init, channel_multiple
    patience = 3                           # early stopping on the validation split in
                                           # warm-up and fine-tune (0, the default: off)
    device = "auto"                        # "auto" (CUDA when available), "cpu", "cuda",
                                           # "cuda:N"; under torchrun each rank takes
                                           # cuda:LOCAL_RANK
    precision = "fp32"                     # "fp32", "bf16" or "fp16" (torch.autocast),
                                           # not the bit widths: those are [precision]

    [precision]                            # optional: search bit widths too (the keys and
    weight_bits = [2, 3, 4, 6, 8]          # defaults of hwnas.PrecisionSpace; targets on
    activation_bits = [2, 3, 4, 6, 8]      # luts, bitops or weight_memory then cost the
    per_channel = false                    # searched bits); the outputs add the QONNX
    scale = "target"                       # and QDQ files of the quantised model and its
    relaxation = "softmax"                 # bits per layer
    temperature = 1.0
    calibration_batches = 8

    [output]
    folder = "runs/search"                 # relative to the config file's folder

Relative paths (``file.py:function`` factories, a ``.toml`` hardware target, the output
folder) are resolved against the config file's folder, so a config runs from any working
directory. Every error names the file, the table and the key.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from hwnas.errors import ConfigError, HwnasError, InvalidValueError, MissingFileError
from hwnas.search import wrap
from hwnas.search.bitspace import PrecisionSpace
from hwnas.training.config import EarlyStopping, FitConfig

__all__ = ["DEMO_CONFIG", "SearchConfig", "load_config", "load_factory", "parse_config"]

DEMO_CONFIG = """
[model]
factory = "hwnas.zoo.models:digits_cnn"
input_shape = [1, 1, 8, 8]

[data]
factory = "hwnas.zoo.datasets:digits"
kwargs = {batch_size = 64, val_size = 0.1}

[search]
target = "xc7-lut6"
targets = {params = 0.5, ops = 0.5}
warmup_epochs = 10
search_epochs = 20
finetune_epochs = 10
patience = 3

[output]
folder = "reports/demo"
"""

#: The defaults of the [search] keys come from FitConfig and wrap, never restated here.
_FIT: dict[str, Any] = {f.name: f.default for f in fields(FitConfig)}
_WRAP: dict[str, Any] = {k: p.default for k, p in inspect.signature(wrap).parameters.items()}
#: FitConfig fields a config file may set ([search] has them under the same names).
FIT_KEYS = ("warmup_epochs", "search_epochs", "finetune_epochs", "lr", "arch_lr",
            "weight_decay", "cost_mode", "enforce_targets", "recalibrate_bn",
            "divergence_factor", "seed", "precision")


def _resolve(path: str | Path, base_dir: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or base_dir is None else base_dir / p


def load_factory(spec: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
    """Import ``"package.module:function"`` or ``"path/to/file.py:function"``.

    A relative ``file.py`` is looked up in ``base_dir`` (the config file's folder), else in
    the working directory.

    Example:
        >>> load_factory("hwnas.zoo.models:digits_cnn").__name__
        'digits_cnn'
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise InvalidValueError(f"a factory must be 'module:function', but got {spec!r}")
    module_name, attr = spec.split(":")
    if module_name.endswith(".py"):
        path = _resolve(module_name, Path(base_dir) if base_dir is not None else None)
        if not path.is_file():
            raise MissingFileError(f"factory file {str(path)!r} does not exist")
        name = f"_hwnas_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise InvalidValueError(f"cannot import {str(path)!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise InvalidValueError(f"importing factory file {str(path)!r} failed: "
                                    f"{type(e).__name__}: {e}") from e
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise InvalidValueError(
                f"cannot import module {module_name!r} of factory {spec!r}: {e}"
            ) from e
    if not hasattr(module, attr):
        raise InvalidValueError(f"module {module_name!r} has no attribute {attr!r} "
                                f"(factory {spec!r})")
    return getattr(module, attr)


def _check_keys(section: str, data: Mapping[str, Any], cls: type) -> None:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{section}]; allowed: {', '.join(sorted(allowed))}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_factory(section: str, value: Any) -> None:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ConfigError(f"[{section}] `factory` must be 'module:function' or "
                          f"'file.py:function', but got {value!r}")


@dataclass(frozen=True)
class ModelSection:
    factory: str
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    leaf_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_factory("model", self.factory)
        shape = self.input_shape
        if not (isinstance(shape, (list, tuple)) and len(shape) >= 1
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                        for v in shape)):
            raise ConfigError(f"[model] `input_shape` must be a list of positive integers, but "
                              f"got {shape!r}")
        if not isinstance(self.kwargs, dict):
            raise ConfigError(f"[model] `kwargs` must be a table, but got {self.kwargs!r}")
        if isinstance(self.leaf_modules, str) or not isinstance(self.leaf_modules, (list, tuple)) \
                or not all(isinstance(m, str) for m in self.leaf_modules):
            raise ConfigError(f"[model] `leaf_modules` must be a list of class names or module "
                              f"paths, but got {self.leaf_modules!r}")
        object.__setattr__(self, "input_shape", tuple(shape))
        object.__setattr__(self, "leaf_modules", tuple(self.leaf_modules))


@dataclass(frozen=True)
class DataSection:
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_factory("data", self.factory)
        if not isinstance(self.kwargs, dict):
            raise ConfigError(f"[data] `kwargs` must be a table, but got {self.kwargs!r}")


@dataclass(frozen=True)
class SearchSection:
    """The [search] table: cost targets, the hardware target, wrap and FitConfig settings.

    Defaults are FitConfig's and wrap's own (``patience`` 0: FitConfig has no early
    stopping by default); :meth:`fit_config` builds the FitConfig, which checks the values.
    """

    targets: dict[str, float]
    target: str = _WRAP["target"]
    warmup_epochs: int = _FIT["warmup_epochs"]
    search_epochs: int = _FIT["search_epochs"]
    finetune_epochs: int = _FIT["finetune_epochs"]
    lr: float = _FIT["lr"]
    arch_lr: float = _FIT["arch_lr"]
    weight_decay: float = _FIT["weight_decay"]
    cost_mode: str = _FIT["cost_mode"]
    enforce_targets: bool = _FIT["enforce_targets"]
    recalibrate_bn: bool = _FIT["recalibrate_bn"]
    divergence_factor: float | None = _FIT["divergence_factor"]
    seed: int = _FIT["seed"]
    patience: int = 0 if _FIT["early_stopping"] is None else _FIT["early_stopping"].patience
    droprate_init: float = _WRAP["droprate_init"]
    channel_multiple: int = _WRAP["channel_multiple"]
    precision: str = _FIT["precision"]
    #: Where ``hwnas search`` trains; ``FitConfig.device`` (None: the model's device) is for
    #: the Python API, the command line picks the fastest device there is.
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.targets, dict) or not self.targets:
            raise ConfigError("[search] `targets` must be a table like {params = 0.5}, but got "
                              f"{self.targets!r}")
        for name, frac in self.targets.items():
            if not (_is_number(frac) and math.isfinite(frac) and 0 < frac <= 1):
                hint = (f"; for {frac:g}% write {frac / 100:g}"
                        if _is_number(frac) and 1 < frac <= 100 else "")
                raise ConfigError(f"[search] target fraction for {name!r} must be in (0, 1] "
                                  f"(a fraction of the original cost), but got {frac!r}{hint}")
        if not isinstance(self.target, str) or not self.target:
            raise ConfigError(f"[search] `target` must be a hardware target name or a .toml "
                              f"path, but got {self.target!r}")
        if not isinstance(self.patience, int) or isinstance(self.patience, bool) \
                or self.patience < 0:
            raise ConfigError(f"[search] `patience` must be an integer >= 0 (0: no early "
                              f"stopping), but got {self.patience!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"[search] `seed` must be an integer, but got {self.seed!r}")
        if not (_is_number(self.droprate_init) and 0 < self.droprate_init < 1):
            raise ConfigError(f"[search] `droprate_init` must be a number in (0, 1), but got "
                              f"{self.droprate_init!r}")
        if not isinstance(self.channel_multiple, int) or isinstance(self.channel_multiple, bool) \
                or self.channel_multiple < 1:
            raise ConfigError(f"[search] `channel_multiple` must be an integer >= 1, but got "
                              f"{self.channel_multiple!r}")
        self.fit_config(device=self.device)  # FitConfig checks its own keys

    def fit_config(self, **runtime: Any) -> FitConfig:
        """The FitConfig of these settings; ``runtime`` adds ``progress``, ``device``, ...

        Example:
            >>> s = SearchSection(targets={"params": 0.5}, search_epochs=3)
            >>> s.fit_config(progress=False).search_epochs, s.fit_config().lr == FitConfig().lr
            (3, True)
        """
        stopping = EarlyStopping(patience=self.patience) if self.patience else None
        try:
            return FitConfig(**{k: getattr(self, k) for k in FIT_KEYS},
                             early_stopping=stopping, **runtime)
        except HwnasError as e:
            raise ConfigError(f"[search] {e}") from e


@dataclass(frozen=True)
class OutputSection:
    folder: str = "runs/search"

    def __post_init__(self) -> None:
        if not isinstance(self.folder, str) or not self.folder:
            raise ConfigError(f"[output] `folder` must be a non-empty string, but got "
                              f"{self.folder!r}")


@dataclass(frozen=True)
class SearchConfig:
    """A validated ``hwnas search`` configuration (see the module docstring for the schema)."""

    model: ModelSection
    data: DataSection
    search: SearchSection
    output: OutputSection
    base_dir: Path = Path(".")
    #: The [precision] table (bit widths searched too), or None.
    precision: PrecisionSpace | None = None

    @property
    def output_dir(self) -> Path:
        return _resolve(self.output.folder, self.base_dir)

    @property
    def hardware_target(self) -> str | Path:
        """The [search] ``target``: a name, or a ``.toml`` path against the config's folder."""
        t = self.search.target
        return _resolve(t, self.base_dir) if t.endswith(".toml") else t

    def factory(self, section: str) -> Callable[..., Any]:
        """The [model] or [data] factory, imported (relative files against the config's
        folder)."""
        spec = self.model.factory if section == "model" else self.data.factory
        try:
            return load_factory(spec, self.base_dir)
        except HwnasError as e:
            raise ConfigError(f"[{section}] factory: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        def section(obj: Any) -> dict[str, Any]:
            return {f.name: getattr(obj, f.name) for f in fields(obj)}

        out = {"model": section(self.model), "data": section(self.data),
               "search": section(self.search), "output": section(self.output),
               "base_dir": str(self.base_dir.resolve())}
        if self.precision is not None:
            out["precision"] = section(self.precision)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """The inverse of :meth:`to_dict` (validated again)."""
        raw = {k: dict(v) for k, v in data.items() if k != "base_dir"}
        return _from_raw(raw, Path(data.get("base_dir", ".")))

    def resume_key(self) -> dict[str, Any]:
        """What a checkpoint of this run must agree on beyond fit's own key."""
        s = self.search
        return {"run": {
            "model factory": self.model.factory, "model kwargs": self.model.kwargs,
            "input shape": list(self.model.input_shape),
            "leaf modules": list(self.model.leaf_modules),
            "data factory": self.data.factory, "data kwargs": self.data.kwargs,
            "target fractions": dict(s.targets), "droprate_init": s.droprate_init,
            "channel_multiple": s.channel_multiple, "patience": s.patience,
            "precision": None if self.precision is None else repr(self.precision),
        }}


def _section(raw: Mapping[str, Any], name: str, cls: type, required: bool) -> Any:
    data = raw.get(name)
    if data is None:
        if required:
            raise ConfigError(f"the config needs a [{name}] table")
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}] must be a table, but got {type(data).__name__}")
    _check_keys(name, data, cls)
    missing = [f.name for f in fields(cls) if f.name not in data
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"[{name}] is missing required key(s) {missing}")
    return cls(**data)


def _from_raw(raw: Mapping[str, Any], base_dir: Path) -> SearchConfig:
    allowed = {"model", "data", "search", "output", "precision"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown table(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    return SearchConfig(
        model=_section(raw, "model", ModelSection, True),
        data=_section(raw, "data", DataSection, True),
        search=_section(raw, "search", SearchSection, True),
        output=_section(raw, "output", OutputSection, False),
        base_dir=base_dir,
        precision=_precision(raw),
    )


def _precision(raw: Mapping[str, Any]) -> PrecisionSpace | None:
    """The [precision] table as a PrecisionSpace (its checks, worded for the table)."""
    if raw.get("precision") is None:
        return None
    try:
        return _section(raw, "precision", PrecisionSpace, False)
    except ConfigError:
        raise
    except HwnasError as e:
        raise ConfigError(f"[precision] {e}") from e


def parse_config(text: str, base_dir: Path = Path(".")) -> SearchConfig:
    """Parse and validate a config given as TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"the config is not valid TOML: {e}") from e
    return _from_raw(raw, base_dir)


def load_config(path: str | Path) -> SearchConfig:
    """Load and validate a ``hwnas search`` TOML file; errors name the file and the key.

    Example:
        >>> cfg = parse_config(DEMO_CONFIG)
        >>> cfg.search.targets
        {'params': 0.5, 'ops': 0.5}
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file {str(path)!r} does not exist")
    try:
        return parse_config(path.read_text(), base_dir=path.parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
