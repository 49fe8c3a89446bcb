"""Writing files safely: atomic replacement, usual permissions, writable-folder checks.

Every file hwnas writes (checkpoints, ONNX, Verilog, reports) goes through
:func:`atomic_write`: it is written under a temporary name in the destination folder and
moved into place only when complete, so a crash or a failed check never leaves a half
written file, and an older file at the destination is kept until the new one is whole.
The file gets the permissions a plain ``open(path, "w")`` would give (``0666`` minus the
umask), not the ``0600`` of a temporary file.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with atomic_write(Path(d) / "out.txt") as tmp:
    ...         _ = tmp.write_text("done")
    ...     sorted(p.name for p in Path(d).iterdir())
    ['out.txt']
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hwnas.errors import InvalidValueError, OutputError, UntrustedFileError

__all__ = ["PART_SUFFIX", "atomic_write", "ensure_writable_dir", "load_torch_file",
           "remove_stale_parts"]

#: Suffix of the temporary files :func:`atomic_write` creates.
PART_SUFFIX = ".part"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that files can be created in it.

    Raises:
        OutputError: the path is a file, cannot be created, or is not writable; the
            message names the path and the reason.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hwnas-write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"{what} {str(folder)!r} is not writable: "
                          f"{e.strerror or e}") from e
    return folder


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it to ``path`` when the block succeeds.

    The temporary file is removed when the block raises. Its folder must exist. Temporary
    files of ``path`` that a killed writer left behind are removed first, so every writer
    (checkpoint, search.pt, ONNX, Verilog, report) cleans up after its own target.

    Raises:
        OutputError: the folder is missing or not writable.
    """
    path = Path(path)
    if path.parent.is_dir():
        remove_stale_parts(path.parent, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}") from e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_parts(folder: str | os.PathLike, name: str) -> int:
    """Remove temporary files :func:`atomic_write` left for ``name`` (after a kill).

    Returns how many were removed.
    """
    removed = 0
    for p in Path(folder).glob(f".{name}.*{PART_SUFFIX}"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed += 1
    return removed


def load_torch_file(path: Path, what: str, trust: bool = False) -> Any:
    """``torch.load`` of a file hwnas wrote, with ``weights_only=True``: tensors and plain
    data only, so loading runs no code from the file.

    A file that needs more (an old format, or a planted pickle) is refused with an
    :class:`~hwnas.errors.UntrustedFileError`, unless ``trust`` (the caller knows where the
    file came from). A file that is not a torch file is an ``InvalidValueError``.
    """
    import pickle
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise InvalidValueError(f"{what} {str(path)!r} is not a readable torch file (not a "
                                "torch.save archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust:
            import re

            found = re.search(r"GLOBAL (\S+)", str(e))
            first = f"it calls {found.group(1)}" if found else "objects beyond plain data"
            raise UntrustedFileError(
                f"{what} {str(path)!r} holds more than tensors and plain data ({first}); "
                "loading it could run code from the file: load it only if you trust where it "
                "came from (trust=True, or --trust on the command line)") from e
    except Exception as e:
        raise InvalidValueError(f"{what} {str(path)!r} is not a readable torch file "
                                f"({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InvalidValueError(f"{what} {str(path)!r} is not a readable torch file "
                                f"({type(e).__name__}: {e})") from e
