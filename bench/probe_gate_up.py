"""The prefill MLP's gate_up: cuBLAS then silu_and_mul (served) against one Triton GEMM that
writes only SiLU(gate) * up (two accumulators per program), by config, at prefill token counts.
Unfused, the [tokens, 2 * intermediate] intermediate costs 12.4 of the 1.5B's 111.6 ms prefill of
40 x 600 tokens (profile_step --prefill 40x600, H100). CUDA-event times over back-to-back calls
(compute-bound: the weights' place in L2 does not matter here). Each fused row checks its output
against the served path's (max diff). Measured and dropped: BENCHMARKS.md, fifteenth session.

Usage (GPU): python -m litelang.bench.probe_gate_up [--ms 8192,24000]
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import torch
import torch.nn.functional as F

from litelang.kernels._triton import INTERPRET, tl, triton
from litelang.kernels.activation import silu_and_mul


class GateUpConfig(NamedTuple):
    block_m: int
    block_n: int  # gate columns per program (it reads as many up rows again)
    block_k: int
    group_m: int  # row blocks that walk the column blocks together, so weight tiles stay in L2
    num_warps: int
    num_stages: int


@triton.jit
def _gate_up_silu_kernel(X, W, Out, M, N, K, stride_xm, stride_om,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         GROUP_M: tl.constexpr, DOT_F32: tl.constexpr):
    """Program (row block, column block) of Out [M, N] = silu(x @ Wg.T) * (x @ Wu.T), where W is
    [2N, K] with the gate rows first. Rows and columns past the edges load zeros, never stored."""
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(M, BLOCK_M)
    blocks_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = X + rows.to(tl.int64)[:, None] * stride_xm + ks[None, :]
    g_ptrs = W + cols.to(tl.int64)[:, None] * K + ks[None, :]
    u_ptrs = g_ptrs + N.to(tl.int64) * K
    row_ok = (rows < M)[:, None]
    col_ok = (cols < N)[:, None]
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + ks < K)[None, :]
        x = tl.load(x_ptrs + k0, mask=row_ok & k_ok, other=0.0)
        g = tl.load(g_ptrs + k0, mask=col_ok & k_ok, other=0.0)
        u = tl.load(u_ptrs + k0, mask=col_ok & k_ok, other=0.0)
        if DOT_F32:
            acc_g = tl.dot(x.to(tl.float32), tl.trans(g.to(tl.float32)), acc_g, input_precision="ieee")
            acc_u = tl.dot(x.to(tl.float32), tl.trans(u.to(tl.float32)), acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(x, tl.trans(g), acc_g)
            acc_u = tl.dot(x, tl.trans(u), acc_u)
    dtype = Out.dtype.element_ty
    # round gate, up and silu(gate) to the output dtype, as linear then silu_and_mul do
    gate = acc_g.to(dtype).to(tl.float32)
    act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
    out = act * acc_u.to(dtype).to(tl.float32)
    out_ptrs = Out + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, out.to(dtype), mask=row_ok & (cols < N)[None, :])


CONFIG = GateUpConfig(block_m=128, block_n=128, block_k=32, group_m=16, num_warps=8, num_stages=4)


def gate_up_silu_mul(x: torch.Tensor, w_gate_up: torch.Tensor, config: GateUpConfig | None = None) -> torch.Tensor:
    """Triton version of linear_silu_mul_ref for any M: x [M, K] (row-strided views allowed),
    w_gate_up [2I, K] gate rows first -> [M, I]. No host sync, CUDA-graph capturable."""
    m, k = x.shape
    n = w_gate_up.shape[0] // 2
    if x.stride(-1) != 1:
        x = x.contiguous()
    w = w_gate_up.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    cfg = config or (GateUpConfig(16, 16, 16, 2, 4, 1) if INTERPRET else CONFIG)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _gate_up_silu_kernel[grid](
        x, w, out, m, n, k, x.stride(0), out.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        DOT_F32=INTERPRET or x.dtype == torch.float32, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


SHAPES = {"1.5B": (8960, 1536), "7B": (18944, 3584)}
CONFIGS = [
    CONFIG,
    GateUpConfig(128, 128, 64, 8, 8, 3),
    GateUpConfig(128, 128, 64, 16, 8, 3),
    GateUpConfig(128, 128, 32, 32, 8, 4),
    GateUpConfig(128, 128, 32, 16, 8, 5),
    GateUpConfig(128, 64, 64, 8, 8, 4),
    GateUpConfig(256, 64, 64, 16, 8, 3),
]


def ms_per_call(fn, iters: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="8192,24000")
    args = ap.parse_args()
    for name, (inter, k) in SHAPES.items():
        w = (torch.randn(2 * inter, k, device="cuda") * k**-0.5).to(torch.bfloat16)
        for m in map(int, args.ms.split(",")):
            x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
            flop = 2 * m * k * 2 * inter
            ref = silu_and_mul(F.linear(x, w))
            rows = [("cuBLAS linear alone", ms_per_call(lambda: F.linear(x, w))),
                    ("cuBLAS + silu_and_mul (before)", ms_per_call(lambda: silu_and_mul(F.linear(x, w))))]
            for cfg in CONFIGS:
                err = (gate_up_silu_mul(x, w, cfg).float() - ref.float()).abs().max().item()
                rows.append((f"fused {tuple(cfg)} (max diff {err:.3g})", ms_per_call(lambda: gate_up_silu_mul(x, w, cfg))))
            print(f"\n{name} gate_up, M = {m}: | variant | ms | TFLOP/s |")
            for label, t in rows:
                print(f"| {label} | {t:.3f} | {flop / t / 1e9:.0f} |")
        del w


if __name__ == "__main__":
    main()
