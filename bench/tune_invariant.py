"""Time the batch-invariant projection (kernels/batch_invariant.py) at Qwen2-1.5B shapes against
cuBLAS, for the served tile config and alternatives (every config at every M): one config per
weight must serve every M, so each is timed at a decode M and a prefill M. The chosen tiles go
into kernels/tuned_configs.json (batch_invariant_linear).

    python -m litelang.bench.tune_invariant [--ms 1,48,24000]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from litelang.kernels import batch_invariant as bi
from litelang.kernels._triton import triton

SHAPES = {"qkv": (2048, 1536), "o": (1536, 1536), "gate_up": (17920, 1536), "down": (1536, 8960),
          "lm_head": (151936, 1536)}
ALTERNATIVES = [bi.TileConfig(*c) for c in (
    (64, 32, 128, 4, 4), (64, 32, 64, 4, 6), (64, 64, 64, 4, 4), (64, 64, 128, 4, 3), (64, 128, 64, 4, 4),
    (128, 32, 128, 4, 4), (128, 64, 64, 4, 4), (128, 64, 128, 8, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3))]


def launch(x: torch.Tensor, w: torch.Tensor, cfg: bi.TileConfig) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m))
    bi._linear_kernel[grid](x, w, w, out, m, n, k, x.stride(0), out.stride(0), HAS_BIAS=False, DOT_F32=False,
                            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,48,24000")
    args = ap.parse_args()
    ms = [int(m) for m in args.ms.split(",")]
    print("| shape | config (BM, BN, BK, warps, stages) | " + " | ".join(f"M = {m}, us" for m in ms) + " |")
    print("| --- | --- |" + " --- |" * len(ms))
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for m in ms]
        cublas = [triton.testing.do_bench(lambda: F.linear(x, w), warmup=5, rep=30) * 1000 for x in xs]
        print(f"| {name} | cuBLAS | " + " | ".join(f"{t:.1f}" for t in cublas) + " |")
        served = bi.tile_config(n, k, torch.bfloat16)
        for cfg in dict.fromkeys([served] + ALTERNATIVES):
            times = [triton.testing.do_bench(lambda: launch(x, w, cfg), warmup=5, rep=30) * 1000 for x in xs]
            mark = " (served)" if cfg == served else ""
            print(f"| {name} | {tuple(cfg)}{mark} | " + " | ".join(f"{t:.1f}" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()
