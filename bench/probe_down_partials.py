"""Can down's split-K reduction move into the add + RMSNorm kernel after it?

cuBLAS runs down at M = 48 as a split-K GEMM plus its own reduce kernel (~1.7 us on the step's
critical path). Here down is one strided-batched cuBLAS GEMM writing float32 partials, and the
norm kernel sums them (kernels/rmsnorm.py rms_norm_sum). Times are CUDA-graph replays with the
weights rotated out of L2, against the served pair (cuBLAS down, then rms_norm).

Usage (GPU): python bench/probe_down_partials.py [--ms 24,32,48,64]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from litelang.bench.probes import timed_row
from litelang.kernels.linear import linear_partials
from litelang.kernels.rmsnorm import rms_norm, rms_norm_sum

BF16 = torch.bfloat16


SHAPES = {"1.5B down": (1536, 8960), "1.5B o": (1536, 1536), "7B o": (3584, 3584)}


def probe(m: int, n: int, k: int) -> None:
    copies = max(2, int(200e6 // (n * k * 2)))  # each call's weight is out of L2
    ws = [torch.randn(n, k, device="cuda").to(BF16) * 0.02 for _ in range(copies)]
    x = torch.randn(m, k, device="cuda").to(BF16)
    residual = torch.randn(m, n, device="cuda").to(BF16)
    norm_w = (1 + 0.1 * torch.randn(n, device="cuda")).to(BF16)
    ref, _ = rms_norm(F.linear(x, ws[0]), norm_w, 1e-6, residual)
    calls = copies * max(1, 64 // copies)
    t, _ = timed_row(lambda i: rms_norm(F.linear(x, ws[i % copies]), norm_w, 1e-6, residual)[0], calls)
    row = [f"served {t:.2f}"]
    for splits in (1, 2, 3, 4, 5, 6, 7, 8):
        if k % splits:
            continue
        t, bad = timed_row(lambda i: rms_norm_sum(linear_partials(x, ws[i % copies], splits), norm_w, 1e-6,
                                                  residual)[0], calls, ref.float(), 0.05)
        row.append(f"{splits}: {t:.2f}{bad}")
    print(f"M {m}, {n} x {k}: " + ", ".join(row), flush=True)
    del ws


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ms", default="24,32,48,64")
    args = parser.parse_args()
    for name, (n, k) in SHAPES.items():
        print(f"== {name} (us: served cuBLAS + rms_norm, then split-K partials by split count + rms_norm_sum)")
        for m in map(int, args.ms.split(",")):
            probe(m, n, k)


if __name__ == "__main__":
    main()
