"""Tensor-parallel helpers: which rank am I, and the all-reduce after row-parallel layers.

torch.distributed with NCCL on GPU and gloo on CPU, so TP=2 runs in CI too. On GPUs, messages of
decode size go through PyTorch's symmetric memory instead (SymmetricAllReduce): a decode step
all-reduces twice per layer a few hundred KB, where NCCL's fixed cost per call dominates.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# The largest message SymmetricAllReduce takes (and its buffer's size); larger ones go through
# NCCL. A decode step's messages are rows x hidden x 2 bytes: 64 x 3,584 (7B) is 448 KiB. On two
# H200s one-shot took 6 to 11 us against NCCL's 11 to 14 up to 448 KiB, and was slower from ~7 MiB.
SMALL_ALL_REDUCE_BYTES = 2 << 20


class SymmetricAllReduce:
    """One-shot all-reduce for small messages: every rank copies its message into a buffer the
    other ranks can read over NVLink, and each sums all ranks' copies itself (one kernel,
    torch.ops.symm_mem.one_shot_all_reduce_copy_out; CUDA-graph capturable). It never uses NVLink
    multicast (TORCH_SYMM_MEM_DISABLE_MULTICAST stays set)."""

    def __init__(self, buffer: torch.Tensor, group_name: str):
        self.buffer, self.group_name = buffer, group_name

    @classmethod
    def create(cls, max_bytes: int, dtype: torch.dtype, device: torch.device) -> SymmetricAllReduce | None:
        """Collective over the default group. None on every rank (NCCL stays) if any rank could
        not set the buffer up: a peer without P2P access, or a PyTorch without symmetric memory."""
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        made: SymmetricAllReduce | None = None
        try:
            import torch.distributed._symmetric_memory as symm_mem

            group_name = dist.group.WORLD.group_name
            buffer = symm_mem.empty(max_bytes // dtype.itemsize, dtype=dtype, device=device)
            symm_mem.rendezvous(buffer, group_name)
            made = cls(buffer, group_name)
        except Exception as e:  # noqa: BLE001 - any failure means: use NCCL
            log.warning("symmetric-memory all-reduce unavailable (%s: %s); NCCL for every size", type(e).__name__, e)
        ok = torch.tensor([made is not None], dtype=torch.int32, device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not ok.item():
            return None
        log.info("rank %d: all-reduces up to %d KiB through symmetric memory, larger ones through NCCL",
                 dist.get_rank(), max_bytes // 1024)
        return made

    def fits(self, x: torch.Tensor) -> bool:
        return x.dtype == self.buffer.dtype and x.is_contiguous() and x.numel() <= self.buffer.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        staged = self.buffer[: x.numel()].view_as(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(staged, x, "sum", self.group_name, out)
        return out


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1
    small: SymmetricAllReduce | None = field(default=None, compare=False)  # messages it fits skip NCCL

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks: x itself (NCCL, in place) or a new tensor (small messages)."""
        if self.size > 1:
            if self.small is not None and self.small.fits(x):
                return self.small(x)
            dist.all_reduce(x)
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.size > 1:
            dist.broadcast(x, src=src)
        return x


def init_tp_group(rank: int, size: int, master_addr: str, master_port: int, device: torch.device,
                  small_all_reduce_bytes: int = 0, dtype: torch.dtype = torch.bfloat16) -> TPGroup:
    """small_all_reduce_bytes > 0 (on CUDA): messages up to that size use SymmetricAllReduce."""
    if size == 1:
        return TPGroup()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=size
    )
    small = None
    if device.type == "cuda" and small_all_reduce_bytes > 0:
        small = SymmetricAllReduce.create(small_all_reduce_bytes, dtype, device)
    return TPGroup(rank=rank, size=size, small=small)


def shard_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """The [start, end) of an evenly split dimension (it must divide)."""
    if total % size:
        raise ValueError(f"cannot split {total} evenly over tp={size}")
    per = total // size
    return rank * per, (rank + 1) * per
