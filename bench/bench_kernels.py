"""Kernel benchmarks on a CUDA GPU; prints markdown table rows for BENCHMARKS.md.

- decode attention: achieved bandwidth (bytes = the K and V rows read) at batch 64 x 4k context,
  head_dim 128, 12 q / 2 kv heads, bf16, vs the HBM peak (H100 SXM: 3.35 TB/s); also batch 1 x 32k
  and a 32k-wide req->slot table with 4k contexts (the worker's real table shape).
- prefill attention: TFLOP/s at 8k tokens, causal, head_dim 128, vs dense bf16 peak (989), with
  torch SDPA (FlashAttention) on the same problem as a baseline.
- sampling at batch 256 x 151936 vocabulary: with the sort-based filters and without.

Usage: python bench/bench_kernels.py [--peak-gbs 3350] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton.testing

from litelang.kernels.attention import decode_attention, extend_attention
from litelang.kernels.sampling import sample

DEV = "cuda"
BF16 = torch.bfloat16


def decode_case(batch: int, context: int, table_width: int, q_heads=12, kv_heads=2, head_dim=128, shuffled=True):
    """Every request at `context` tokens. Slots shuffled (worst case for locality) or contiguous."""
    slots = batch * context
    k_pool = torch.randn(slots, kv_heads, head_dim, device=DEV, dtype=BF16)
    v_pool = torch.randn_like(k_pool)
    order = torch.randperm(slots, device=DEV) if shuffled else torch.arange(slots, device=DEV)
    req_to_slot = torch.zeros(batch, table_width, device=DEV, dtype=torch.int32)
    req_to_slot[:, :context] = order.view(batch, context)
    req_rows = torch.arange(batch, device=DEV, dtype=torch.int32)
    seq_lens = torch.full((batch,), context, device=DEV, dtype=torch.int32)
    q = torch.randn(batch, q_heads, head_dim, device=DEV, dtype=BF16)
    args = (q, k_pool, v_pool, req_to_slot, req_rows, seq_lens, head_dim**-0.5)
    kv_bytes = 2 * batch * context * kv_heads * head_dim * k_pool.element_size()
    return args, kv_bytes


def bench_decode(peak_gbs: float) -> list[str]:
    rows = []
    for batch, context, width, shuffled in [(64, 4096, 4096, True), (64, 4096, 4096, False),
                                            (64, 4096, 32768, False), (1, 32768, 32768, False),
                                            (256, 2048, 32768, False)]:
        args, kv_bytes = decode_case(batch, context, width, shuffled=shuffled)
        ms = triton.testing.do_bench(lambda: decode_attention(*args))
        gbs = kv_bytes / (ms * 1e-3) / 1e9
        slots = "shuffled" if shuffled else "contiguous"
        rows.append(f"| decode attention | batch {batch} x {context} ctx (table {width}, {slots} slots), "
                    f"hd 128, 12q/2kv, bf16 | {ms * 1e3:.1f} us | {gbs:.0f} GB/s | {100 * gbs / peak_gbs:.0f}% HBM |")
    return rows


def bench_prefill(peak_tflops: float, seq: int = 8192, q_heads: int = 12, kv_heads: int = 2, head_dim: int = 128) -> list[str]:
    q = torch.randn(seq, q_heads, head_dim, device=DEV, dtype=BF16)
    k_pool = torch.randn(seq, kv_heads, head_dim, device=DEV, dtype=BF16)
    v_pool = torch.randn_like(k_pool)
    req_to_slot = torch.arange(seq, device=DEV, dtype=torch.int32)[None, :]
    rows_ = torch.zeros(1, device=DEV, dtype=torch.int32)
    cu = torch.tensor([0, seq], device=DEV, dtype=torch.int32)
    prefix = torch.zeros(1, device=DEV, dtype=torch.int32)
    flops = 4 * seq * seq * head_dim * q_heads / 2  # QK^T and PV, causal half
    ms = triton.testing.do_bench(
        lambda: extend_attention(q, k_pool, v_pool, req_to_slot, rows_, cu, prefix, head_dim**-0.5, max_new_len=seq)
    )
    tflops = flops / (ms * 1e-3) / 1e12
    rows = [f"| prefill attention (Triton extend) | {seq} tokens causal, hd {head_dim}, {q_heads}q/{kv_heads}kv, bf16 "
            f"| {ms * 1e3:.0f} us | {tflops:.0f} TFLOP/s | {100 * tflops / peak_tflops:.0f}% peak |"]
    # baseline: torch SDPA on contiguous K/V (no slot gather); GQA by repeating K/V heads
    qt = q.transpose(0, 1)[None]
    kt = k_pool.transpose(0, 1)[None].repeat_interleave(q_heads // kv_heads, dim=1)
    vt = v_pool.transpose(0, 1)[None].repeat_interleave(q_heads // kv_heads, dim=1)
    ms = triton.testing.do_bench(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
    tflops = flops / (ms * 1e-3) / 1e12
    rows.append(f"| prefill attention (torch SDPA baseline) | same, contiguous K/V | {ms * 1e3:.0f} us "
                f"| {tflops:.0f} TFLOP/s | {100 * tflops / peak_tflops:.0f}% peak |")
    return rows


def bench_sample(batch: int = 256, vocab: int = 151936) -> list[str]:
    logits = torch.randn(batch, vocab, device=DEV)
    temperature = torch.full((batch,), 0.7, device=DEV)
    top_k = torch.full((batch,), 20, device=DEV, dtype=torch.long)
    top_p = torch.full((batch,), 0.8, device=DEV)
    min_p = torch.zeros(batch, device=DEV)
    seeds = torch.arange(batch, device=DEV)
    positions = torch.zeros(batch, device=DEV, dtype=torch.long)
    args = (logits, temperature, top_k, top_p, min_p, seeds, positions)
    rows = []
    for needs_filter in (True, False):
        ms = triton.testing.do_bench(lambda: sample(*args, needs_filter=needs_filter))
        what = "top-k/top-p (sort)" if needs_filter else "temperature only (no sort)"
        rows.append(f"| sample | batch {batch} x vocab {vocab}, {what} | {ms * 1e3:.0f} us | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-gbs", type=float, default=3350.0, help="HBM peak in GB/s (H100 SXM: 3350)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}\n")
    print("| kernel | shape | time | achieved | of peak |")
    print("| --- | --- | --- | --- | --- |")
    for row in bench_decode(args.peak_gbs) + bench_prefill(args.peak_tflops) + bench_sample():
        print(row, flush=True)


if __name__ == "__main__":
    main()
