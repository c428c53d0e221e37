"""Would one persistent kernel for the decode MLP beat gate_up + down as two launches?

The batch-40 step pays ~2.7 us per kernel in ramp-up and tail. This probe times, at the 1.5B
MLP shapes and M = 48, one launch of one program per SM:
1. gate_up with the SiLU * up epilogue, each program an equal range of rows (~68 in a masked
   128-row tile), into an [M, I] buffer;
2. a grid barrier, then down split over K (row blocks x K chunks = the programs), each
   program storing a float32 partial;
3. a second barrier, then every program sums the partials of its slice of [M, H] in chunk
   order (deterministic, and parallel: a last-arriver sum of 11 partials was ~9 us of tail).
It runs against the served pair (Triton gate_up, cuBLAS down). Variants run one phase alone
or drop the barriers (wrong output: bounds), or ask L2 for the down rows before the barrier.

Usage (GPU; the defaults assume 132 SMs): python bench/probe_mlp.py [--m 48]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from litelang.bench.probes import timed_row
from litelang.kernels.activation import silu_and_mul
from litelang.kernels.linear import linear_silu_mul

BF16 = torch.bfloat16


@triton.jit
def _prefetch_l2(ptrs, nbytes):
    return tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n mov.u32 $0, 0;", "=r,l,r",
                                     [ptrs, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _grid_barrier(Barrier, NPROG: tl.constexpr):
    """All programs arrive before any leaves; Barrier[0] counts arrivals, Barrier[1] is a
    generation number, so the barrier resets itself for the next launch (graph replays)."""
    gen = tl.atomic_add(Barrier + 1, 0, sem="acquire")
    tl.debug_barrier()
    arrived = tl.atomic_add(Barrier, 1, sem="acq_rel")
    if arrived == NPROG - 1:
        tl.atomic_xchg(Barrier, 0, sem="relaxed")
        tl.atomic_add(Barrier + 1, 1, sem="release")
    else:
        spins = 0
        while (tl.atomic_add(Barrier + 1, 0, sem="acquire") == gen) & (spins < 1 << 22):  # cap: never hang
            spins += 1
    tl.debug_barrier()


@triton.jit
def _mlp_kernel(X, WGU, WD, Act, Out, Partial, Barrier, M, stride_xm,
                I: tl.constexpr, H: tl.constexpr, NPROG: tl.constexpr, KCHUNKS: tl.constexpr,
                BLOCK_M: tl.constexpr, BN1: tl.constexpr, BK1: tl.constexpr, BN2: tl.constexpr, BK2: tl.constexpr,
                ST1: tl.constexpr, ST2: tl.constexpr, PREFETCH: tl.constexpr, BARRIER: tl.constexpr,
                PHASE1: tl.constexpr = True, PHASE2: tl.constexpr = True, CLAMP: tl.constexpr = False,
                SLICE: tl.constexpr = 1024, KCHUNKS_PAD: tl.constexpr = 16):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    # ---- phase 1: gate_up rows [r0, r1), SiLU(gate) * up into Act [M, I]
    r0 = pid * I // NPROG
    r1 = (pid + 1) * I // NPROG
    offs_n = r0 + tl.arange(0, BN1)
    n_ok = offs_n < r1
    c1 = tl.arange(0, BK1)
    acc = tl.zeros([BN1, BLOCK_M], dtype=tl.float32)
    acc_up = tl.zeros([BN1, BLOCK_M], dtype=tl.float32)
    if PHASE1:
        for k in tl.range(0, H, BK1, num_stages=ST1):
            x = tl.load(X + offs_m[:, None] * stride_xm + k + c1[None, :], mask=m_ok[:, None], other=0.0)
            if CLAMP:  # rows past r1 re-read row r1 - 1 (L2 hits), unmasked as in kernels/linear.py
                wp = WGU + tl.where(n_ok, offs_n, r1 - 1).to(tl.int64)[:, None] * H + k + c1[None, :]
                w = tl.load(wp, eviction_policy="evict_first")
                u = tl.load(wp + I * H, eviction_policy="evict_first")
            else:
                wp = WGU + offs_n.to(tl.int64)[:, None] * H + k + c1[None, :]
                w = tl.load(wp, mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
                u = tl.load(wp + I * H, mask=n_ok[:, None], other=0.0, eviction_policy="evict_first")
            acc += tl.dot(w, tl.trans(x))
            acc_up += tl.dot(u, tl.trans(x))
    gate = tl.trans(acc).to(tl.bfloat16).to(tl.float32)
    act = (gate * tl.sigmoid(gate)).to(tl.bfloat16).to(tl.float32) * tl.trans(acc_up).to(tl.bfloat16).to(tl.float32)
    tl.store(Act + offs_m[:, None] * I + offs_n[None, :], act.to(tl.bfloat16), mask=m_ok[:, None] & n_ok[None, :])
    # ---- phase 2 unit: row block rb of down, K chunk ch (boundaries on BK2 columns)
    rb = pid // KCHUNKS
    ch = pid % KCHUNKS
    kblocks: tl.constexpr = I // BK2
    k_lo = (ch * kblocks // KCHUNKS) * BK2
    k_hi = ((ch + 1) * kblocks // KCHUNKS) * BK2
    n2 = rb * BN2 + tl.arange(0, BN2)
    if PREFETCH:
        _prefetch_l2(WD + n2.to(tl.int64) * I + k_lo, (k_hi - k_lo) * 2 + tl.zeros([BN2], dtype=tl.int32))
    if BARRIER:
        _grid_barrier(Barrier, NPROG)
    if PHASE2:
        c2 = tl.arange(0, BK2)
        acc2 = tl.zeros([BN2, BLOCK_M], dtype=tl.float32)
        for k in tl.range(k_lo, k_hi, BK2, num_stages=ST2):
            # cp.async reads through L2 only, so Act written by other programs is seen after the barrier
            a = tl.load(Act + offs_m[:, None] * I + k + c2[None, :], mask=m_ok[:, None], other=0.0)
            w = tl.load(WD + n2.to(tl.int64)[:, None] * I + k + c2[None, :], eviction_policy="evict_first")
            acc2 += tl.dot(w, tl.trans(a))
        acc2 = tl.trans(acc2)
        tl.store(Partial + ch * M * H + offs_m[:, None] * H + n2[None, :], acc2, mask=m_ok[:, None])
        if BARRIER:
            _grid_barrier(Barrier + 2, NPROG)
        # ---- phase 3: each program sums the K chunks' partials of its slice of [M, H], in order
        per = tl.cdiv(M * H, NPROG)
        offs = pid * per + tl.arange(0, SLICE)
        s_ok = (tl.arange(0, SLICE) < per) & (offs < M * H)
        chunks = tl.arange(0, KCHUNKS_PAD)
        parts = tl.load(Partial + chunks[:, None] * M * H + offs[None, :], mask=(chunks < KCHUNKS)[:, None] & s_ok[None, :],
                        other=0.0, cache_modifier=".cg")
        tl.store(Out + offs, tl.sum(parts, axis=0).to(tl.bfloat16), mask=s_ok)


class PersistentMLP:
    def __init__(self, m: int, inter: int, hidden: int, nprog: int, st1=4, st2=4, bk1=64, bk2=64, bn2=128,
                 prefetch=False, barrier=True, warps=8, phase1=True, phase2=True, clamp=False, bn1=None):
        self.kchunks = max(1, nprog // (hidden // bn2))
        assert not phase2 or self.kchunks * (hidden // bn2) == nprog, "down's row blocks x K chunks must equal the programs"
        self.m, self.inter, self.hidden, self.nprog = m, inter, hidden, nprog
        dev = "cuda"
        self.act = torch.empty(m, inter, device=dev, dtype=BF16)
        self.partial = torch.empty(self.kchunks, m, hidden, device=dev, dtype=torch.float32)
        self.barrier = torch.zeros(4, device=dev, dtype=torch.int32)
        bn1 = bn1 or triton.next_power_of_2(-(-inter // nprog))
        self.meta = dict(I=inter, H=hidden, NPROG=nprog, KCHUNKS=self.kchunks, BLOCK_M=max(16, triton.next_power_of_2(m)),
                         BN1=bn1, BK1=bk1, BN2=bn2, BK2=bk2, ST1=st1, ST2=st2, PREFETCH=prefetch, BARRIER=barrier,
                         PHASE1=phase1, PHASE2=phase2, CLAMP=clamp, SLICE=triton.next_power_of_2(-(-m * hidden // nprog)),
                         KCHUNKS_PAD=triton.next_power_of_2(self.kchunks), num_warps=warps)

    def __call__(self, x, wgu, wd):
        out = torch.empty(x.shape[0], self.hidden, device=x.device, dtype=BF16)
        _mlp_kernel[(self.nprog,)](x, wgu, wd, self.act, out, self.partial, self.barrier, x.shape[0],
                                   x.stride(0), **self.meta)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=48)
    args = ap.parse_args()
    m, hidden, inter = args.m, 1536, 8960
    nprog = torch.cuda.get_device_properties(0).multi_processor_count
    copies, calls = 4, 24
    g = torch.Generator(device="cuda").manual_seed(0)
    wgus = [(torch.randn(2 * inter, hidden, device="cuda", generator=g) * 0.02).to(BF16) for _ in range(copies)]
    wds = [(torch.randn(hidden, inter, device="cuda", generator=g) * 0.02).to(BF16) for _ in range(copies)]
    x = torch.randn(m, hidden, device="cuda", generator=g).to(BF16)
    ref = F.linear(silu_and_mul(F.linear(x, wgus[0])), wds[0]).float()
    mb = (wgus[0].numel() + wds[0].numel()) * 2 / 1e6
    print(f"## 1.5B MLP, M={m}, {nprog} SMs, {mb:.1f} MB of weights\n\n| variant | us |\n| --- | --- |")

    def report(label, fn, check=True):
        us, bad = timed_row(fn, calls, ref if check else None, atol=2e-2 * ref.abs().max().item())
        print(f"| {label} | {us:.2f} |{bad}", flush=True)

    report("served: Triton gate_up + cuBLAS down", lambda i: F.linear(linear_silu_mul(x, wgus[i % copies]), wds[i % copies]))
    report("served gate_up alone", lambda i: linear_silu_mul(x, wgus[i % copies]), check=False)
    report("cuBLAS down alone", lambda i: F.linear(x.new_empty(m, inter), wds[i % copies]), check=False)
    one = dict(phase2=False, barrier=False)  # gate_up alone
    two = dict(phase1=False, barrier=False)  # down and the sum alone
    variants = [dict(), dict(prefetch=True), dict(barrier=False), one, dict(one, clamp=True),
                dict(one, nprog=140, bn1=64, warps=4), two, dict(two, nprog=264, bn2=64, warps=4),
                dict(two, nprog=120, bn2=64, warps=4, st2=6), dict(nprog=120, bn2=64, st2=6, bn1=128)]
    for v in variants:
        label = "persistent " + (", ".join(f"{k}={val}" for k, val in v.items()) or "default (st 4/4, BK 64)")
        exact = v.get("barrier", True) and v.get("phase1", True) and v.get("phase2", True)
        try:
            mlp = PersistentMLP(m, inter, hidden, **{"nprog": nprog, **v})
            report(label + ("" if exact else " (wrong output: a bound)"),
                   lambda i, mlp=mlp: mlp(x, wgus[i % copies], wds[i % copies]), check=exact)
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
            print(f"| {label} | failed: {type(e).__name__}: {str(e)[:120]} |", flush=True)

if __name__ == "__main__":
    main()
