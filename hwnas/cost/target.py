"""Hardware targets: frozen dataclasses loaded from TOML files.

The default targets ship inside the package as data, in ``hwnas/cost/targets/*.toml``. A
user's own target is a TOML file with the same schema, loaded by path;
``hwnas/cost/targets/README.md`` documents the schema and formulas.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hwnas.errors import (
    ConfigError,
    InvalidTypeError,
    InvalidValueError,
    MissingFileError,
    UnknownNameError,
)

__all__ = ["LutCalibration", "LutModel", "SynthSpec", "Target", "known_targets", "load_target"]

_FAMILIES = ("generic", "lut")
_TABLE_MODELS = ("logicnets", "shannon", "muxf", "bdd")
_MAC_MODELS = ("multiplier_array", "fitted")
_TOP_KEYS = {
    "name", "description", "family", "lut_inputs", "weight_bits", "activation_bits", "luts",
    "synth", "quant_scales",
}
_SYNTH_KEYS = {"script", "lut_cells", "carry_cells", "mux_cells", "ff_cells", "pnr", "device",
               "package"}
_PNR_TOOLS = ("", "ice40")
_LUT_KEYS = {"table", "mac", "luts_per_pp_bit", "luts_per_adder_bit", "luts_per_comparator_bit",
             "calibration"}
_CALIBRATION_LISTS = ("mac_features", "mac", "table", "table_random", "comparator", "popcount",
                      "mac_grid", "mac_held_out")
_CALIBRATION_KEYS = {"yosys", "script", "errors", *_CALIBRATION_LISTS}


def _numbers(name: str, value: object) -> tuple[float, ...]:
    """A list of finite numbers >= 0 as a tuple (TOML arrays arrive as lists)."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0 for v in value):
        raise InvalidValueError(
            f"`{name}` must be a list of finite numbers >= 0, but got {value!r}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class LutCalibration:
    """Coefficients fitted by ``hwnas calibrate`` against yosys (``[luts.calibration]``).

    Attributes:
        yosys / script: The yosys build and synthesis command they were measured with.
        mac_features: Names of the MAC features (:data:`hwnas.cost.luts.MAC_FEATURES`).
        mac: LUTs per unit of each MAC feature, per output channel.
        table: LUTs per BDD node of a truth table with ``X = lut_inputs + 1, + 2, ...``
            inputs (``table = "bdd"``).
        table_random: Measured LUTs per random table of ``X = lut_inputs + 1, ...`` inputs.
        comparator: LUTs per comparator of a ``B``-bit input with a constant, ``B = 1, 2..``.
        popcount: Coefficients of the popcount features (:func:`hwnas.cost.luts.popcount_luts`).
        mac_grid / mac_held_out: The (n, W, A) shapes fitted on and held out.
        errors: ``(name, (median, worst))`` relative errors against yosys, sorted by name
            (a tuple, so a target stays hashable); :meth:`error` looks one up.
    """

    yosys: str = ""
    script: str = ""
    mac_features: tuple[str, ...] = ()
    mac: tuple[float, ...] = ()
    table: tuple[float, ...] = ()
    table_random: tuple[float, ...] = ()
    comparator: tuple[float, ...] = ()
    popcount: tuple[float, ...] = ()
    mac_grid: tuple[tuple[int, ...], ...] = ()
    mac_held_out: tuple[tuple[int, ...], ...] = ()
    errors: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        for key in ("mac", "table", "table_random", "comparator", "popcount"):
            object.__setattr__(self, key, _numbers(f"luts.calibration.{key}", getattr(self, key)))
        for key in ("mac_grid", "mac_held_out"):
            value = getattr(self, key)
            object.__setattr__(self, key, tuple(tuple(int(v) for v in _numbers(
                f"luts.calibration.{key}", row)) for row in value))
        if not all(isinstance(v, str) for v in self.mac_features):
            raise InvalidValueError(f"`luts.calibration.mac_features` must be names, but got "
                             f"{self.mac_features!r}")
        object.__setattr__(self, "mac_features", tuple(self.mac_features))
        if len(self.mac) != len(self.mac_features):
            raise InvalidValueError(f"`luts.calibration.mac` must have one coefficient per feature "
                             f"{list(self.mac_features)}, but got {list(self.mac)}")
        errors = dict(self.errors) if isinstance(self.errors, (dict, tuple)) else None
        if errors is None:
            raise InvalidValueError(
                f"`luts.calibration.errors` must be a table, but got {self.errors!r}")
        object.__setattr__(self, "errors", tuple(sorted(
            (str(k), _numbers(f"luts.calibration.errors.{k}", v)) for k, v in errors.items())))

    def error(self, name: str) -> tuple[float, ...] | None:
        """``(median, worst)`` of the named error, or None when it was not measured."""
        return dict(self.errors).get(name)


@dataclass(frozen=True)
class LutModel:
    """How LUT counts are estimated on a LUT-based FPGA (see hwnas/cost/targets/README.md)."""

    table: str = "logicnets"
    mac: str = "multiplier_array"
    luts_per_pp_bit: float = 1.0
    luts_per_adder_bit: float = 1.0
    luts_per_comparator_bit: float = 1.0
    calibration: LutCalibration | None = None

    def __post_init__(self) -> None:
        if isinstance(self.calibration, dict):
            bad = set(self.calibration) - _CALIBRATION_KEYS
            if bad:
                raise InvalidValueError(f"unknown key(s) {sorted(bad)} in [luts.calibration]; "
                                 f"allowed: {sorted(_CALIBRATION_KEYS)}")
            object.__setattr__(self, "calibration", LutCalibration(**self.calibration))
        if self.table not in _TABLE_MODELS:
            raise InvalidValueError(
                f"`luts.table` must be one of {_TABLE_MODELS}, but got {self.table!r}")
        if self.mac not in _MAC_MODELS:
            raise InvalidValueError(
                f"`luts.mac` must be one of {_MAC_MODELS}, but got {self.mac!r}")
        cal = self.calibration
        if self.mac == "fitted" and (cal is None or not cal.mac):
            raise InvalidValueError(
                "`luts.mac = \"fitted\"` needs [luts.calibration] coefficients; "
                             "run `hwnas calibrate TARGET`")
        if self.table == "bdd" and (cal is None or not cal.table):
            raise InvalidValueError("`luts.table = \"bdd\"` needs [luts.calibration] table "
                             "coefficients; run `hwnas calibrate TARGET`")
        for key in ("luts_per_pp_bit", "luts_per_adder_bit", "luts_per_comparator_bit"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value) or value < 0:
                raise InvalidValueError(f"`luts.{key}` must be a number >= 0, but got {value!r}")


@dataclass(frozen=True)
class SynthSpec:
    """How :func:`hwnas.hw.synthesize` builds for a target and reads yosys's ``stat``.

    Attributes:
        script: The yosys synthesis command, run as ``<script> -top <top>`` after reading
            the Verilog (e.g. ``"synth_xilinx -family xc7 -nodsp -abc9"``).
        lut_cells / carry_cells / mux_cells / ff_cells: ``fnmatch`` patterns of the cell
            types counted as LUTs, carry cells, wide-function muxes and flip-flops.
        pnr: ``"ice40"`` when nextpnr-ice40 can place and route for the target, else ``""``.
        device / package: nextpnr's device (``"up5k"``) and package (``"sg48"``).
    """

    script: str
    lut_cells: tuple[str, ...] = ()
    carry_cells: tuple[str, ...] = ()
    mux_cells: tuple[str, ...] = ()
    ff_cells: tuple[str, ...] = ()
    pnr: str = ""
    device: str = ""
    package: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.script, str) or not self.script.strip():
            raise InvalidValueError(
                f"`synth.script` must be a yosys command, but got {self.script!r}")
        for key in ("lut_cells", "carry_cells", "mux_cells", "ff_cells"):
            value = getattr(self, key)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, key, value)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise InvalidValueError(
                    f"`synth.{key}` must be a list of strings, but got {value!r}")
        if self.pnr not in _PNR_TOOLS:
            raise InvalidValueError(
                f"`synth.pnr` must be one of {_PNR_TOOLS}, but got {self.pnr!r}")
        for key in ("device", "package"):
            if not isinstance(getattr(self, key), str):
                raise InvalidValueError(
                    f"`synth.{key}` must be a string, but got {getattr(self, key)!r}")


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
        synth: How to synthesize for the target (:class:`SynthSpec`), ``None`` if unknown.
        quant_scales: The quantisation scales a precision search learns by default
            (``PrecisionSpace(scale="target")``): ``"lsq"`` (any positive number) or
            ``"pow2"`` (powers of two, what fixed-point FPGA flows want).

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
    synth: SynthSpec | None = field(default=None)
    quant_scales: str = "lsq"

    def __post_init__(self) -> None:
        if self.quant_scales not in ("lsq", "pow2"):
            raise InvalidValueError(f"`quant_scales` must be 'lsq' or 'pow2', but got "
                                    f"{self.quant_scales!r}")
        if not isinstance(self.name, str) or not self.name:
            raise InvalidValueError(f"`name` must be a non-empty string, but got {self.name!r}")
        if self.family not in _FAMILIES:
            raise InvalidValueError(f"`family` must be one of {_FAMILIES}, but got {self.family!r}")
        for key in ("weight_bits", "activation_bits"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
                raise InvalidValueError(f"`{key}` must be an integer in [1, 64], but got {value!r}")
        if self.family == "lut":
            if self.lut_inputs not in (3, 4, 5, 6, 7, 8):
                raise InvalidValueError(
                    f"`lut_inputs` must be an integer in [3, 8] for a 'lut' target, "
                    f"but got {self.lut_inputs!r}"
                )
            if self.luts is None:
                raise InvalidValueError("a 'lut' target needs a [luts] table, but none was given")

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
    synth = data.get("synth")
    kwargs = {k: v for k, v in data.items() if k not in ("luts", "synth")}
    if synth is not None:
        if not isinstance(synth, dict):
            raise ConfigError(f"{source}: `synth` must be a table, but got {type(synth).__name__}")
        bad = set(synth) - _SYNTH_KEYS
        if bad:
            raise ConfigError(
                f"{source}: unknown key(s) {sorted(bad)} in [synth]; allowed: {sorted(_SYNTH_KEYS)}"
            )
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
        if synth is not None:
            kwargs["synth"] = SynthSpec(**synth)
        return Target(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from e


def known_targets() -> list[str]:
    """Names of the targets that ship with hwnas."""
    folder = resources.files("hwnas.cost").joinpath("targets")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_target(target: str | Path | Target) -> Target:
    """Load a hardware target by shipped name, by TOML path, or pass a Target through.

    Args:
        target: ``"generic"``, ``"xc7-lut6"``, ``"ice40-lut4"``, a path to a ``.toml`` file
            with the schema in ``hwnas/cost/targets/README.md``, or a :class:`Target`.

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
        raise UnknownNameError(
            f"unknown target {target!r}; known: {', '.join(known)} (or a .toml path)")
    text = resources.files("hwnas.cost").joinpath("targets").joinpath(f"{target}.toml").read_bytes()
    return _from_dict(tomllib.loads(text.decode()), f"{target}.toml")
