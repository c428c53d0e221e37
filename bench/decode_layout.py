"""Decode attention over K/V slot layouts, timed two ways: eager `do_bench` and CUDA-graph replay.

Checks whether where a request's slots lie in the pool (shuffled, contiguous, contiguous runs
with a gap between requests) changes the kernel's time, and how far eager timing wanders.

    python -m litelang.bench.decode_layout
"""

from __future__ import annotations

import torch
import triton

from litelang.bench.bench_kernels import graph_us
from litelang.kernels.attention import decode_attention

BF16, DEV = torch.bfloat16, "cuda"
CASES = [(64, 4096, 4096), (64, 4096, 32768), (1, 32768, 32768), (40, 900, 2048)]  # batch, context, table width
LAYOUTS = [("shuffled", 0), ("contiguous", 0), ("contiguous", 37), ("contiguous", 1000)]  # (layout, gap in slots)


def case(batch: int, context: int, width: int, layout: str, gap: int):
    slots = batch * (context + gap) + 64
    k = torch.randn(slots, 2, 128, device=DEV, dtype=BF16)
    v = torch.randn_like(k)
    table = torch.zeros(batch, width, device=DEV, dtype=torch.int32)
    if layout == "shuffled":
        order = torch.randperm(slots, device=DEV)[: batch * context].view(batch, context)
    else:  # request b's slots from b * (context + gap) on
        order = torch.arange(batch, device=DEV)[:, None] * (context + gap) + torch.arange(context, device=DEV)[None, :]
    table[:, :context] = order.int()
    rows = torch.arange(batch, device=DEV, dtype=torch.int32)
    lens = torch.full((batch,), context, device=DEV, dtype=torch.int32)
    q = torch.randn(batch, 12, 128, device=DEV, dtype=BF16)
    return (q, k, v, table, rows, lens, 128**-0.5), 2 * batch * context * 2 * 128 * 2


def main() -> None:
    for batch, context, width in CASES:
        for layout, gap in LAYOUTS:
            args, kv_bytes = case(batch, context, width, layout, gap)
            ms = triton.testing.do_bench(lambda: decode_attention(*args), warmup=50, rep=300)
            print(f"b{batch} x {context} table {width} {layout} gap {gap}: do_bench {ms * 1e3:.1f} us "
                  f"({kv_bytes / ms / 1e6:.0f} GB/s); graph {graph_us(lambda: decode_attention(*args), calls=20):.1f} us", flush=True)


if __name__ == "__main__":
    main()
