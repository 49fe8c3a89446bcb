"""What a Verilog export of a LUT network is: its input quantizer, its ports and the record
:func:`~hwnas.hw.verilog.export_verilog` returns (also written as the file's JSON header,
so a simulation or a synthesis run reads it back from the file)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hwnas.errors import InvalidValueError, MissingFileError, ShapeError

__all__ = ["InputQuantizer", "Port", "VerilogModule"]

_MAX_INPUT_BITS = 24


@dataclass(frozen=True)
class InputQuantizer:
    """Real inputs to ``bits``-bit unsigned integers: ``q = clamp(round((v - low) / step))``.

    ``low`` and ``step`` are floats or per-feature tensors. ``dequantize(q) = low + step * q``
    (float32) is the grid; a value on it round-trips exactly.

    Example:
        >>> import torch
        >>> q = InputQuantizer(bits=5, low=0.0, step=1.0)     # digits pixels 0..16: exact
        >>> q.quantize(torch.tensor([[0.0, 16.0, 40.0]])).tolist()
        [[0, 16, 31]]
        >>> InputQuantizer.from_range(2, 0.0, 3.0).step
        1.0
    """

    bits: int
    low: float | Tensor = 0.0
    step: float | Tensor = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) \
                or not 1 <= self.bits <= _MAX_INPUT_BITS:
            raise InvalidValueError(
                f"`bits` must be an integer in [1, {_MAX_INPUT_BITS}], but got {self.bits!r}")
        step = torch.as_tensor(self.step, dtype=torch.float32)
        if not bool(torch.isfinite(step).all()) or not bool((step > 0).all()):
            raise InvalidValueError(f"`step` must be finite and > 0, but got {self.step!r}")
        if not bool(torch.isfinite(torch.as_tensor(self.low, dtype=torch.float32)).all()):
            raise InvalidValueError(f"`low` must be finite, but got {self.low!r}")

    @classmethod
    def from_range(cls, bits: int, low: float | Tensor, high: float | Tensor) -> InputQuantizer:
        """``2^bits`` evenly spaced levels from ``low`` to ``high`` (both on the grid)."""
        lo = torch.as_tensor(low, dtype=torch.float32)
        hi = torch.as_tensor(high, dtype=torch.float32)
        if not bool((hi > lo).all()):
            raise InvalidValueError(f"`input_range` must have high > low, but got ({low}, {high})")
        step = (hi - lo) / (2**bits - 1)
        as_value = (lambda t: float(t)) if step.dim() == 0 else (lambda t: t)  # noqa: E731
        return cls(bits, as_value(lo), as_value(step))

    @property
    def levels(self) -> int:
        return 2**self.bits

    def _low_step(self, features: int) -> tuple[Tensor, Tensor]:
        low = torch.as_tensor(self.low, dtype=torch.float32).expand(features)
        step = torch.as_tensor(self.step, dtype=torch.float32).expand(features)
        return low, step

    def quantize(self, x: Tensor) -> Tensor:
        """(batch, features...) real values -> int64 (batch, features) codes."""
        x = x.detach().float().cpu().reshape(x.shape[0], -1)
        low, step = self._low_step(x.shape[1])
        q = torch.round((x - low) / step)
        return q.clamp(0, self.levels - 1).to(torch.int64)

    def dequantize(self, q: Tensor) -> Tensor:
        """int codes (batch, features) -> the float32 grid values they stand for."""
        low, step = self._low_step(q.shape[1])
        return low + step * q.to(torch.float32)

    def threshold_codes(self, thresholds: Tensor) -> Tensor:
        """int64 (features, bits): ``c`` with ``(v > t) == (q > c)`` for every grid value.

        ``c = -1`` makes the bit always 1, ``c = 2^bits - 1`` always 0.
        """
        features = thresholds.shape[0]
        grid = self.dequantize(torch.arange(self.levels).expand(features, -1).t()).t()
        codes = torch.searchsorted(grid.contiguous(), thresholds.float().contiguous(), right=True)
        return codes - 1


@dataclass(frozen=True)
class Port:
    """A port of the exported module: ``name``, ``direction`` and ``width`` in bits."""

    name: str
    direction: str
    width: int
    description: str


@dataclass(frozen=True)
class VerilogModule:
    """What :func:`export_verilog` wrote.

    Attributes:
        path: The Verilog file.
        top: The module name.
        ports: Its ports, in declaration order.
        in_features: Input features (encoder inputs, or bits without an encoder).
        input_bits: Bits per input feature (1 without an encoder).
        quantizer: How real inputs map to the integer inputs (None without an encoder).
        k_classes: Classes of the GroupSum head (None: ``y`` holds the last layer's bits).
        count_width: Bits per class count ``w`` (1 without a head).
        latency: Clock edges from input to output (0: combinational).
        node_inputs: Per LUT layer, the number of inputs of every node that is built.
        comparators: Encoder comparators that are built.
        constant_nodes: Per LUT layer, nodes that are constants.
        unread_inputs: Input bits no built logic reads (they stay in the port).
        primitives: Device primitives the module instantiates (``MUXF7``, ``MUXF8``), which
            only the target's synthesis flow knows; empty for portable Verilog.
    """

    path: Path
    top: str
    ports: tuple[Port, ...]
    in_features: int
    input_bits: int
    quantizer: InputQuantizer | None
    k_classes: int | None
    count_width: int
    latency: int
    node_inputs: tuple[tuple[int, ...], ...]
    comparators: int
    constant_nodes: tuple[int, ...]
    unread_inputs: tuple[int, ...] = field(default=())
    primitives: tuple[str, ...] = field(default=())

    @property
    def input_width(self) -> int:
        return self.in_features * self.input_bits

    def header(self) -> str:
        """The one-line JSON description written as the file's first comment."""
        q = self.quantizer
        doc = {
            "top": self.top,
            "ports": [[p.name, p.direction, p.width, p.description] for p in self.ports],
            "in_features": self.in_features,
            "input_bits": self.input_bits,
            "quantizer": None if q is None else {
                "bits": q.bits,
                "low": torch.as_tensor(q.low).tolist(),
                "step": torch.as_tensor(q.step).tolist(),
            },
            "k_classes": self.k_classes,
            "count_width": self.count_width,
            "latency": self.latency,
            "node_inputs": [list(n) for n in self.node_inputs],
            "comparators": self.comparators,
            "constant_nodes": list(self.constant_nodes),
            "unread_inputs": list(self.unread_inputs),
            "primitives": list(self.primitives),
        }
        return _HEADER + json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> VerilogModule:
        """Read the description :func:`export_verilog` wrote at the top of ``path``."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"Verilog file {str(path)!r} does not exist")
        with path.open() as f:
            first = f.readline().strip()
        if not first.startswith(_HEADER):
            raise InvalidValueError(
                f"{str(path)!r} was not written by hwnas.hw.export_verilog (its first line "
                f"must start with {_HEADER.strip()!r}); pass the VerilogModule it returned")
        doc = json.loads(first[len(_HEADER):])
        q = doc["quantizer"]
        quantizer = None if q is None else InputQuantizer(
            q["bits"], _scalar_or_tensor(q["low"]), _scalar_or_tensor(q["step"]))
        return cls(
            path=path,
            top=doc["top"],
            ports=tuple(Port(*p) for p in doc["ports"]),
            in_features=doc["in_features"],
            input_bits=doc["input_bits"],
            quantizer=quantizer,
            k_classes=doc["k_classes"],
            count_width=doc["count_width"],
            latency=doc["latency"],
            node_inputs=tuple(tuple(n) for n in doc["node_inputs"]),
            comparators=doc["comparators"],
            constant_nodes=tuple(doc["constant_nodes"]),
            unread_inputs=tuple(doc["unread_inputs"]),
            primitives=tuple(doc.get("primitives", ())),
        )

    @property
    def output_width(self) -> int:
        return next(p.width for p in self.ports if p.name == "y")

    def input_codes(self, x: Tensor) -> Tensor:
        """Real inputs (batch, features...) -> the integer code of each feature (batch, F)."""
        x = x.detach().float().cpu().reshape(x.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise ShapeError(f"inputs must have {self.in_features} features, but got "
                             f"{tuple(x.shape)}")
        if self.quantizer is None:
            return (x >= 0.5).to(torch.int64)
        return self.quantizer.quantize(x)

    def model_inputs(self, codes: Tensor) -> Tensor:
        """The real inputs the hardware computes on for these codes (what to compare)."""
        if self.quantizer is None:
            return codes.to(torch.float32)
        return self.quantizer.dequantize(codes)

    def pack(self, codes: Tensor) -> list[int]:
        """Integer codes (batch, F) -> one integer per vector, the value of port ``x``."""
        out = []
        for row in codes.tolist():
            value = 0
            for f, c in enumerate(row):
                value |= int(c) << (f * self.input_bits)
            out.append(value)
        return out

    def unpack(self, values: list[int]) -> Tensor:
        """Values of port ``y`` -> int64 (batch, outputs): class counts, or bits."""
        w = self.count_width
        n = self.k_classes if self.k_classes is not None else self.output_width
        mask = (1 << w) - 1
        return torch.tensor([[(v >> (i * w)) & mask for i in range(n)] for v in values],
                            dtype=torch.int64).reshape(len(values), n)


_HEADER = "// hwnas-verilog-v1 "


def _scalar_or_tensor(value: float | list[float]) -> float | Tensor:
    return float(value) if not isinstance(value, list) else torch.tensor(value)
