"""Does a warp-specialized projection get gate_up at M = 48 nearer its read floor?

The Triton kernels pipeline their loads in the same warps that multiply (cp.async stages, the
compiler's software pipeline); at M = 48 the served gate_up runs 3.4 us above a read-only
kernel over the same bytes (BENCHMARKS.md, tenth session). This probe writes gate_up in Gluon
(Triton's lower-level dialect, Hopper only): one loader warp issues TMA copies of the gate, up
and x tiles into a ring of shared-memory stages, and a warpgroup multiplies (wgmma) and frees
each stage through mbarriers, so loads never wait on the multiplies.

Usage (GPU, Hopper): python bench/probe_gluon_gate_up.py [--m 48] [--inter 8448]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from litelang.bench.probes import timed_row
from litelang.kernels.activation import silu_and_mul
from litelang.kernels.linear import LinearConfig, linear_silu_mul

BF16 = torch.bfloat16


@gluon.jit
def _loader(w_desc, x_desc, wg_bufs, wu_bufs, x_bufs, ready, empty, row0, up_row0, k_steps):
    stages: gl.constexpr = wg_bufs.type.shape[0]
    block_k: gl.constexpr = w_desc.block_type.shape[1]
    for i in range(k_steps):
        s = i % stages
        mbarrier.wait(empty.index(s), ((i // stages) & 1) ^ 1)
        bar = ready.index(s)
        mbarrier.expect(bar, 2 * w_desc.block_type.nbytes + x_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(w_desc, [row0, i * block_k], bar, wg_bufs.index(s))
        tma.async_copy_global_to_shared(w_desc, [up_row0, i * block_k], bar, wu_bufs.index(s))
        tma.async_copy_global_to_shared(x_desc, [0, i * block_k], bar, x_bufs.index(s))


@gluon.jit
def _multiplier(wg_bufs, wu_bufs, x_bufs, ready, empty, out_ptr, row0, M, I, k_steps,
                BN: gl.constexpr, BM: gl.constexpr, SWAP: gl.constexpr, num_warps: gl.constexpr):
    """acc [BN, BM] = w @ x.T (weight rows on wgmma's M, so BN >= 64), or with SWAP
    acc [BM, BN] = x @ w.T (x rows on M, weight rows on N: BN may be 8 to 256)."""
    stages: gl.constexpr = wg_bufs.type.shape[0]
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, BN if SWAP else BM, 16])
    shape: gl.constexpr = (BM, BN) if SWAP else (BN, BM)
    acc_g = gl.zeros(shape, dtype=gl.float32, layout=layout)
    acc_u = gl.zeros(shape, dtype=gl.float32, layout=layout)
    for i in range(k_steps):
        s = i % stages
        mbarrier.wait(ready.index(s), (i // stages) & 1)
        if SWAP:
            acc_g = warpgroup_mma(x_bufs.index(s), wg_bufs.index(s).permute((1, 0)), acc_g, is_async=True)
            acc_u = warpgroup_mma(x_bufs.index(s), wu_bufs.index(s).permute((1, 0)), acc_u, is_async=True)
        else:
            xt = x_bufs.index(s).permute((1, 0))
            acc_g = warpgroup_mma(wg_bufs.index(s), xt, acc_g, is_async=True)
            acc_u = warpgroup_mma(wu_bufs.index(s), xt, acc_u, is_async=True)
        acc_g, acc_u = warpgroup_mma_wait(num_outstanding=0, deps=(acc_g, acc_u))
        mbarrier.arrive(empty.index(s), count=1)
    gate = acc_g.to(gl.bfloat16).to(gl.float32)
    act = (gate / (1.0 + gl.exp(-gate))).to(gl.bfloat16).to(gl.float32) * acc_u.to(gl.bfloat16).to(gl.float32)
    if SWAP:
        m = gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
        n = row0 + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
        gl.store(out_ptr + m[:, None] * I + n[None, :], act.to(gl.bfloat16), mask=(m < M)[:, None])
    else:
        n = row0 + gl.arange(0, BN, layout=gl.SliceLayout(1, layout))
        m = gl.arange(0, BM, layout=gl.SliceLayout(0, layout))
        gl.store(out_ptr + m[None, :] * I + n[:, None], act.to(gl.bfloat16), mask=(m < M)[None, :])


@gluon.jit
def _gate_up_ws_kernel(w_desc, x_desc, out_ptr, M, I, K, STAGES: gl.constexpr, SWAP: gl.constexpr,
                       num_warps: gl.constexpr):
    BN: gl.constexpr = w_desc.block_type.shape[0]
    BK: gl.constexpr = w_desc.block_type.shape[1]
    BM: gl.constexpr = x_desc.block_type.shape[0]
    wg_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BN, BK], w_desc.layout)
    wu_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BN, BK], w_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BM, BK], x_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    row0 = gl.program_id(0) * BN
    k_steps = K // BK
    gl.warp_specialize([
        (_multiplier, (wg_bufs, wu_bufs, x_bufs, ready, empty, out_ptr, row0, M, I, k_steps, BN, BM, SWAP,
                         num_warps)),
        (_loader, (w_desc, x_desc, wg_bufs, wu_bufs, x_bufs, ready, empty, row0, row0 + I, k_steps)),
    ], [1], [40])


class GateUpWS:
    """Descriptors for one weight and x; call to launch."""

    def __init__(self, w: torch.Tensor, x: torch.Tensor, bn: int, bk: int, stages: int, swap: bool = False,
                 maxnreg: int = 128):
        self.i, self.k = w.shape[0] // 2, w.shape[1]
        bm = max(64, triton.next_power_of_2(x.shape[0]))
        self.x = torch.zeros(bm, self.k, device=x.device, dtype=x.dtype)  # TMA boxes of bm rows
        self.x[: x.shape[0]] = x
        w_layout = gl.NVMMASharedLayout.get_default_for([bn, bk], gl.bfloat16)
        x_layout = gl.NVMMASharedLayout.get_default_for([bm, bk], gl.bfloat16)
        self.w_desc = TensorDescriptor.from_tensor(w, [bn, bk], w_layout)
        self.x_desc = TensorDescriptor.from_tensor(self.x, [bm, bk], x_layout)
        self.m, self.bn, self.stages, self.swap, self.maxnreg = x.shape[0], bn, stages, swap, maxnreg

    def __call__(self) -> torch.Tensor:
        out = torch.empty(self.m, self.i, device="cuda", dtype=BF16)
        _gate_up_ws_kernel[(self.i // self.bn,)](self.w_desc, self.x_desc, out, self.m, self.i, self.k,
                                                 STAGES=self.stages, SWAP=self.swap, num_warps=4,
                                                 maxnreg=self.maxnreg)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=48)
    ap.add_argument("--inter", type=int, default=8960, help="gate rows (8448: 132 row blocks of 64, one per SM)")
    args = ap.parse_args()
    inter, hidden = args.inter, 1536
    copies, calls = 6, 24
    g = torch.Generator(device="cuda").manual_seed(0)
    ws = [(torch.randn(2 * inter, hidden, device="cuda", generator=g) * 0.02).to(BF16) for _ in range(copies)]
    x = torch.randn(args.m, hidden, device="cuda", generator=g).to(BF16)
    ref = silu_and_mul(F.linear(x, ws[0])).float()
    print(f"## gate_up [{2 * inter}x{hidden}], M={args.m}\n\n| variant | us |\n| --- | --- |")

    def report(label, fn):
        us, bad = timed_row(fn, calls, ref, atol=2e-2 * ref.abs().max().item())
        print(f"| {label} | {us:.2f} |{bad}", flush=True)

    served = LinearConfig(64, 64, num_warps=4, num_stages=4, use_dot=True)  # the 1.5B config at M = 48
    report("Triton (served config, cp.async pipeline)", lambda i: linear_silu_mul(x, ws[i % copies], config=served))
    for bn, bk, stages, swap, maxnreg in [
            (64, 64, 4, False, 128), (64, 128, 3, False, 128), (64, 64, 8, False, 128), (128, 64, 4, False, 128),
            (64, 64, 4, True, 128), (32, 64, 4, True, 128), (32, 128, 3, True, 128), (32, 64, 6, True, 128),
            (16, 128, 4, True, 128), (16, 64, 6, True, 128), (32, 64, 4, True, 64), (16, 128, 4, True, 64)]:
        label = f"Gluon, warp-specialized, BN {bn} BK {bk}, {stages} stages{', x @ w.T' if swap else ''}, maxnreg {maxnreg}"
        try:
            runs = [GateUpWS(w, x, bn, bk, stages, swap, maxnreg) for w in ws]
            report(label, lambda i, runs=runs: runs[i % copies]())
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
            print(f"| {label} | failed: {type(e).__name__}: {str(e)[:200]} |", flush=True)

if __name__ == "__main__":
    main()
