"""Hardware targets: frozen dataclasses loaded from TOML files.

The default targets ship inside the wheel as ``hwnas.cost_models`` (the top-level
``cost_models/`` folder of the repository). A user's own target is a TOML file with the
same schema, loaded by path; ``cost_models/README.md`` documents the schema and formulas.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hwnas.errors import ConfigError, InvalidTypeError, MissingFileError, UnknownNameError

__all__ = ["Target", "LutModel", "load_target", "known_targets"]

_FAMILIES = ("generic", "lut")
_TABLE_MODELS = ("logicnets", "shannon")
_MAC_MODELS = ("multiplier_array",)
_TOP_KEYS = {
    "name", "description", "family", "lut_inputs", "weight_bits", "activation_bits", "luts"
}
_LUT_KEYS = {"table", "mac", "luts_per_pp_bit", "luts_per_adder_bit", "luts_per_comparator_bit"}


@dataclass(frozen=True)
class LutModel:
    """How LUT counts are estimated on a LUT-based FPGA (see cost_models/README.md)."""

    table: str = "logicnets"
    mac: str = "multiplier_array"
    luts_per_pp_bit: float = 1.0
    luts_per_adder_bit: float = 1.0
    luts_per_comparator_bit: float = 1.0

    def __post_init__(self) -> None:
        if self.table not in _TABLE_MODELS:
            raise ValueError(f"`luts.table` must be one of {_TABLE_MODELS}, but got {self.table!r}")
        if self.mac not in _MAC_MODELS:
            raise ValueError(f"`luts.mac` must be one of {_MAC_MODELS}, but got {self.mac!r}")
        for key in ("luts_per_pp_bit", "luts_per_adder_bit", "luts_per_comparator_bit"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"`luts.{key}` must be a number >= 0, but got {value!r}")


@dataclass(frozen=True)
class Target:
    """A hardware target.

    Attributes:
        name: Short name, used on the command line (``--target xc7-lut6``).
        description: One line for reports.
        family: ``"generic"`` (params and MACs only) or ``"lut"`` (LUT-based FPGA).
        weight_bits: Bit width of weights (used by LUT and memory estimates).
        activation_bits: Bit width of activations.
        lut_inputs: Inputs per physical LUT (6 for LUT6 devices, 4 for LUT4); 0 if generic.
        luts: The LUT estimation model, ``None`` for generic targets.

    Example:
        >>> from hwnas.cost import load_target
        >>> load_target("xc7-lut6").lut_inputs
        6
    """

    name: str
    description: str = ""
    family: str = "generic"
    weight_bits: int = 32
    activation_bits: int = 32
    lut_inputs: int = 0
    luts: LutModel | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a non-empty string, but got {self.name!r}")
        if self.family not in _FAMILIES:
            raise ValueError(f"`family` must be one of {_FAMILIES}, but got {self.family!r}")
        for key in ("weight_bits", "activation_bits"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
                raise ValueError(f"`{key}` must be an integer in [1, 64], but got {value!r}")
        if self.family == "lut":
            if self.lut_inputs not in (3, 4, 5, 6, 7, 8):
                raise ValueError(
                    f"`lut_inputs` must be an integer in [3, 8] for a 'lut' target, "
                    f"but got {self.lut_inputs!r}"
                )
            if self.luts is None:
                raise ValueError("a 'lut' target needs a [luts] table, but none was given")

    @property
    def has_lut_model(self) -> bool:
        """True when LUT counts can be estimated on this target."""
        return self.luts is not None


def _from_dict(data: dict, source: str) -> Target:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    luts = data.get("luts")
    kwargs = {k: v for k, v in data.items() if k != "luts"}
    if luts is not None:
        if not isinstance(luts, dict):
            raise ConfigError(f"{source}: `luts` must be a table, but got {type(luts).__name__}")
        bad = set(luts) - _LUT_KEYS
        if bad:
            raise ConfigError(
                f"{source}: unknown key(s) {sorted(bad)} in [luts]; allowed: {sorted(_LUT_KEYS)}"
            )
    if "name" not in kwargs:
        raise ConfigError(f"{source}: `name` is required")
    try:
        if luts is not None:
            kwargs["luts"] = LutModel(**luts)
        return Target(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from e


def known_targets() -> list[str]:
    """Names of the targets that ship with hwnas."""
    folder = resources.files("hwnas.cost_models")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_target(target: str | Path | Target) -> Target:
    """Load a hardware target by shipped name, by TOML path, or pass a Target through.

    Args:
        target: ``"generic"``, ``"xc7-lut6"``, ``"ice40-lut4"``, a path to a ``.toml`` file
            with the schema in ``cost_models/README.md``, or a :class:`Target`.

    Raises:
        KeyError: for an unknown target name (the message lists the known ones).
        ValueError: for a file that does not follow the schema.

    Example:
        >>> load_target("ice40-lut4").weight_bits
        4
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, Path) or (isinstance(target, str) and target.endswith(".toml")):
        path = Path(target)
        if not path.is_file():
            raise MissingFileError(f"target file {str(path)!r} does not exist")
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"target file {str(path)!r} is not valid TOML: {e}") from e
        return _from_dict(data, str(path))
    if not isinstance(target, str):
        raise InvalidTypeError(
            f"`target` must be a target name, a .toml path or a Target, but got "
            f"{type(target).__name__}"
        )
    known = known_targets()
    if target not in known:
        raise UnknownNameError(f"unknown target {target!r}; known: {', '.join(known)} (or a .toml path)")
    text = resources.files("hwnas.cost_models").joinpath(f"{target}.toml").read_bytes()
    return _from_dict(tomllib.loads(text.decode()), f"{target}.toml")
