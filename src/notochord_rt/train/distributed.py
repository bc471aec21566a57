"""Multi-process training through PyTorch's own launcher (``torchrun``).

``torchrun --nproc_per_node N -m notochord_rt train ...`` (or
``python -m torch.distributed.run ...``) starts N copies of the trainer and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; add
``--nnodes``/``--node_rank``/``--rdzv_endpoint`` for several machines. This module
reads those variables, joins the process group (NCCL on GPUs, gloo on CPUs) and wraps
the model in DistributedDataParallel. Without the variables everything degrades to a
single process and no ``torch.distributed`` call is made.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and the progress bar."""
        return self.rank == 0


def info_from_env() -> DistInfo:
    """The job layout that torchrun put in the environment (single process if none)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise UserError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:K`` into a device; each rank gets its GPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' asked for, but no CUDA GPU is available")
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise UserError(f"unknown device {spec!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec!r} asked for, but no CUDA GPU is available")
    return device


def init_process_group(info: DistInfo, device: torch.device) -> None:
    """Join the job's process group (no-op for a single process or if already joined)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    log.info("rank %d/%d joined the %s process group", info.rank, info.world_size, backend)


def shutdown() -> None:
    """Leave the process group, if joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when running multi-process, else the model.

    DDP broadcasts rank 0's weights at construction, so every rank starts identical.
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``t`` over all ranks (returns a new tensor; ``t`` itself for one process)."""
    if not info.enabled:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` over all ranks (a new tensor; ``t`` itself for one process)."""
    if not info.enabled:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled:
        dist.barrier()
