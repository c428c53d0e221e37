"""Does the weight's memory layout cap the tensor-core projections at M = 48?

The served dot path reads a [BLOCK_N, BLOCK_K] tile of a row-major weight per pipeline stage:
BLOCK_N separate 128-byte pieces, K * 2 bytes apart. This probe times the same loop over a
weight stored tile by tile ([N / BN, K / BK, BN, BK], each stage one contiguous block), against
the row-major loop, cuBLAS and the served kernel, at the 1.5B gate_up and down shapes, and a
read-only kernel over the same bytes at several grid sizes (the floor any kernel of that size
meets here).

Usage (GPU): python bench/probe_linear_layout.py [--m 48]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from litelang.bench.probes import stream_read_kernel, timed_row
from litelang.bench.tune_linear import graph_time_us
from litelang.kernels.activation import silu_and_mul
from litelang.kernels.linear import linear, linear_silu_mul

BF16 = torch.bfloat16


@triton.jit
def _probe_kernel(X, W, Out, Partial, Counters, M, N, K, stride_xm, TILED: tl.constexpr, SILU: tl.constexpr,
                  SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    kbs = K // BLOCK_K
    per_split = kbs // SPLITS
    r = tl.arange(0, BLOCK_N)
    c = tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    rows = pid_n * BLOCK_N + r
    parts: tl.constexpr = 2 if SILU else 1
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for kb in range(pid_k * per_split, (pid_k + 1) * per_split):
        k0 = kb * BLOCK_K
        x = tl.load(X + offs_m[:, None] * stride_xm + k0 + c[None, :], mask=offs_m[:, None] < M, other=0.0)
        if TILED:
            base = W + ((pid_n * kbs + kb).to(tl.int64) * parts * BLOCK_N) * BLOCK_K
            w = tl.load(base + r[:, None] * BLOCK_K + c[None, :], eviction_policy="evict_first")
            if SILU:
                u = tl.load(base + (BLOCK_N + r[:, None]) * BLOCK_K + c[None, :], eviction_policy="evict_first")
        else:
            w = tl.load(W + rows.to(tl.int64)[:, None] * K + k0 + c[None, :], eviction_policy="evict_first")
            if SILU:
                u = tl.load(W + (rows + N).to(tl.int64)[:, None] * K + k0 + c[None, :], eviction_policy="evict_first")
        acc += tl.dot(w, tl.trans(x))
        if SILU:
            acc_up += tl.dot(u, tl.trans(x))
    acc = tl.trans(acc)
    acc_up = tl.trans(acc_up)
    mask = (offs_m < M)[:, None]
    mn = offs_m[:, None] * N + rows[None, :]
    if SILU:
        gate = acc.to(tl.bfloat16).to(tl.float32)
        acc = (gate * tl.sigmoid(gate)).to(tl.bfloat16).to(tl.float32) * acc_up.to(tl.bfloat16).to(tl.float32)
    if SPLITS > 1:
        tl.store(Partial + pid_k * M * N + mn, acc, mask=mask)
        tl.debug_barrier()
        arrived = tl.atomic_add(Counters + pid_n, 1, sem="acq_rel")
        if arrived == SPLITS - 1:
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in tl.static_range(SPLITS):
                acc += tl.load(Partial + s * M * N + mn, mask=mask, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(Counters + pid_n, 0)
            tl.store(Out + mn, acc.to(tl.bfloat16), mask=mask)
    else:
        tl.store(Out + mn, acc.to(tl.bfloat16), mask=mask)


def tile_weight(w: torch.Tensor, bn: int, bk: int, silu: bool) -> torch.Tensor:
    """[N(*2), K] row-major -> [N / bn, K / bk, parts, bn, bk] contiguous (gate, up tiles adjacent)."""
    parts = [w[: w.shape[0] // 2], w[w.shape[0] // 2:]] if silu else [w]
    n, k = parts[0].shape
    tiles = [p.reshape(n // bn, bn, k // bk, bk).permute(0, 2, 1, 3) for p in parts]
    return torch.stack(tiles, dim=2).contiguous()


def probe(x, w, n, silu, tiled, bn, bk, stages, warps, splits, counters):
    m, k = x.shape
    out = torch.empty(m, n, device=x.device, dtype=BF16)
    partial = torch.empty(splits, m, n, device=x.device, dtype=torch.float32) if splits > 1 else out
    grid = (n // bn, splits)
    _probe_kernel[grid](x, w, out, partial, counters, m, n, k, x.stride(0), TILED=tiled, SILU=silu, SPLITS=splits,
                        BLOCK_M=max(16, triton.next_power_of_2(m)), BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                        num_stages=stages)
    return out


def run_shape(name: str, n: int, k: int, silu: bool, m: int, variants: list) -> None:
    rows = n * (2 if silu else 1)
    copies = max(2, -(-256 * 2**20 // (rows * k * 2)))
    calls = max(copies, 24)
    g = torch.Generator(device="cuda").manual_seed(0)
    ws = [(torch.randn(rows, k, device="cuda", generator=g) * 0.02).to(BF16) for _ in range(copies)]
    x = torch.randn(m, k, device="cuda", generator=g).to(BF16)
    ref = F.linear(x.float(), ws[0].float())
    ref = silu_and_mul(ref.to(BF16)).float() if silu else ref
    counters = torch.zeros(4096, device="cuda", dtype=torch.int32)
    gb = rows * k * 2 / 1e9
    print(f"\n## {name} [{rows}x{k}] M={m} ({gb * 1e3:.1f} MB)\n\n| variant | us | TB/s |\n| --- | --- | --- |")

    def report(label, fn):
        us, bad = timed_row(fn, calls, ref, atol=5e-2 * max(1.0, ref.abs().max().item()))
        print(f"| {label} | {us:.2f} | {gb / us * 1e3:.2f} |{bad}", flush=True)

    base = (lambda i: silu_and_mul(F.linear(x, ws[i % copies]))) if silu else (lambda i: F.linear(x, ws[i % copies]))
    report("cuBLAS" + (" + silu_and_mul" if silu else ""), base)
    served = (lambda i: linear_silu_mul(x, ws[i % copies])) if silu else (lambda i: linear(x, ws[i % copies]))
    report("served", served)
    sink = torch.empty(1 << 16, device="cuda", dtype=torch.float32)
    for progs, block, warps in [(140, 4096, 8), (264, 4096, 8), (560, 4096, 8), (1120, 2048, 4), (2240, 2048, 4)]:
        per = rows * k // progs // block * block

        def read(i, progs=progs, per=per, block=block, warps=warps):
            stream_read_kernel[(progs,)](ws[i % copies], sink, per, BLOCK=block, EVICT_FIRST=True, num_warps=warps)
            return ref
        us = graph_time_us(read, calls)
        print(f"| read-only floor, {progs} programs | {us:.2f} | {progs * per * 2 / us / 1e6:.2f} |", flush=True)
    for tiled, bn, bk, stages, warps, splits in variants:
        if (k // bk) % splits:
            continue
        wv = [tile_weight(w, bn, bk, silu) for w in ws] if tiled else ws
        label = f"{'tiled' if tiled else 'row-major'} BN{bn} BK{bk} st{stages} w{warps} s{splits}"
        try:
            report(label, lambda i, wv=wv, tiled=tiled, bn=bn, bk=bk, stages=stages, warps=warps, splits=splits:
                   probe(x, wv[i % copies], n, silu, tiled, bn, bk, stages, warps, splits, counters))
        except Exception as e:  # noqa: BLE001 - a config that does not compile (shared memory)
            print(f"| {label} | failed: {type(e).__name__} {str(e)[:80]} | |")
        del wv
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=48)
    ap.add_argument("--only", default="gate_up,down")
    args = ap.parse_args()
    # (BLOCK_N, BLOCK_K, stages, warps[, splits]), each run on both layouts
    gate_up = [(t, bn, bk, st, w, 1) for t in (False, True)
               for bn, bk, st, w in [(64, 64, 4, 4), (64, 64, 3, 4), (64, 64, 5, 4), (64, 64, 4, 8), (128, 64, 4, 8),
                                     (64, 128, 3, 4), (64, 128, 4, 4), (64, 256, 2, 4), (32, 128, 4, 4), (32, 256, 3, 4),
                                     (64, 32, 6, 4), (64, 32, 8, 4), (64, 32, 8, 8), (128, 32, 6, 8), (128, 32, 8, 8),
                                     (32, 64, 6, 4), (32, 32, 10, 4)]]
    down = [(t, bn, bk, st, w, s) for t in (False, True)
            for bn, bk, st, w, s in [(64, 128, 4, 4, 5), (64, 128, 4, 4, 7), (64, 128, 3, 4, 10), (64, 64, 6, 4, 5),
                                     (64, 64, 4, 4, 7), (64, 64, 8, 4, 4), (64, 32, 8, 4, 5), (64, 32, 10, 4, 5),
                                     (64, 32, 8, 4, 7), (32, 128, 4, 4, 5), (32, 64, 8, 4, 5), (128, 128, 4, 8, 10),
                                     (128, 32, 8, 8, 10)]]
    if "gate_up" in args.only:
        run_shape("1.5B gate_up", 8960, 1536, True, args.m, gate_up)
    if "down" in args.only:
        run_shape("1.5B down", 1536, 8960, False, args.m, down)


if __name__ == "__main__":
    main()
