"""Where stage 1 runs: one process, or one DDP process of a ``torchrun`` launch, and the collectives it needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from edge_asd.errors import ConfigError, UserError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj: object) -> list:
        """``obj`` of every rank, in rank order (a collective: every rank calls it)."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def average_buffers(self, model: nn.Module) -> None:
        """Every rank's buffers made the same: running statistics averaged, counters taken from rank 0.

        DDP's own buffer broadcast (switched off in :class:`Trainer`) would copy rank 0's at each
        forward, so the statistics would only ever have seen rank 0's share of the batches, and
        each rank would end holding the update of its own last step."""
        if not self.distributed:
            return
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(self.world_size)
            else:
                dist.broadcast(buf, src=0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def setup_runtime(device: str) -> Runtime:
    """Single process, or one DDP process of a ``torchrun`` launch (WORLD_SIZE > 1)."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    initialized = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialized = True
    return Runtime(dev, dist.get_rank(), dist.get_world_size(), initialized)
