"""Running the same Trainer under `torchrun`: the process group, and the model wrapped for data parallelism.

DDP keeps a full copy of the model per process and averages gradients; FSDP2 (`fully_shard`) shards
parameters, gradients and optimiser state across processes, for full fine-tuning of a model that does not fit
one GPU. Every process draws the same global batch order (same seed) and takes its own slice of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup() -> World:
    """The process group torchrun describes in the environment (started here if not yet), else one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def wrap(model: nn.Module, world: World, strategy: str, device: torch.device) -> nn.Module:
    """The model as the training loop calls it: itself (one process), DDP, or FSDP2-sharded in place."""
    if not world.active:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        base = getattr(model, "base_model", model)
        for layer in base.backbone.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    ids = [device.index] if device.type == "cuda" else None
    # find_unused_parameters: methods with phases (SDT) freeze part of their parameters for a while
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def all_reduce_sum(values, device) -> list:
    """Sums of a few numbers over every process (the loss and token counts the logs report)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


__all__ = ["World", "setup", "wrap", "all_reduce_sum", "barrier"]
