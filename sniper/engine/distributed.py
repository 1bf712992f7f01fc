"""torchrun / DDP plumbing: who am I, set up the process group, only rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sniper.errors import SniperError

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "any_rank",
    "barrier",
    "broadcast_object",
    "cleanup",
    "init_distributed",
    "pick_device",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str | None = None, local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` for ``auto``/None when CUDA is available (``cuda`` likewise), else CPU;
    any other name as torch spells it (``cpu``, ``cuda:1``). A name torch does not know, or CUDA
    asked for on a machine without it, is a :class:`SniperError`."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    except RuntimeError as e:
        raise SniperError(f"device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SniperError(f"device {name}: CUDA is not available on this machine")
    return device


def init_distributed(device_name: str | None = None, timeout_s: float = 7200.0) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment; start a process group (NCCL on GPU, gloo on CPU) if world > 1,
    whose collectives fail after ``timeout_s`` seconds of waiting (``train.dist_timeout_s``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank)
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        from datetime import timedelta

        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=float(timeout_s))
        )
    return info, device


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not (info.enabled and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """``flag`` of any rank, on every rank (one small all-reduce; every rank must call it).

    A rank that decides alone to skip a step or to stop leaves the others waiting forever in the
    next gradient all-reduce; decisions taken through this are taken by all ranks together."""
    if not (info.enabled and dist.is_initialized()):
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    if not (info.enabled and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
