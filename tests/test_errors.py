"""Tests for hwnas/errors.py: every error the package raises is an HwnasError.

The CLI prints an HwnasError as one line with exit code 2 and users catch
``hwnas.HwnasError``; a raise of a plain built-in exception anywhere in the package would
escape both. This test reads every ``raise`` statement of the package.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import hwnas
from hwnas import errors

PACKAGE = Path(hwnas.__file__).parent
HWNAS_ERRORS = {name for name, obj in vars(errors).items()
                if inspect.isclass(obj) and issubclass(obj, errors.HwnasError)}
#: Methods that return an HwnasError for the caller to raise.
ERROR_FACTORIES = {"failure"}
#: The module protocol of PEP 562 requires AttributeError from a module's __getattr__.
ALLOWED = {("__init__.py", "AttributeError"),
           # argparse's protocol for a bad value of a `type=` function (usage, exit 2)
           ("main.py", "argparse.ArgumentTypeError")}


def _raised(path: Path) -> list[tuple[int, str]]:
    """(line, what) of every raise in a file that is not an HwnasError."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        exc = node.exc
        if isinstance(exc, ast.Name) and exc.id[0].islower():
            continue  # re-raise of a caught exception: `raise e`
        func = exc.func if isinstance(exc, ast.Call) else exc
        if isinstance(func, ast.Attribute) and func.attr in ERROR_FACTORIES:
            continue
        name = ast.unparse(func)
        if name.rpartition(".")[2] in HWNAS_ERRORS or (path.name, name) in ALLOWED:
            continue
        bad.append((node.lineno, name))
    return sorted(bad)


def test_every_raise_in_the_package_is_an_hwnas_error():
    found = {str(p.relative_to(PACKAGE)): _raised(p) for p in sorted(PACKAGE.rglob("*.py"))}
    found = {k: v for k, v in found.items() if v}
    assert found == {}


def test_every_error_is_also_a_builtin_that_fits():
    for name in HWNAS_ERRORS - {"HwnasError"}:
        bases = getattr(errors, name).__mro__[1:-2]
        assert any(not issubclass(b, errors.HwnasError) for b in bases), name


def test_the_walker_finds_a_plain_raise(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    if x:\n        raise ValueError('no')\n"
                   "    raise errors.InvalidValueError('yes')\n")
    assert _raised(bad) == [(3, "ValueError")]


@pytest.mark.parametrize("call, error", [
    (lambda: hwnas.HardConcreteGate(0), errors.InvalidValueError),
    (lambda: hwnas.DUCCIO({}, task_loss=1.0), errors.InvalidValueError),
    (lambda: hwnas.DUCCIO({"params": 1.0}, task_loss=1.0).current_strengths(),
     errors.NotReadyError),
    (lambda: hwnas.regularizers.get("no_such"), errors.UnknownNameError),
    (lambda: hwnas.BaseRegularizer("", 1.0), errors.InvalidTypeError),
])
def test_errors_formerly_plain_are_hwnas_errors(call, error):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, errors.HwnasError)
