"""The search configuration file (TOML) of ``hwnas search``: schema, validation, loading.

Schema (every key optional unless marked required)::

    [model]
    factory = "hwnas.models:digits_cnn"   # required: "module:function" or "file.py:function"
    input_shape = [1, 1, 8, 8]             # required: example input shape, batch 1
    kwargs = {}                            # keyword arguments of the factory
    leaf_modules = []                      # module class names kept opaque by the tracer

    [data]
    factory = "hwnas.datasets:digits"      # required: returns an object with .train and
                                           # .test DataLoaders, or a (train, val) tuple
    kwargs = {batch_size = 64}

    [search]
    target = "generic"                     # hardware target name or .toml path
    targets = {params = 0.5, ops = 0.5}    # required: fraction of the original cost
    warmup_epochs = 10
    search_epochs = 20
    finetune_epochs = 10
    lr = 1e-3
    arch_lr = 0.1
    weight_decay = 0.0
    droprate_init = 0.3
    channel_multiple = 1                   # channels per gate (16: kept widths multiple of 16)
    cost_mode = "straight_through"         # or "expected"
    patience = 3                           # early stopping in warm-up and fine-tune (0: off)
    seed = 0

    [output]
    folder = "runs/search"                 # relative to the config file's folder
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["SearchConfig", "load_config", "load_factory", "DEMO_CONFIG"]

DEMO_CONFIG = """
[model]
factory = "hwnas.models:digits_cnn"
input_shape = [1, 1, 8, 8]

[data]
factory = "hwnas.datasets:digits"
kwargs = {batch_size = 64}

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


def load_factory(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` or ``"path/to/file.py:function"``.

    Example:
        >>> load_factory("hwnas.models:digits_cnn").__name__
        'digits_cnn'
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"a factory must be 'module:function', but got {spec!r}")
    module_name, attr = spec.split(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"factory file {module_name!r} does not exist")
        name = f"_hwnas_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot import {module_name!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(
                f"cannot import module {module_name!r} of factory {spec!r}: {e}"
            ) from e
    if not hasattr(module, attr):
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (factory {spec!r})")
    return getattr(module, attr)


def _check_keys(section: str, data: Mapping[str, Any], cls: type) -> None:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in [{section}]; allowed: {', '.join(sorted(allowed))}"
        )


@dataclass(frozen=True)
class ModelSection:
    factory: str
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    leaf_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or ":" not in self.factory:
            raise ValueError(f"[model] `factory` must be 'module:function', but got "
                             f"{self.factory!r}")
        shape = self.input_shape
        if not (isinstance(shape, (list, tuple)) and len(shape) >= 1
                and all(isinstance(v, int) and v > 0 for v in shape)):
            raise ValueError(f"[model] `input_shape` must be a list of positive integers, but "
                             f"got {shape!r}")
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"[model] `kwargs` must be a table, but got {self.kwargs!r}")
        if isinstance(self.leaf_modules, str) or not isinstance(self.leaf_modules, (list, tuple)):
            raise ValueError(f"[model] `leaf_modules` must be a list of class names, but got "
                             f"{self.leaf_modules!r}")
        object.__setattr__(self, "input_shape", tuple(shape))
        object.__setattr__(self, "leaf_modules", tuple(self.leaf_modules))


@dataclass(frozen=True)
class DataSection:
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or ":" not in self.factory:
            raise ValueError(f"[data] `factory` must be 'module:function', but got "
                             f"{self.factory!r}")
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"[data] `kwargs` must be a table, but got {self.kwargs!r}")


@dataclass(frozen=True)
class SearchSection:
    targets: dict[str, float]
    target: str = "generic"
    warmup_epochs: int = 10
    search_epochs: int = 20
    finetune_epochs: int = 10
    lr: float = 1e-3
    arch_lr: float = 0.1
    weight_decay: float = 0.0
    droprate_init: float = 0.3
    channel_multiple: int = 1
    cost_mode: str = "straight_through"
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.targets, dict) or not self.targets:
            raise ValueError("[search] `targets` must be a table like {params = 0.5}, but got "
                             f"{self.targets!r}")
        for name, frac in self.targets.items():
            if not isinstance(frac, (int, float)) or not frac > 0:
                raise ValueError(f"[search] target fraction for {name!r} must be a number > 0, "
                                 f"but got {frac!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"[search] `patience` must be an integer >= 0, but got "
                             f"{self.patience!r}")


@dataclass(frozen=True)
class OutputSection:
    folder: str = "runs/search"

    def __post_init__(self) -> None:
        if not isinstance(self.folder, str) or not self.folder:
            raise ValueError(f"[output] `folder` must be a non-empty string, but got "
                             f"{self.folder!r}")


@dataclass(frozen=True)
class SearchConfig:
    """A validated ``hwnas search`` configuration (see the module docstring for the schema)."""

    model: ModelSection
    data: DataSection
    search: SearchSection
    output: OutputSection
    base_dir: Path = Path(".")

    @property
    def output_dir(self) -> Path:
        folder = Path(self.output.folder)
        return folder if folder.is_absolute() else self.base_dir / folder

    def to_dict(self) -> dict[str, Any]:
        def section(obj: Any) -> dict[str, Any]:
            return {f.name: getattr(obj, f.name) for f in fields(obj)}

        return {"model": section(self.model), "data": section(self.data),
                "search": section(self.search), "output": section(self.output)}


def _section(raw: Mapping[str, Any], name: str, cls: type, required: bool) -> Any:
    data = raw.get(name)
    if data is None:
        if required:
            raise ValueError(f"the config needs a [{name}] table")
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"[{name}] must be a table, but got {type(data).__name__}")
    _check_keys(name, data, cls)
    try:
        return cls(**data)
    except TypeError as e:
        missing = [f.name for f in fields(cls) if f.name not in data
                   and f.default is MISSING and f.default_factory is MISSING]
        if not missing:
            raise ValueError(f"[{name}]: {e}") from e
        raise ValueError(f"[{name}] is missing required key(s) {missing}") from e


def parse_config(text: str, base_dir: Path = Path(".")) -> SearchConfig:
    """Parse and validate a config given as TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"the config is not valid TOML: {e}") from e
    allowed = {"model", "data", "search", "output"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    return SearchConfig(
        model=_section(raw, "model", ModelSection, True),
        data=_section(raw, "data", DataSection, True),
        search=_section(raw, "search", SearchSection, True),
        output=_section(raw, "output", OutputSection, False),
        base_dir=base_dir,
    )


def load_config(path: str | Path) -> SearchConfig:
    """Load and validate a ``hwnas search`` TOML file; errors name the wrong key or value.

    Example:
        >>> cfg = parse_config(DEMO_CONFIG)
        >>> cfg.search.targets
        {'params': 0.5, 'ops': 0.5}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        return parse_config(path.read_text(), base_dir=path.parent)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
