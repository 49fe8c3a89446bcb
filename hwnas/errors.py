"""The errors hwnas raises. Every one derives from :class:`HwnasError`.

Each also derives from the built-in exception that fits it (``ValueError`` for a bad
value, ``TypeError`` for a wrong type, ``KeyError`` for an unknown name, ``OSError`` for a
file problem), so ``except ValueError`` keeps working, and ``except hwnas.HwnasError``
catches everything hwnas reports about its input. The command line turns any of them into
one line and exit code 2.

Example:
    >>> from hwnas.errors import HwnasError, UnknownNameError
    >>> err = UnknownNameError("unknown cost 'lut'; known: luts, ops, params")
    >>> isinstance(err, HwnasError), isinstance(err, KeyError), str(err)
    (True, True, "unknown cost 'lut'; known: luts, ops, params")
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ExportError",
    "FrozenChannelsWarning",
    "HwnasError",
    "InvalidTypeError",
    "InvalidValueError",
    "MissingFileError",
    "NotReadyError",
    "OutputError",
    "ShapeError",
    "ToolError",
    "TraceError",
    "TrainingError",
    "UnknownNameError",
    "UntrustedFileError",
]


class HwnasError(Exception):
    """Base of every error hwnas raises about its input, its tools or its results."""


class InvalidValueError(HwnasError, ValueError):
    """An argument or setting has a value outside what is allowed (the message says what is)."""


class InvalidTypeError(HwnasError, TypeError):
    """An argument or setting has the wrong type (the message names the expected one)."""


class UnknownNameError(HwnasError, KeyError):
    """A name (cost, target, regularizer, slicer, layer) is not known; the message lists
    the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingFileError(HwnasError, FileNotFoundError):
    """A file or folder that hwnas must read does not exist."""


class OutputError(HwnasError, OSError):
    """An output file or folder cannot be written (not a folder, read-only, ...)."""


class ConfigError(HwnasError, ValueError):
    """A configuration file or section is malformed; the message names the key."""


class TraceError(HwnasError, RuntimeError):
    """The model cannot be traced or analysed; the message names the node or source line."""


class ShapeError(HwnasError, ValueError):
    """The example inputs do not fit the model (wrong shape, count or dtype)."""


class ExportError(HwnasError, RuntimeError):
    """Export failed, or the exported model does not match PyTorch (numbers in the message)."""


class CheckpointError(HwnasError, ValueError):
    """A checkpoint is corrupt or does not belong to this run's model and configuration."""


class TrainingError(HwnasError, RuntimeError):
    """Training produced a non-finite loss or gradient, or diverged."""


class NotReadyError(HwnasError, RuntimeError):
    """An object was asked for something it does not have yet (e.g. DUCCIO's strengths
    before its first call); the message says what to do first."""


class UntrustedFileError(HwnasError, ValueError):
    """A file would run code when loaded (it holds more than tensors and plain data); it is
    loaded only when the caller says it trusts the file."""


class ToolError(HwnasError, RuntimeError):
    """An external tool (yosys, a simulator, nextpnr) is missing or failed."""


class FrozenChannelsWarning(UserWarning):
    """Channels were frozen (not searched) because the model uses ops hwnas has no channel
    rule for; the message names the ops and how many channels they freeze."""
