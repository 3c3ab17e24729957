"""Distributed training helpers shared by pretraining and world-model training (``torchrun``).

One process needs nothing: ``WORLD_SIZE`` unset means rank 0 of 1 and no process group. Under
``torchrun --nproc_per_node=N`` the group uses nccl on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from jepa_agent.utils import resolve_device


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment (1 process: 0, 1, 0)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Init the process group if ``WORLD_SIZE > 1`` (nccl on GPU, gloo on CPU); return rank, world, device."""
    rank, world, local = dist_info()
    dev = resolve_device(device)
    if world > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def broadcast_path(path: Path, world: int) -> Path:
    """Rank 0's ``path`` on every rank (Hydra run dirs may differ per process)."""
    if world <= 1:
        return path
    obj = [str(path)]
    dist.broadcast_object_list(obj, src=0)
    return Path(obj[0])


def shutdown_distributed() -> None:
    """Destroy the process group if one was created (call once at the end of a script)."""
    if dist.is_initialized():
        dist.destroy_process_group()
