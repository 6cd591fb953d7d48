"""Process-group set-up for single-process and ``torchrun`` training, seeding and small collective helpers.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the engine runs as a single process.
NCCL is used on GPUs and gloo on CPUs. The process group gets a finite timeout so that a rank that dies or stalls
turns into an error on the others instead of a hang (torchrun then tears the job down).
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _timeout() -> datetime.timedelta:
    # Long enough for a slow checkpoint write on rank 0, short enough that a dead peer is noticed.
    return datetime.timedelta(seconds=float(os.environ.get("LGRNET_DIST_TIMEOUT_S", "600")))


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one and pick this rank's device.

    ``device``: "auto" (CUDA when available, else CPU), "cpu", or "cuda".
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend=backend, timeout=_timeout(), **kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed(synchronize: bool = False) -> None:
    """Leave the process group, if any. ``synchronize`` (a normal end, every rank here): wait for all ranks first;
    gloo aborts a process ("terminate called without an active exception") now and then when a peer tears the
    group down while it is still leaving. Not after an error: a rank that died would never arrive."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy placed on this rank's device); identity single-process."""
    if not info.distributed:
        return tensor
    out = tensor.detach().to(info.device).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's value on every rank (used for the resume decision so all ranks load the same checkpoint)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch with ``seed + rank`` (per-rank streams, as the reference's ``7 + rank``)."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (tests, exact-resume checks); slower on GPU."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
