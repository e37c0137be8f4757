"""Data-parallel training over processes started by ``torchrun`` (DDP; gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node=2 -m memplug train CONFIG`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and the rendezvous address; :func:`init_distributed` reads
them. Without them training runs in one process and every helper here is a no-op.

On CUDA each process takes the GPU of its local rank, so a node needs as many GPUs as processes:
more processes than GPUs is refused with one line on every rank (``train.device = "cpu"`` runs
them all on the CPU with gloo). Work that only rank 0 does (checking and claiming the run folder,
filling the data caches) goes through :func:`main_only` and :func:`main_first`, which raise rank
0's error on every rank instead of leaving the others waiting for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .config import DEVICE_PATTERN

__all__ = ["DistInfo", "all_mean", "any_true", "barrier", "close_distributed", "init_distributed", "main_first",
           "main_only", "resolve_device"]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA when available (``cuda:LOCAL_RANK``), else CPU; ``"cuda"``:
    ``cuda:LOCAL_RANK``; ``"cpu"`` or ``"cuda:N"`` as given.

    Raises ValueError for any other spelling and for a CUDA device this machine does not have.
    """
    if not isinstance(spec, str) or not DEVICE_PATTERN.match(spec):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for, but CUDA is not available here")
    device = torch.device(f"cuda:{local_rank}") if spec in ("auto", "cuda") else torch.device(spec)
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ValueError(f"device {str(device)!r} is not present: this machine has {count} CUDA "
                         f"device{'s' * (count != 1)} (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return device


def _local_processes() -> int:
    """The processes torchrun started on this node (``LOCAL_WORLD_SIZE``; another launcher: at
    least this one's local rank + 1)."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    return int(os.environ.get("LOCAL_RANK", "0")) + 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (if any).

    Raises ValueError (the same on every rank, before any process group exists) when the device
    is not present or the node has more processes than GPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and DEVICE_PATTERN.match(device) and device != "cpu" and torch.cuda.is_available():
        _check_one_gpu_per_process(device, _local_processes())
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)


def _check_one_gpu_per_process(device: str, processes: int) -> None:
    """Refuse what NCCL cannot run: two processes of a node on one GPU."""
    count = torch.cuda.device_count()
    if device.startswith("cuda:"):
        raise ValueError(f"device {device!r} would put every process on one GPU: use cuda (one GPU per process) "
                         "or cpu")
    if processes > count:
        raise ValueError(f"torchrun started {processes} processes on this node but it has {count} CUDA "
                         f"device{'s' * (count != 1)}: start at most {count} (--nproc_per_node={count}), or train "
                         "on the CPU (--set train.device=cpu)")


def main_only(fn: Callable[[], T], info: DistInfo) -> T | None:
    """``fn()`` on rank 0 only; its exception is raised on every rank. Returns ``fn()``'s value on
    rank 0 and None elsewhere."""
    if not info.active:
        return fn()
    result, error = None, None
    if info.main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - handed to every rank below, then raised
            error = exc
    shared: list[Any] = [error]
    dist.broadcast_object_list(shared, src=0)
    if shared[0] is not None:
        raise shared[0]
    return result


def main_first(fn: Callable[[], T], info: DistInfo) -> T:
    """``fn()`` on every rank, rank 0 first (it fills the caches the others then read); an
    exception on rank 0 is raised on every rank."""
    result = main_only(fn, info)
    return result if info.main else fn()  # type: ignore[return-value]


def all_mean(value: float, info: DistInfo) -> float:
    """The mean of ``value`` over all processes."""
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def any_true(flag: bool, info: DistInfo) -> bool:
    """Whether any process has ``flag`` set (every process gets the same answer)."""
    if not info.active:
        return flag
    t = torch.tensor([int(flag)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def close_distributed(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
