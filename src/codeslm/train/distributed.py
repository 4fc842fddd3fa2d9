"""Training on several processes under torchrun: DistributedDataParallel, gloo on CPU, nccl on CUDA.

Every rank draws the same global batch from the training stream and keeps its own rows of it, so
a run is the same run on any number of ranks (one process on the global batch computes the same
loss, within float tolerance) and resumes on a different number of ranks. Losses are summed over
target tokens and divided by the global batch's count, so the ranks' averaged gradients are the
single process's. Only rank 0 logs, checkpoints and exports.
But: it starts no processes; `torchrun --nproc_per_node N` (or `--nnodes` with a rendezvous
endpoint) does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from codeslm.errors import TrainingError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join_world(device: str, batch_size: int) -> tuple[World, str]:
    """The process group torchrun set up (if any) and this rank's device.

    Raises `TrainingError` when the world size does not divide the global batch.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if batch_size % size:
        raise TrainingError(
            f"torchrun runs {size} processes but the batch size {batch_size} is not a multiple of "
            f"{size}: each rank takes an equal share of the global batch; use --batch-size "
            f"{(batch_size // size + 1) * size} or --nproc_per_node dividing {batch_size}")
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return World(rank, size, local), device


def wrap(model, world: World, device: str):
    """The model under DistributedDataParallel when there are several ranks."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(x: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's rows of a global batch (B, ...) -> (B / size, ...)."""
    if not world.distributed:
        return x
    per = x.shape[0] // world.size
    return x[world.rank * per:(world.rank + 1) * per]


def global_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """`values` summed over the ranks (the same tensor on one rank)."""
    if not world.distributed:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values)
    return values


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def leave(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
