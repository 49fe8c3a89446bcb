"""What the command line prints while it works: one line before a step that takes a while,
one after it (``--no-progress`` keeps these; only the bars go).

Example:
    >>> with step("counting"):
    ...     total = sum(range(10))
    counting ...
      done in 0.0 s
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

__all__ = ["step"]


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Print ``what ...``, run the block, print how long it took."""
    start = time.perf_counter()
    print(f"{what} ...", flush=True)
    yield
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
