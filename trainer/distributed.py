"""This process's place in a torchrun job, and the few collective operations the trainer needs.

The gradients are all-reduced by hand rather than through DistributedDataParallel so the loss is
normalised by the *global* number of target tokens of the step: two processes then compute exactly
what one process with two-fold accumulation computes. Every function is a no-op in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Dist:
    """This process's place in a torch.distributed job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the torchrun job named by ``WORLD_SIZE``/``LOCAL_RANK`` (NCCL on GPUs, gloo on CPUs)."""
    import torch.distributed as tdist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce(tensor: Any, dist: Dist) -> Any:
    """Sum ``tensor`` over processes in place (no-op in a single process)."""
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(tensor)
    return tensor


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def broadcast_module(module: Any) -> None:
    """Give every process rank 0's parameters and buffers."""
    import torch.distributed as tdist

    for tensor in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(tensor.data, src=0)


def gather_objects(obj: Any, dist: Dist) -> list[Any]:
    """``obj`` of every process, in rank order (``[obj]`` in a single process)."""
    if dist.world == 1:
        return [obj]
    import torch.distributed as tdist

    gathered: list[Any] = [None] * dist.world
    tdist.all_gather_object(gathered, obj)
    return gathered


def sync_grads(params: list[Any], frontend: Any, dist: Dist) -> None:
    """Sum gradients over processes (the loss is already divided by the global token count) and
    average BatchNorm statistics so every process holds the same front end."""
    import torch

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat, dist)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    for _name, buf in frontend.named_buffers():
        if buf.is_floating_point():
            all_reduce(buf.data, dist)
            buf.data /= dist.world
