"""torch.distributed helpers of :func:`hwnas.fit` and the CLI: sharding, rank 0, buffers.

Without an initialised process group every helper is a no-op (one process is rank 0).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from hwnas.errors import InvalidValueError

__all__ = ["broadcast_buffers", "device_for_rank", "init_from_env", "is_distributed",
           "is_rank0", "rank", "shard_loader", "world_size"]


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    return rank() == 0


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank."""
    if is_distributed():
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def shard_loader(loader: Any, seed: int = 0) -> Any:
    """This rank's share of a DataLoader under torch.distributed (the loader itself otherwise).

    The result reads ``loader.dataset`` through a ``DistributedSampler`` (shuffled when
    the loader shuffles, seeded by ``seed``; :func:`hwnas.fit` calls ``set_epoch``) with
    ``batch_size // world_size`` per rank, so the global batch stays the same.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(10, 2)), batch_size=4)
        >>> shard_loader(loader) is loader  # not distributed
        True
    """
    if not is_distributed():
        return loader
    from torch.utils.data import DataLoader, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    world = world_size()
    batch = loader.batch_size
    if batch is None or batch % world:
        raise InvalidValueError(
            f"the loader's batch_size must be divisible by the world size {world}, "
            f"but got {batch}"
        )
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler: DistributedSampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset, batch_size=batch // world, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      drop_last=loader.drop_last)


def init_from_env() -> bool:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); True on rank 0."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return is_rank0()


def device_for_rank(setting: str = "auto") -> str:
    """The device setting of this process: under torchrun a CUDA setting (``"auto"`` on a
    machine with a GPU, ``"cuda"``, ``"cuda:N"``) becomes ``cuda:LOCAL_RANK``, so each rank
    trains on its own GPU; otherwise ``setting`` as it is.

    Example:
        >>> device_for_rank("cpu")
        'cpu'
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    wants_cuda = setting.startswith("cuda") or (setting == "auto" and torch.cuda.is_available())
    if distributed and wants_cuda:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return setting
