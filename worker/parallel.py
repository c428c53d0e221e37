"""Tensor-parallel helpers: which rank am I, and the all-reduce after row-parallel layers.

torch.distributed with NCCL on GPU and gloo on CPU, so TP=2 runs in CI too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.size > 1:
            dist.broadcast(x, src=src)
        return x


def init_tp_group(rank: int, size: int, master_addr: str, master_port: int, device: torch.device) -> TPGroup:
    if size == 1:
        return TPGroup()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=size
    )
    return TPGroup(rank=rank, size=size)


def shard_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """The [start, end) of an evenly split dimension (it must divide)."""
    if total % size:
        raise ValueError(f"cannot split {total} evenly over tp={size}")
    per = total // size
    return rank * per, (rank + 1) * per
