"""What the probe scripts share: a read-only kernel (the floor any kernel reading the same bytes
meets) and one checked, timed table row."""

from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from litelang.bench.tune_linear import graph_time_us


@triton.jit
def stream_read_kernel(X, Out, n_per_prog, BLOCK: tl.constexpr, EVICT_FIRST: tl.constexpr = False):
    """Each program sums its n_per_prog contiguous elements of X (EVICT_FIRST: as weights are
    streamed, evicted first from L2)."""
    base = X + tl.program_id(0).to(tl.int64) * n_per_prog
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(0, n_per_prog, BLOCK):
        if EVICT_FIRST:
            acc += tl.load(base + i + tl.arange(0, BLOCK), eviction_policy="evict_first").to(tl.float32)
        else:
            acc += tl.load(base + i + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(Out + tl.program_id(0), tl.sum(acc, 0))


def timed_row(fn: Callable[[int], torch.Tensor], calls: int, ref: torch.Tensor | None = None,
              atol: float = 0.0) -> tuple[float, str]:
    """(us per call of fn(i) in a CUDA graph, "" or a WRONG note): fn(0) is first checked against
    ref within atol (no check without ref)."""
    bad = ""
    if ref is not None:
        err = (fn(0).float() - ref).abs().max().item()
        bad = "" if err <= atol else f" WRONG (max err {err:.3g})"
    return graph_time_us(fn, calls), bad
