"""Checkpoints of :func:`hwnas.fit`: atomic save, validated load, and the resume key.

A checkpoint holds the whole state of a fit (weights, gates, optimizer, regularizer,
early stopping, history, random number generators) after an epoch, so an interrupted run
continues bit for bit. It is resumed only by the run that made it: the checkpoint carries
a *resume key* (:func:`resume_key`) naming everything that changes the result (the fit
settings, the absolute cost targets, the hardware target, a fingerprint of the
SearchModel's architecture and weights at the start, the data's size and content, the
loss and regularizer, and whatever the caller adds, e.g. the CLI's model and data
factories). A checkpoint with another key is refused with one line that says what differs.

Files are written with :func:`hwnas._internal.files.atomic_write`: a kill during a save leaves the
previous checkpoint whole, and the temporary ``*.part`` files of a killed save are
removed the next time the checkpoint is opened.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> ckpt = Checkpoint(Path(tempfile.mkdtemp()) / "ckpt.pt")
    >>> ckpt.save({"epoch": 3}, key={"fit settings": {"lr": 0.001}})
    >>> ckpt.load(key={"fit settings": {"lr": 0.001}})["epoch"]
    3
    >>> ckpt.load(key={"fit settings": {"lr": 0.01}})
    Traceback (most recent call last):
    ...
    hwnas.errors.CheckpointError: checkpoint '...ckpt.pt' was made by another run: fit \
settings differ (lr: 0.001 in the checkpoint, 0.01 now); start over with --fresh (hwnas \
search) or remove the file
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Mapping, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from hwnas._internal.files import atomic_write, load_torch_file, remove_stale_parts
from hwnas.errors import CheckpointError, InvalidValueError

if TYPE_CHECKING:
    from hwnas.search import SearchModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "data_fingerprint",
    "model_fingerprint",
    "resume_key",
    "rng_state",
    "set_rng_state",
    "start_fingerprint",
]

CHECKPOINT_FORMAT = "hwnas-fit"
#: Version 2: carries the resume key; no ``warmup_loss``. Version 3: plain data only (it
#: loads with ``weights_only=True``), the warm-up baseline accuracies.
CHECKPOINT_VERSION = 3
#: Datasets up to this many bytes of tensors are hashed into the resume key.
_HASH_LIMIT = 64 * 2**20


class Checkpoint:
    """One checkpoint file: atomic :meth:`save`, validated :meth:`load`.

    Args:
        path: The file (its folder is created when missing); ``None`` disables both.
        trust: Load a file that holds more than tensors and plain data (one of an older
            hwnas, or of unknown origin: such a file can run code when loaded). By default
            it is refused with an :class:`~hwnas.errors.UntrustedFileError`.
    """

    def __init__(self, path: str | os.PathLike | None, trust: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.trust = trust
        if self.path is not None and self.path.parent.is_dir():
            remove_stale_parts(self.path.parent, self.path.name)

    def save(self, state: Mapping[str, Any], key: Mapping[str, Any]) -> None:
        """Write ``state`` with its resume ``key``; the previous file stays until it is whole."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        full = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "key": dict(key), **state}
        with atomic_write(self.path) as tmp:
            torch.save(full, tmp)

    def load(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The saved state, or None when there is no file.

        Raises:
            CheckpointError: the file is not a readable hwnas checkpoint of this version,
                or it was made by another run (its resume key differs from ``key``).
        """
        if self.path is None or not self.path.exists():
            return None
        try:
            state = load_torch_file(self.path, "checkpoint", self.trust)
        except InvalidValueError as e:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} is corrupt or not a torch file ({e}); it was "
                "left in place: move it away (or use --fresh) to start a new search"
            ) from e
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{str(self.path)!r} is not an hwnas fit checkpoint (no 'format': "
                f"'{CHECKPOINT_FORMAT}')"
            )
        if state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} has version {state.get('version')!r}, but this "
                f"hwnas reads version {CHECKPOINT_VERSION}; start over with --fresh (hwnas "
                "search) or remove the file"
            )
        differences = _differences(state.get("key", {}), key)
        if differences:
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} was made by another run: "
                f"{'; '.join(differences)}; start over with --fresh (hwnas search) or "
                "remove the file"
            )
        return state


def _short(value: Any, limit: int = 40) -> str:
    text = f"{value:,.6g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two resume keys, one short phrase per entry."""
    out = []
    for name in sorted(set(saved) | set(now), key=lambda k: (k not in now, k)):
        a, b = saved.get(name), now.get(name)
        if a == b:
            continue
        if a is None and isinstance(b, Mapping):
            a = {}
        if b is None and isinstance(a, Mapping):
            b = {}
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys = [k for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]
            parts = [f"{k}: {_short(a.get(k))} in the checkpoint, {_short(b.get(k))} now"
                     for k in keys[:3]]
            more = f", and {len(keys) - 3} more" if len(keys) > 3 else ""
            out.append(f"{name} differ ({', '.join(parts)}{more})")
        elif isinstance(a, str) and a.startswith("sha256:"):
            out.append(f"{name} differs")
        else:
            out.append(f"{name} differs ({_short(a)} in the checkpoint, {_short(b)} now)")
    return out


# ------------------------------------------------------------------------- fingerprints
def _hash_tensors(h: Any, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.numpy().tobytes() if t.numel() else b"")


def model_fingerprint(search: SearchModel) -> str:
    """A digest of a SearchModel's architecture (graph, channel groups, costs of the
    unpruned model, gate layout) and of its weights and gates now.

    Example:
        >>> import torch, hwnas
        >>> from torch import nn
        >>> a = hwnas.wrap(nn.Linear(3, 2), torch.randn(1, 3))
        >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a)[:7]
        (True, 'sha256:')
    """
    h = hashlib.sha256()
    h.update(search.gm.code.encode())
    h.update(repr([(g.size, g.frozen) for g in search.groups]).encode())
    h.update(repr((search.cost_names, search.channel_multiple, search.per_example)).encode())
    h.update(repr(sorted(search.reference_costs().items())).encode())
    _hash_tensors(h, search.state_dict().items())
    return "sha256:" + h.hexdigest()


def start_fingerprint(search: SearchModel, path: Path | None) -> str:
    """The :func:`model_fingerprint` of ``search`` at the start of the run that writes the
    checkpoint ``path``.

    A run stopped early (``stop_after``) and continued by calling ``fit`` again on the same
    search object starts from trained weights: the search remembers the fingerprint it had
    when the run began (while the checkpoint exists), so the continuation presents the
    same resume key. A fresh search built the same way has that fingerprint too.
    """
    now = model_fingerprint(search)
    if path is None:
        return now
    key = str(path.resolve())
    if not path.exists():
        search.run_origins[key] = now
    return search.run_origins.get(key, now)


def data_fingerprint(data: Any) -> dict[str, Any] | None:
    """Batches, examples and (for tensor datasets up to 64 MiB) a content digest of a loader.

    Nothing is drawn from the loader (that would move its shuffling generator).
    """
    if data is None:
        return None
    out: dict[str, Any] = {}
    if isinstance(data, Sized):
        out["batches"] = len(data)
    dataset = getattr(data, "dataset", None)
    if dataset is not None and isinstance(dataset, Sized):
        out["examples"] = len(dataset)
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and all(isinstance(t, torch.Tensor) for t in tensors):
        size = sum(t.numel() * t.element_size() for t in tensors)
        if size <= _HASH_LIMIT:
            h = hashlib.sha256()
            _hash_tensors(h, ((str(i), t) for i, t in enumerate(tensors)))
            out["content"] = "sha256:" + h.hexdigest()[:16]
    return out


def _name(obj: Any) -> str:
    if obj is None:
        return "None"
    kind = obj if isinstance(obj, type) else type(obj)
    name = getattr(obj, "__qualname__", None) or kind.__qualname__
    return f"{getattr(obj, '__module__', None) or kind.__module__}.{name}"


def resume_key(*, settings: Mapping[str, Any], targets: Mapping[str, float],
               search: SearchModel, train_data: Any, val_data: Any, loss_fn: Any,
               regularizer: Any, world_size: int = 1,
               extra: Mapping[str, Any] | None = None, model: str | None = None
               ) -> dict[str, Any]:
    """Everything that changes the result of a fit, as a plain dict (see the module doc).

    ``extra`` entries (e.g. the CLI's ``"run"``: model and data factories and kwargs,
    input shape) are added as they are; ``model`` is the search's fingerprint at the start
    of the run (:func:`start_fingerprint`; default: now).
    """
    target = search.target
    key: dict[str, Any] = {
        "fit settings": dict(settings),
        "cost targets": {k: float(v) for k, v in sorted(targets.items())},
        "hardware target": f"{target.name} (" + hashlib.sha256(
            repr(target).encode()).hexdigest()[:12] + ")",
        "model": model if model is not None else model_fingerprint(search),
        "train data": data_fingerprint(train_data),
        "validation data": data_fingerprint(val_data),
        "loss": _name(loss_fn),
        "regularizer": _name(regularizer),
        "processes": world_size,
    }
    for name, value in (extra or {}).items():
        key[name] = value
    return key


# ------------------------------------------------------------------------- random state
def rng_state() -> dict[str, Any]:
    """The states of torch's, numpy's and Python's global generators (and CUDA's)."""
    name, keys, pos, has_gauss, cached = cast(tuple[Any, ...], np.random.get_state())
    # plain data only (the checkpoint loads with weights_only=True): numpy's keys as a tensor
    numpy_state = {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                   "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state,
             "python": random.getstate()}
    if torch.cuda.is_available():  # also before CUDA's first use: a run may start there
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint of a machine with more GPUs restores the ones this machine has
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def loader_generator_state(data: Any) -> torch.Tensor | None:
    """The shuffling generator's state of a DataLoader (so a resumed run shuffles alike)."""
    generator = getattr(data, "generator", None)
    return generator.get_state() if isinstance(generator, torch.Generator) else None


def set_loader_generator_state(data: Any, state: torch.Tensor | None) -> None:
    generator = getattr(data, "generator", None)
    if state is not None and isinstance(generator, torch.Generator):
        generator.set_state(state)


def check_model_state(search: SearchModel, state: Mapping[str, torch.Tensor],
                      path: Path | None) -> None:
    """CheckpointError unless ``state`` has exactly the keys and shapes of ``search``."""
    own = search.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if extra:
            parts.append(f"unexpected {extra[:5]}")
        if shapes:
            parts.append(f"shape mismatch {[(k, tuple(state[k].shape)) for k in shapes[:5]]}")
        raise CheckpointError(
            f"checkpoint {str(path)!r} was made for a different model: " + "; ".join(parts)
        )
