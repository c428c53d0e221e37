"""Kernel benchmarks on a CUDA GPU; prints markdown table rows for BENCHMARKS.md.

- decode attention: achieved bandwidth (bytes = the K and V rows read) at batch 64 x 4k context,
  head_dim 128, 12 q / 2 kv heads, bf16, vs the HBM peak (H100 SXM: 3.35 TB/s); also batch 1 x 32k
  and a 32k-wide req->slot table with 4k contexts (the worker's real table shape).
- prefill attention: TFLOP/s at 8k tokens, causal, head_dim 128, vs dense bf16 peak (989), with
  torch SDPA (FlashAttention) on the same problem as a baseline.
- sampling at batch 256 x 151936 vocabulary: with the sort-based filters and without.
- small-M linear (kernels/linear.py) at Qwen2-1.5B decode shapes, M 1, 8 and 48: time per call and
  GB/s of weight read, beside cuBLAS (F.linear) in the same run; weights rotate so none is in L2.
- launch-bound decode-step kernels, timed per call by replaying a CUDA graph of 100 calls (as
  the worker's decode steps run them; K/V stay in L2 across the replays): fused RoPE + KV
  store vs apply_rope + store_kv at batch 1 and 64, and decode attention at batch 1 (contexts
  64, 300, 32k), batch 40 (600..1200) and batch 128 (250..350), req->slot table 2048 and 32k
  wide. With --decode-baseline PATH (a copy of an older kernels/attention.py) its
  decode_attention is timed beside the current one. (bench/tune_decode.py sweeps decode configs.)

Usage: python bench/bench_kernels.py [--peak-gbs 3350] [--peak-tflops 989] [--decode-baseline PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F
import triton.testing

from litelang.bench.tune_linear import SHAPES as LINEAR_SHAPES, rotating_us
from litelang.kernels.attention import decode_attention, extend_attention
from litelang.kernels.kv_store import store_kv
from litelang.kernels.rope import apply_rope, rope_cos_sin_cache
from litelang.kernels.rope_store import apply_rope_and_store_kv
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


def graph_us(fn: Callable[[], object], calls: int = 100, replays: int = 10) -> float:
    """Microseconds per call of fn from replaying a CUDA graph of `calls` back-to-back calls:
    for microsecond kernels the launch cost inside a graph is what a decode step pays, and
    do_bench's eager launches would measure the host instead."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()  # warm
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (calls * replays)


def bench_rope_store(q_heads: int = 12, kv_heads: int = 2, head_dim: int = 128) -> list[str]:
    """One fused launch vs apply_rope + store_kv, on views of a fused qkv output (Qwen2-1.5B)."""
    rows = []
    cos_sin = rope_cos_sin_cache(head_dim, 32768, 1e6, device=DEV)
    k_pool = torch.zeros(1 << 16, kv_heads, head_dim, device=DEV, dtype=BF16)
    v_pool = torch.zeros_like(k_pool)
    for tokens in (1, 64):
        qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, device=DEV, dtype=BF16)
        q, k, v = qkv.view(tokens, -1, head_dim).split([q_heads, kv_heads, kv_heads], dim=1)
        positions = torch.randint(0, 32768, (tokens,), device=DEV)
        slots = torch.randperm(1 << 16, device=DEV)[:tokens]

        def separate():
            apply_rope(q, k, positions, cos_sin)
            store_kv(k_pool, v_pool, k, v, slots)

        fused = graph_us(lambda: apply_rope_and_store_kv(q, k, v, positions, cos_sin, k_pool, v_pool, slots))
        two = graph_us(separate)
        rows.append(f"| rope + kv store (graph replay) | {tokens} tokens, hd {head_dim}, {q_heads}q/{kv_heads}kv, bf16 "
                    f"| fused {fused:.2f} us | separate {two:.2f} us | |")
    return rows


def decode_case_lens(lens: list[int], table_width: int, q_heads=12, kv_heads=2, head_dim=128):
    """Request b at lens[b] tokens on contiguous slots, in a table table_width wide."""
    k_pool = torch.randn(sum(lens), kv_heads, head_dim, device=DEV, dtype=BF16)
    v_pool = torch.randn_like(k_pool)
    req_to_slot = torch.zeros(len(lens), table_width, device=DEV, dtype=torch.int32)
    start = 0
    for b, n in enumerate(lens):
        req_to_slot[b, :n] = torch.arange(start, start + n, device=DEV, dtype=torch.int32)
        start += n
    req_rows = torch.arange(len(lens), device=DEV, dtype=torch.int32)
    seq_lens = torch.tensor(lens, device=DEV, dtype=torch.int32)
    q = torch.randn(len(lens), q_heads, head_dim, device=DEV, dtype=BF16)
    return q, k_pool, v_pool, req_to_slot, req_rows, seq_lens, head_dim**-0.5


def bench_decode_small(baseline: Callable | None) -> list[str]:
    """Decode attention where launches and the split policy dominate, per call in a graph."""
    b40 = torch.randint(600, 1201, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    b128 = torch.randint(250, 351, (128,), generator=torch.Generator().manual_seed(0)).tolist()
    cases = [("batch 1 x 64 ctx", [64], 2048), ("batch 1 x 64 ctx", [64], 32768),
             ("batch 1 x 300 ctx", [300], 2048), ("batch 1 x 300 ctx", [300], 32768),
             ("batch 1 x 32768 ctx", [32768], 32768),
             ("batch 40 x 600..1200 ctx", b40, 2048), ("batch 40 x 600..1200 ctx", b40, 32768),
             ("batch 128 x 250..350 ctx", b128, 32768)]
    rows = []
    for name, lens, width in cases:
        args = decode_case_lens(lens, width)
        now = graph_us(lambda: decode_attention(*args))
        before = f"before {graph_us(lambda: baseline(*args)):.2f} us" if baseline else ""
        rows.append(f"| decode attention (graph replay) | {name} (table {width}), hd 128, 12q/2kv, bf16 "
                    f"| {now:.2f} us | {before} | |")
    return rows


def load_decode_baseline(path: str) -> Callable:
    """decode_attention from a copy of an older kernels/attention.py, for before/after rows."""
    spec = importlib.util.spec_from_file_location("decode_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decode_attention


def bench_linear(peak_gbs: float) -> list[str]:
    """Triton small-M linear (linear_silu_mul for gate_up) vs cuBLAS (+ silu_and_mul) at Qwen2-1.5B
    decode shapes, per call in a CUDA graph over rotating weight copies (no L2 reuse, like layers)."""
    rows = []
    for name, shape in LINEAR_SHAPES["1.5b"].items():
        n, k = shape[:2]
        for m in (1, 8, 48):
            mine, cublas = rotating_us(shape, m, "served"), rotating_us(shape, m, None)
            gbs = n * k * 2 / (mine * 1e-6) / 1e9
            rows.append(f"| linear {name} (graph replay) | M {m} x [{n}x{k}], bf16 | {mine:.2f} us "
                        f"(cuBLAS {cublas:.2f} us) | {gbs:.0f} GB/s | {100 * gbs / peak_gbs:.0f}% HBM |")
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
    parser.add_argument("--decode-baseline", help="an older kernels/attention.py to time beside the current one")
    args = parser.parse_args()
    baseline = load_decode_baseline(args.decode_baseline) if args.decode_baseline else None
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}\n")
    print("| kernel | shape | time | achieved | of peak |")
    print("| --- | --- | --- | --- | --- |")
    for row in bench_linear(args.peak_gbs) + bench_rope_store() + bench_decode_small(baseline):
        print(row, flush=True)
    for row in bench_decode(args.peak_gbs) + bench_prefill(args.peak_tflops) + bench_sample():
        print(row, flush=True)


if __name__ == "__main__":
    main()
