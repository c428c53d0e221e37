"""Does one warp-specialized launch for the decode MLP stream its weights without a gap?

The tenth session's persistent Triton MLP (bench/probe_mlp.py) lost to two launches: each phase
keeps its own pipeline fill and drain, because the warps that multiply also issue the loads.
Here (Gluon, Hopper) one loader warp per SM issues TMA copies of gate_up's tiles and then, with
no pause, down's tiles into a second ring, while the multiplying warpgroup is still on gate_up
or waiting at the grid barrier (down's weights do not depend on the activations; only its
[M, I] input does). Work is split by bytes:
- gate_up: each program an equal share of rows in units of 8 (64 or 72 rows: a 64-row tile and,
  for about half the programs, one 8-row tile), SiLU * up into h [64, I];
- a grid barrier (h complete);
- down: 12 row blocks of 128 x 11 K chunks (12 or 13 steps of 64) = 132 programs, h read into
  registers, one float32 partial per K chunk (summed here by torch, in the model by the norm).

Usage (GPU, Hopper with 132 SMs): python bench/probe_gluon_mlp.py [--m 48]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from litelang.bench.probes import timed_row
from litelang.kernels.activation import silu_and_mul
from litelang.kernels.linear import LinearConfig, linear_silu_mul

BF16 = torch.bfloat16
NPROG, KCHUNKS, BN_DOWN, BK = 132, 11, 128, 64


@gluon.jit
def _loader(gu_desc, gu8_desc, x_desc, wd_desc, a_wg, a_wu, a_wg8, a_wu8, a_x, a_ready, a_empty,
            b_w, b_ready, b_empty, r0, n_rows, I, n0, ks0, b_steps, A_STEPS: gl.constexpr, PHASE_B: gl.constexpr):
    SA: gl.constexpr = a_wg.type.shape[0]
    SB: gl.constexpr = b_w.type.shape[0]
    MAIN: gl.constexpr = 2 * gu_desc.block_type.nbytes + x_desc.block_type.nbytes
    EXTRA: gl.constexpr = 2 * gu8_desc.block_type.nbytes
    BK: gl.constexpr = gu_desc.block_type.shape[1]
    MR: gl.constexpr = gu_desc.block_type.shape[0]
    extra = n_rows > MR
    for i in range(A_STEPS):
        s = i % SA
        mbarrier.wait(a_empty.index(s), ((i // SA) & 1) ^ 1)
        bar = a_ready.index(s)
        mbarrier.expect(bar, MAIN, pred=n_rows <= MR)
        mbarrier.expect(bar, MAIN + EXTRA, pred=extra)
        tma.async_copy_global_to_shared(gu_desc, [r0, i * BK], bar, a_wg.index(s))
        tma.async_copy_global_to_shared(gu_desc, [I + r0, i * BK], bar, a_wu.index(s))
        tma.async_copy_global_to_shared(x_desc, [0, i * BK], bar, a_x.index(s))
        tma.async_copy_global_to_shared(gu8_desc, [r0 + MR, i * BK], bar, a_wg8.index(s), pred=extra)
        tma.async_copy_global_to_shared(gu8_desc, [I + r0 + MR, i * BK], bar, a_wu8.index(s), pred=extra)
    if PHASE_B:
        for j in range(b_steps):  # down's weights: no wait on the activations
            s = j % SB
            mbarrier.wait(b_empty.index(s), ((j // SB) & 1) ^ 1)
            bar = b_ready.index(s)
            mbarrier.expect(bar, wd_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(wd_desc, [n0, (ks0 + j) * BK], bar, b_w.index(s))


@gluon.jit
def _grid_barrier(bar_ptr, NP: gl.constexpr):
    """Self-resetting: bar_ptr[0] counts arrivals, bar_ptr[1] is the generation."""
    gl.thread_barrier()
    gen = gl.atomic_add(bar_ptr + 1, 0, sem="acquire")
    arrived = gl.atomic_add(bar_ptr, 1, sem="acq_rel")
    if arrived == NP - 1:
        gl.atomic_xchg(bar_ptr, 0, sem="relaxed")
        gl.atomic_add(bar_ptr + 1, 1, sem="release")
    else:
        spins = 0
        while (gl.atomic_add(bar_ptr + 1, 0, sem="acquire") == gen) & (spins < 1 << 16):  # cap: a grid that is not all resident must not hang
            spins += 1
    gl.thread_barrier()


@gluon.jit
def _compute(a_wg, a_wu, a_wg8, a_wu8, a_x, a_ready, a_empty, b_w, b_ready, b_empty,
             h_ptr, part_ptr, bar_ptr, r0, n_rows, I, H, n0, ks0, b_steps, kc,
             A_STEPS: gl.constexpr, BOUND: gl.constexpr, PHASE_B: gl.constexpr, num_warps: gl.constexpr):
    SA: gl.constexpr = a_wg.type.shape[0]
    SB: gl.constexpr = b_w.type.shape[0]
    BM: gl.constexpr = a_x.type.shape[1]
    BND: gl.constexpr = b_w.type.shape[1]
    BK: gl.constexpr = a_x.type.shape[2]
    MR: gl.constexpr = a_wg.type.shape[1]
    l64: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, MR, 16])
    l8: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8, 16])
    acc_g = gl.zeros([BM, MR], gl.float32, l64)
    acc_u = gl.zeros([BM, MR], gl.float32, l64)
    acc_g8 = gl.zeros([BM, 8], gl.float32, l8)
    acc_u8 = gl.zeros([BM, 8], gl.float32, l8)
    for i in range(A_STEPS):
        s = i % SA
        mbarrier.wait(a_ready.index(s), (i // SA) & 1)
        if not BOUND:
            xs = a_x.index(s)
            acc_g = warpgroup_mma(xs, a_wg.index(s).permute((1, 0)), acc_g, is_async=True)
            acc_u = warpgroup_mma(xs, a_wu.index(s).permute((1, 0)), acc_u, is_async=True)
            acc_g8 = warpgroup_mma(xs, a_wg8.index(s).permute((1, 0)), acc_g8, is_async=True)
            acc_u8 = warpgroup_mma(xs, a_wu8.index(s).permute((1, 0)), acc_u8, is_async=True)
            acc_g, acc_u, acc_g8, acc_u8 = warpgroup_mma_wait(num_outstanding=0, deps=(acc_g, acc_u, acc_g8, acc_u8))
        mbarrier.arrive(a_empty.index(s), count=1)
    # SiLU(gate) * up, rounded as kernels/linear.py rounds it
    g = acc_g.to(gl.bfloat16).to(gl.float32)
    act = (g / (1.0 + gl.exp(-g))).to(gl.bfloat16).to(gl.float32) * acc_u.to(gl.bfloat16).to(gl.float32)
    m = gl.arange(0, BM, layout=gl.SliceLayout(1, l64))
    n = r0 + gl.arange(0, MR, layout=gl.SliceLayout(0, l64))
    gl.store(h_ptr + m[:, None] * I + n[None, :], act.to(gl.bfloat16))
    g8 = acc_g8.to(gl.bfloat16).to(gl.float32)
    act8 = (g8 / (1.0 + gl.exp(-g8))).to(gl.bfloat16).to(gl.float32) * acc_u8.to(gl.bfloat16).to(gl.float32)
    m8 = gl.arange(0, BM, layout=gl.SliceLayout(1, l8))
    n8 = r0 + MR + gl.arange(0, 8, layout=gl.SliceLayout(0, l8))
    ok8 = (n8 < r0 + n_rows)[None, :] & (m8 >= 0)[:, None]
    gl.store(h_ptr + m8[:, None] * I + n8[None, :], act8.to(gl.bfloat16), mask=ok8)
    if PHASE_B:
        _grid_barrier(bar_ptr, gl.num_programs(0))
        # down: this program's [BM, BND] block over its K chunk, h from registers
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        lacc: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BND, 16])
        la: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=lacc, k_width=2)
        hr = gl.arange(0, BM, layout=gl.SliceLayout(1, ld))
        hc = gl.arange(0, BK, layout=gl.SliceLayout(0, ld))
        hp = h_ptr + hr[:, None] * I + ks0 * BK + hc[None, :]
        acc = gl.zeros([BM, BND], gl.float32, lacc)
        h_cur = gl.load(hp, cache_modifier=".cg")  # L1 may hold an older h
        for j in range(b_steps):
            s = j % SB
            h_next = gl.load(hp + (j + 1) * BK, mask=((hc >= 0) & (j + 1 < b_steps))[None, :], other=0.0,
                             cache_modifier=".cg")
            mbarrier.wait(b_ready.index(s), (j // SB) & 1)
            if not BOUND:
                acc = warpgroup_mma(gl.convert_layout(h_cur, la), b_w.index(s).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(b_empty.index(s), count=1)
            h_cur = h_next
        pm = gl.arange(0, BM, layout=gl.SliceLayout(1, lacc))
        pn = n0 + gl.arange(0, BND, layout=gl.SliceLayout(0, lacc))
        gl.store(part_ptr + kc * BM * H + pm[:, None] * H + pn[None, :], acc)


@gluon.jit
def _mlp_kernel(gu_desc, gu8_desc, x_desc, wd_desc, h_ptr, part_ptr, bar_ptr, I, H,
                A_STEPS: gl.constexpr, KCH: gl.constexpr, SA: gl.constexpr, SB: gl.constexpr,
                BOUND: gl.constexpr, PHASE_B: gl.constexpr, num_warps: gl.constexpr):
    BK: gl.constexpr = gu_desc.block_type.shape[1]
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    units = I // 8
    u0 = pid * units // nprog
    u1 = (pid + 1) * units // nprog
    r0 = u0 * 8
    n_rows = (u1 - u0) * 8
    kc = pid % KCH
    n0 = (pid // KCH) * wd_desc.block_type.shape[0]
    k_steps = I // BK
    ks0 = kc * k_steps // KCH
    b_steps = (kc + 1) * k_steps // KCH - ks0
    BM: gl.constexpr = x_desc.block_type.shape[0]
    MR: gl.constexpr = gu_desc.block_type.shape[0]
    a_wg = gl.allocate_shared_memory(gu_desc.dtype, [SA, MR, BK], gu_desc.layout)
    a_wu = gl.allocate_shared_memory(gu_desc.dtype, [SA, MR, BK], gu_desc.layout)
    a_wg8 = gl.allocate_shared_memory(gu8_desc.dtype, [SA, 8, BK], gu8_desc.layout)
    a_wu8 = gl.allocate_shared_memory(gu8_desc.dtype, [SA, 8, BK], gu8_desc.layout)
    a_x = gl.allocate_shared_memory(x_desc.dtype, [SA, BM, BK], x_desc.layout)
    b_w = gl.allocate_shared_memory(wd_desc.dtype, [SB, wd_desc.block_type.shape[0], BK], wd_desc.layout)
    a_ready = gl.allocate_shared_memory(gl.int64, [SA, 1], mbarrier.MBarrierLayout())
    a_empty = gl.allocate_shared_memory(gl.int64, [SA, 1], mbarrier.MBarrierLayout())
    b_ready = gl.allocate_shared_memory(gl.int64, [SB, 1], mbarrier.MBarrierLayout())
    b_empty = gl.allocate_shared_memory(gl.int64, [SB, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(SA):
        mbarrier.init(a_ready.index(s), count=1)
        mbarrier.init(a_empty.index(s), count=1)
    for s in gl.static_range(SB):
        mbarrier.init(b_ready.index(s), count=1)
        mbarrier.init(b_empty.index(s), count=1)
    gl.warp_specialize([
        (_compute, (a_wg, a_wu, a_wg8, a_wu8, a_x, a_ready, a_empty, b_w, b_ready, b_empty,
                    h_ptr, part_ptr, bar_ptr, r0, n_rows, I, H, n0, ks0, b_steps, kc, A_STEPS, BOUND, PHASE_B, num_warps)),
        (_loader, (gu_desc, gu8_desc, x_desc, wd_desc, a_wg, a_wu, a_wg8, a_wu8, a_x, a_ready, a_empty,
                   b_w, b_ready, b_empty, r0, n_rows, I, n0, ks0, b_steps, A_STEPS, PHASE_B)),
    ], [1], [40])


class GluonMLP:
    """Descriptors for one (gate_up, down) weight pair and x; call to launch."""

    def __init__(self, wgu: torch.Tensor, wd: torch.Tensor, x: torch.Tensor, sa: int = 4, sb: int = 6,
                 bound: bool = False, nprog: int = NPROG, main_rows: int = 64, bk: int = BK, phase_b: bool = True,
                 maxnreg: int | None = None):
        self.i, self.hdim = wd.shape[1], wd.shape[0]
        self.nprog, self.kch, self.phase_b = nprog, nprog // (self.hdim // BN_DOWN), phase_b
        assert (self.hdim // BN_DOWN) * self.kch == nprog and 8 * (self.i // 8 // nprog) == main_rows
        bm = 64
        self.m = x.shape[0]
        self.x = torch.zeros(bm, self.hdim, device=x.device, dtype=x.dtype)
        self.x[: self.m] = x
        self.h = torch.zeros(bm, self.i, device=x.device, dtype=BF16)
        self.part = torch.zeros(self.kch, bm, self.hdim, device=x.device, dtype=torch.float32)
        self.bar = torch.zeros(2, device=x.device, dtype=torch.int32)

        def desc(t, shape):
            return TensorDescriptor.from_tensor(t, shape, gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16))

        self.gu, self.gu8 = desc(wgu, [main_rows, bk]), desc(wgu, [8, bk])
        self.xd, self.wd = desc(self.x, [bm, bk]), desc(wd, [BN_DOWN, bk])
        self.bk, self.maxnreg = bk, maxnreg
        self.sa, self.sb, self.bound = sa, sb, bound

    def __call__(self) -> torch.Tensor:
        _mlp_kernel[(self.nprog,)](self.gu, self.gu8, self.xd, self.wd, self.h, self.part, self.bar, self.i,
                                   self.hdim, A_STEPS=self.hdim // self.bk, KCH=self.kch, SA=self.sa, SB=self.sb,
                                   BOUND=self.bound, PHASE_B=self.phase_b, num_warps=4,
                                   **({"maxnreg": self.maxnreg} if self.maxnreg else {}))
        return self.part


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=48)
    args = ap.parse_args()
    m, hidden, inter = args.m, 1536, 8960
    assert torch.cuda.get_device_properties(0).multi_processor_count == NPROG
    copies, calls = 4, 24
    g = torch.Generator(device="cuda").manual_seed(0)
    wgus = [(torch.randn(2 * inter, hidden, device="cuda", generator=g) * 0.02).to(BF16) for _ in range(copies)]
    wds = [(torch.randn(hidden, inter, device="cuda", generator=g) * 0.02).to(BF16) for _ in range(copies)]
    x = torch.randn(m, hidden, device="cuda", generator=g).to(BF16)
    h_ref = silu_and_mul(F.linear(x, wgus[0]))
    ref = F.linear(h_ref, wds[0]).float()
    print(f"## 1.5B MLP, M={m}, {NPROG} SMs\n\n| variant | us |\n| --- | --- |")

    atol = 2e-2 * ref.abs().max().item()

    def report(label, fn, check=True):
        us, bad = timed_row(fn, calls, ref if check else None, atol=atol)
        print(f"| {label} | {us:.2f} |{bad}", flush=True)

    served = LinearConfig(64, 64, num_warps=4, num_stages=4, use_dot=True)
    report("served: Triton gate_up + cuBLAS down",
           lambda i: F.linear(linear_silu_mul(x, wgus[i % copies], config=served), wds[i % copies]))
    report("served gate_up alone", lambda i: linear_silu_mul(x, wgus[i % copies], config=served), check=False)
    mlp = GluonMLP(wgus[0], wds[0], x)
    mlp()
    torch.cuda.synchronize()
    h_err = (mlp.h[:m].float() - h_ref.float()).abs().max().item()
    print(f"h max err {h_err:.4g} (h ref max {h_ref.float().abs().max().item():.3g})", flush=True)
    variants = [dict(sa=4, sb=4), dict(sa=4, sb=6, bound=True), dict(sa=4, sb=6, bound=True, phase_b=False),
                dict(sa=2, sb=3, bk=128, bound=True), dict(sa=2, sb=3, bk=128)]
    # two programs per SM (264): only with registers capped can both stay resident for the barrier
    variants += [dict(sa=2, sb=2, nprog=264, main_rows=32, maxnreg=128, bound=True),
                 dict(sa=2, sb=2, nprog=264, main_rows=32, maxnreg=128, bound=True, phase_b=False),
                 dict(sa=2, sb=2, nprog=264, main_rows=32, maxnreg=128)]
    for v in variants:
        bound = v.get("bound", False) or not v.get("phase_b", True)
        label = "Gluon one launch, " + ", ".join(f"{k}={val}" for k, val in v.items()) + (" (a bound)" if bound else "")
        try:
            runs = [GluonMLP(wgus[c], wds[c], x, **v) for c in range(copies)]
            bad = ""
            if not bound:  # checked on the summed partials; timed without the sum (the norm does it)
                for _ in range(3):  # repeated launches: the barrier resets itself
                    err = (runs[0]()[:, :m].sum(0) - ref).abs().max().item()
                    bad = bad or ("" if err <= atol else f" WRONG (max err {err:.3g})")
            us, _ = timed_row(lambda i, runs=runs: runs[i % copies](), calls)
            print(f"| {label} | {us:.2f} |{bad}", flush=True)
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
            print(f"| {label} | failed: {type(e).__name__}: {str(e)[:300]} |", flush=True)


if __name__ == "__main__":
    main()
