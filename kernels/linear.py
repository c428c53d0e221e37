"""Linear layers at decode batch sizes: x [M, K] @ w[N, K].T for small M.

At M <= 64 a linear is bound by reading the weight once from HBM, and cuBLAS leaves bandwidth
unused there (Qwen2-1.5B decode at M = 1: 1.1-2.6 TB/s of 3.35; gate_up at M = 48 with the
separate SiLU * mul: 2.0 TB/s). These kernels stream the weight in row blocks with enough
programs to keep every SM's loads in flight, and fuse what follows: the bias, for the MLP
SiLU(gate) * up (no [M, 2I] intermediate), and for q||k||v RoPE plus the KV store
(linear_rope_store). Where cuBLAS is as fast, CONFIGS routes to it.
Configs per shape come from kernels/tuned_configs.json, measured with bench/tune_linear.py (no
autotuning at run time: it would benchmark during CUDA-graph capture).

Split-K (for narrow weights such as o and down) is deterministic: every split writes a float32
partial, and the last split of a row block to finish (an integer counter) sums the partials in
split order and writes the output, so no second launch and no float atomics.

RMSNorm across the projections (kernels/rmsnorm.py DeferredNorm): linear_residual adds the
residual in its epilogue, adds each row's sum of squares into an integer accumulator and writes
the sum times the next norm's weight as well; the projection given that and `norm` scales its
sums by 1/rms in its epilogue. No program recomputes the norm or applies its weight: with
thousands of programs per projection at M = 1, each re-reading all of x (or the norm weight)
costs more than the launch it saves.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

from litelang.kernels import tuned_configs
from litelang.kernels._triton import INTERPRET, LATE_RELEASE, LaunchCounters, pdl_launch, pdl_release, pdl_start, tl, triton
from litelang.kernels.activation import silu_and_mul, silu_and_mul_ref
from litelang.kernels.rmsnorm import SUMSQ_ONE, DeferredNorm, deferred_norm_ref, sumsq_ref
from litelang.kernels.rope_store import apply_rope_and_store_kv, apply_rope_and_store_kv_ref


def linear_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
               norm: DeferredNorm | None = None) -> torch.Tensor:
    """x [M, K], w [N, K] (nn.Linear layout), bias [N] -> [M, N]. With norm, x is the residual
    stream times the norm weight: the projection of deferred_norm_ref(x, norm)."""
    if norm is not None:
        x = deferred_norm_ref(x, norm)
    return F.linear(x, w, bias)


def _k_splits(x: torch.Tensor, w: torch.Tensor, splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of x [M, K] and w.T as `splits` batches over consecutive K ranges: [splits, M, K / splits]
    and [splits, K / splits, N], no copies (K a multiple of splits, rows contiguous)."""
    m, k = x.shape
    assert k % splits == 0 and x.stride(-1) == 1 and w.is_contiguous()
    xs = x.view(m, splits, k // splits).transpose(0, 1)
    ws = w.view(w.shape[0], splits, k // splits).transpose(0, 1)
    return xs, ws.transpose(1, 2)


def linear_partials_ref(x: torch.Tensor, w: torch.Tensor, splits: int) -> torch.Tensor:
    """x @ w.T as float32 split-K partials [splits, M, N]: split s covers K columns
    [s * K / splits, (s + 1) * K / splits) (K a multiple of splits)."""
    xs, wts = _k_splits(x, w, splits)
    return torch.bmm(xs.float(), wts.float())


def linear_silu_mul_ref(x: torch.Tensor, w_gate_up: torch.Tensor, norm: DeferredNorm | None = None) -> torch.Tensor:
    """x [M, K], w_gate_up [2I, K] (gate rows, then up rows) -> silu(x @ gate.T) * (x @ up.T), [M, I].
    norm: as in linear_ref."""
    return silu_and_mul_ref(linear_ref(x, w_gate_up, norm=norm))


def linear_residual_ref(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor, sumsq: torch.Tensor,
                        norm_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, h * norm_weight) with h = x @ w.T + residual [M, N] (the projection rounded, then the
    sum, as in torch); adds each row's sum of squares of h (sumsq_ref units) into sumsq [M]
    int64, in place. The second result is the next projection's input under a DeferredNorm."""
    h = linear_ref(x, w) + residual
    sumsq += sumsq_ref(h)
    return h, norm_weight * h


def linear_rope_store_ref(
    x: torch.Tensor, w_qkv: torch.Tensor, bias: torch.Tensor | None, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, q_heads: int, kv_heads: int,
    norm: DeferredNorm | None = None,
) -> torch.Tensor:
    """The q||k||v projection, then apply_rope_and_store_kv_ref on its q, k, v views -> qkv
    [M, (q_heads + 2 kv_heads) * head_dim], q rotated (k, v: see linear_rope_store). norm: as
    in linear_ref."""
    qkv = linear_ref(x, w_qkv, bias, norm)
    q, k, v = split_qkv(qkv, q_heads, kv_heads, k_pool.shape[-1])
    apply_rope_and_store_kv_ref(q, k, v, positions, cos_sin, k_pool, v_pool, slots)
    return qkv


def split_qkv(qkv: torch.Tensor, q_heads: int, kv_heads: int, head_dim: int):
    """q [M, q_heads, head_dim], k and v [M, kv_heads, head_dim]: strided views of qkv."""
    n, q_size, kv_size = qkv.shape[0], q_heads * head_dim, kv_heads * head_dim
    return (qkv[:, :q_size].view(n, q_heads, head_dim), qkv[:, q_size : q_size + kv_size].view(n, kv_heads, head_dim),
            qkv[:, q_size + kv_size :].view(n, kv_heads, head_dim))


# --- Triton ----------------------------------------------------------------------------------


@triton.jit
def _load_w(W, rows, cols, K, EVEN_K: tl.constexpr):
    """Weight tile W[rows, cols] (rows and cols broadcast against each other); streamed once,
    so evicted first from L2."""
    ptrs = W + rows.to(tl.int64) * K + cols
    if EVEN_K:
        return tl.load(ptrs, eviction_policy="evict_first")
    return tl.load(ptrs, mask=cols < K, other=0.0, eviction_policy="evict_first")


@triton.jit
def _load_w_until(W, rows, cols, K, k_end):
    """_load_w of the columns before k_end (a split's end; zeros past it)."""
    return tl.load(W + rows.to(tl.int64) * K + cols, mask=cols < k_end, other=0.0, eviction_policy="evict_first")


@triton.jit
def _load_cols(ptrs, cols, K, EVEN_K: tl.constexpr):
    """An activation tile; columns past K read as zero."""
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=cols < K, other=0.0)


@triton.jit
def _mma(w, x, DOT_F32: tl.constexpr):
    """w [BLOCK_N, BLOCK_K] @ x[BLOCK_M, BLOCK_K].T, float32 accumulate. DOT_F32: float32 inputs
    (exact, not tf32) and the CPU interpreter (which cannot multiply bfloat16 tiles)."""
    if DOT_F32:
        return tl.dot(w.to(tl.float32), tl.trans(x.to(tl.float32)), input_precision="ieee")
    return tl.dot(w, tl.trans(x))


@triton.jit(do_not_specialize=["M"])  # one compile for every batch size
def _linear_kernel(
    X, W, Bias, Out, Partial, Counters, Positions, CosSin, KPool, VPool, Slots, SumSq, Residual, NormW, Weighted,
    M, N, K, stride_xm, stride_om, up_row, k_per_split,
    stride_cs, stride_pk, stride_ph, stride_pvk, stride_pvh, q_size, kv_size, stride_rm, eps,
    HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, SPLITS: tl.constexpr, EVEN_K: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, VEC: tl.constexpr, PREFETCH: tl.constexpr, ROPE: tl.constexpr, HALF: tl.constexpr,
    NORM: tl.constexpr, ADD_RESIDUAL: tl.constexpr, SUMSQ_UNIT: tl.constexpr, LATE_RELEASE: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (row block, split): out[:, rows] over K columns [k_per_split * split, ...). With
    SILU_MUL the rows are gate rows and rows + up_row their up rows. ROPE: the q||k||v
    projection; a program's rows are pairs (d, d + HALF) of heads, interleaved, so its epilogue
    can rotate them (_rope_epilogue). NORM: x is the residual stream times the norm weight; the
    sums are scaled by 1/rms from SumSq (DeferredNorm). ADD_RESIDUAL: Out = the projection +
    Residual, whose rows' sums of squares are added into SumSq, and Weighted = Out * NormW
    (linear_residual).

    Two inner products. USE_DOT: tensor cores, x padded to BLOCK_M >= 16 rows. Else float32
    FMAs on [BLOCK_M, BLOCK_N, BLOCK_K // VEC, VEC] tiles, VEC columns (16 bytes) per thread:
    each iteration sums only within a thread, into a [BLOCK_M, BLOCK_N, BLOCK_K // VEC]
    accumulator reduced across threads once after the loop. x is loaded through pointers
    broadcast over the rows, so x and w tiles get the same register layout (no shuffles through
    shared memory) and a thread loads each x vector once for all its rows.

    PREFETCH (FMA path): each iteration loads the next weight tile while it multiplies this one,
    and the first tile is loaded before the PDL wait. Weights are never written by an earlier
    kernel, so that read is safe, and a launch-latency-bound projection (1.5B qkv, o at M = 1)
    streams its first tile while the kernel before it finishes. (The tensor-core path keeps its
    first tile inside the cp.async pipeline: loading it early there is slower.)"""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    if ROPE:
        pair = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N) // 2
        offs_n = (pair // HALF) * (2 * HALF) + pair % HALF + (tl.arange(0, BLOCK_N) % 2) * HALF
        n_valid = pair < N // 2
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
    # tail rows re-read the last row: weight loads stay unmasked, only the store is masked
    rows = tl.where(n_valid, offs_n, N - 1)
    offs_m = tl.arange(0, BLOCK_M)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    if USE_DOT:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K // VEC], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K // VEC], dtype=tl.float32)
        vec_cols = (tl.arange(0, BLOCK_K // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :])[None, None, :, :]
        rows4 = rows[None, :, None, None]
        # unmasked loads (rows past M re-read row M - 1, their sums are never stored), so the
        # compiler sees identical addresses and loads each x vector once per thread
        x_m = tl.minimum(offs_m, M - 1).to(tl.int64)[:, None, None, None]
        x_rows4 = X + x_m * stride_xm + 0 * rows4
        if PREFETCH:
            w_next = _load_w_until(W, rows4, k_start + vec_cols, K, k_end)
            if SILU_MUL:
                u_next = _load_w_until(W, rows4 + up_row, k_start + vec_cols, K, k_end)
    if ROPE:  # written before the step's first kernel: as safe to read early as the weights
        rope_in = _rope_inputs(Positions, Slots, CosSin, offs_m, pid_n, M, stride_cs, BLOCK_N, HALF)
    norm_w = tl.zeros([BLOCK_N], dtype=tl.float32)
    if ADD_RESIDUAL:  # the next norm's weight (a weight: read before the wait)
        norm_w = tl.load(NormW + offs_n, mask=n_valid, other=0.0).to(tl.float32)
    # before reading anything an earlier kernel writes (kernels/_triton.py); the tensor-core
    # path's programs hold ~100 KB of shared memory: the next kernel launches after its loop
    pdl_start(PDL, RELEASE=not (USE_DOT and LATE_RELEASE))
    out_mask = (offs_m < M)[:, None] & n_valid[None, :]
    # loaded before the loop, so their latency hides behind it
    inv_rms = tl.zeros([BLOCK_M], dtype=tl.float32)
    if NORM:
        sumsq = tl.load(SumSq + offs_m, mask=offs_m < M, other=0).to(tl.float32)
        # padding rows get 0, not 1/sqrt(eps)
        inv_rms = tl.where(offs_m < M, tl.rsqrt(sumsq / SUMSQ_UNIT / K + eps), 0.0)
    residual = inv_rms
    if ADD_RESIDUAL and SPLITS == 1:
        residual = _load_residual(Residual, offs_m, offs_n, out_mask, stride_rm)
    for k in range(k_start, k_end, BLOCK_K):
        if USE_DOT:
            offs_k = k + tl.arange(0, BLOCK_K)
            x_mask = (offs_m < M)[:, None]
            if not EVEN_K:
                x_mask = x_mask & (offs_k < K)[None, :]
            x_off = offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
            x = tl.load(X + x_off, mask=x_mask, other=0.0)
            acc += _mma(_load_w(W, rows[:, None], offs_k[None, :], K, EVEN_K), x, DOT_F32)
            if SILU_MUL:
                acc_up += _mma(_load_w(W, (rows + up_row)[:, None], offs_k[None, :], K, EVEN_K), x, DOT_F32)
        else:
            cols = k + vec_cols
            if PREFETCH:
                w = w_next
                w_next = _load_w_until(W, rows4, cols + BLOCK_K, K, k_end)
                if SILU_MUL:
                    u = u_next
                    u_next = _load_w_until(W, rows4 + up_row, cols + BLOCK_K, K, k_end)
            else:
                w = _load_w(W, rows4, cols, K, EVEN_K)
                if SILU_MUL:
                    u = _load_w(W, rows4 + up_row, cols, K, EVEN_K)
            x = _load_cols(x_rows4 + cols, cols, K, EVEN_K).to(tl.float32)
            acc += tl.sum(w.to(tl.float32) * x, axis=3)
            if SILU_MUL:
                acc_up += tl.sum(u.to(tl.float32) * x, axis=3)
    if USE_DOT:
        if LATE_RELEASE:
            pdl_release(PDL)
        acc = tl.trans(acc)
        acc_up = tl.trans(acc_up)
    else:
        acc = tl.sum(acc, axis=2)
        acc_up = tl.sum(acc_up, axis=2)

    mn = offs_m[:, None] * N + offs_n[None, :]
    if SPLITS > 1:
        # partials [splits, 2 if SILU_MUL else 1, M, N]; the last split to arrive reduces
        parts = 2 if SILU_MUL else 1
        tl.store(Partial + (pid_k * parts) * M * N + mn, acc, mask=out_mask)
        if SILU_MUL:
            tl.store(Partial + (pid_k * parts + 1) * M * N + mn, acc_up, mask=out_mask)
        tl.debug_barrier()  # every thread's partial is written before the counter's release
        arrived = tl.atomic_add(Counters + pid_n, 1, sem="acq_rel")
        if arrived == SPLITS - 1:
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            # fixed order: the sum is the same whoever arrives last. Unrolled, so every partial's
            # load is in flight at once: this tail is serial latency after the main loop.
            for s in tl.static_range(SPLITS):
                acc += tl.load(Partial + (s * parts) * M * N + mn, mask=out_mask, other=0.0, cache_modifier=".cg")
                if SILU_MUL:
                    acc_up += tl.load(Partial + (s * parts + 1) * M * N + mn, mask=out_mask, other=0.0,
                                      cache_modifier=".cg")
            split_residual = inv_rms
            if ADD_RESIDUAL:
                split_residual = _load_residual(Residual, offs_m, offs_n, out_mask, stride_rm)
            tl.atomic_xchg(Counters + pid_n, 0)  # ready for the next launch
            acc = _epilogue(acc, acc_up, inv_rms, split_residual, norm_w, Bias, Out, SumSq, Weighted, offs_m, offs_n,
                            out_mask, M, N, stride_om, HAS_BIAS, SILU_MUL, ROPE, NORM, ADD_RESIDUAL, SUMSQ_UNIT)
            if ROPE:
                _rope_epilogue(acc, rope_in, Out, KPool, VPool, offs_m, pid_n, M, N, stride_om, stride_pk, stride_ph,
                               stride_pvk, stride_pvh, q_size, kv_size, BLOCK_M, BLOCK_N, HALF)
    else:
        acc = _epilogue(acc, acc_up, inv_rms, residual, norm_w, Bias, Out, SumSq, Weighted, offs_m, offs_n, out_mask,
                        M, N, stride_om, HAS_BIAS, SILU_MUL, ROPE, NORM, ADD_RESIDUAL, SUMSQ_UNIT)
        if ROPE:
            _rope_epilogue(acc, rope_in, Out, KPool, VPool, offs_m, pid_n, M, N, stride_om, stride_pk, stride_ph,
                           stride_pvk, stride_pvh, q_size, kv_size, BLOCK_M, BLOCK_N, HALF)


@triton.jit
def _load_residual(Residual, offs_m, offs_n, out_mask, stride_rm):
    return tl.load(Residual + offs_m.to(tl.int64)[:, None] * stride_rm + offs_n[None, :], mask=out_mask, other=0.0)


@triton.jit
def _epilogue(acc, acc_up, inv_rms, residual, norm_w, Bias, Out, SumSq, Weighted, offs_m, offs_n, out_mask, M, N,
              stride_om, HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, ROPE: tl.constexpr, NORM: tl.constexpr,
              ADD_RESIDUAL: tl.constexpr, SUMSQ_UNIT: tl.constexpr):
    """1/rms, bias, SiLU * up, the residual, its sums of squares and its product with the next
    norm's weight, store; with ROPE return the biased float32 result unstored instead."""
    dtype = Out.dtype.element_ty
    if NORM:
        acc = acc * inv_rms[:, None]
        acc_up = acc_up * inv_rms[:, None]
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if SILU_MUL:
        # round gate, up and silu(gate) to the output dtype, as linear then silu_and_mul do
        gate = acc.to(dtype).to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
        acc = act * acc_up.to(dtype).to(tl.float32)
    if ADD_RESIDUAL:
        # round the projection, then the sum, as `linear(x, w) + residual` does in torch
        acc = (acc.to(dtype).to(tl.float32) + residual.to(tl.float32)).to(dtype).to(tl.float32)
        part = tl.sum(tl.where(out_mask, acc * acc, 0.0), axis=1)
        tl.atomic_add(SumSq + offs_m, (part * SUMSQ_UNIT + 0.5).to(tl.int64), mask=offs_m < M, sem="relaxed")
        weighted = (acc * norm_w[None, :]).to(dtype)
        tl.store(Weighted + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :], weighted, mask=out_mask)
    if not ROPE:
        tl.store(Out + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :], acc.to(dtype), mask=out_mask)
    return acc


@triton.jit
def _rope_inputs(Positions, Slots, CosSin, offs_m, pid_n, M, stride_cs, BLOCK_N: tl.constexpr, HALF: tl.constexpr):
    """(slot [BLOCK_M, 1], cos, sin [BLOCK_M, BLOCK_N // 2]) of this program's tokens and pairs."""
    d = (pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)) % HALF
    m_ok = offs_m < M
    pos = tl.load(Positions + offs_m, mask=m_ok, other=0).to(tl.int64)[:, None]
    slot = tl.load(Slots + offs_m, mask=m_ok, other=0).to(tl.int64)[:, None]
    cos = tl.load(CosSin + pos * stride_cs + d[None, :])
    sin = tl.load(CosSin + pos * stride_cs + HALF + d[None, :])
    return slot, cos, sin


@triton.jit
def _rope_epilogue(acc, rope_in, Out, KPool, VPool, offs_m, pid_n, M, N, stride_om, stride_pk, stride_ph, stride_pvk,
                   stride_pvh, q_size, kv_size, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HALF: tl.constexpr):
    """apply_rope_and_store_kv on this program's columns of q||k||v, with the reference's
    roundings (the projection to the model dtype, then rotate in float32): rotated q into Out,
    rotated k and plain v into their pool slots. acc's columns are (d, d + HALF) pairs."""
    dtype = Out.dtype.element_ty
    slot, cos, sin = rope_in
    lo, hi = tl.split(tl.reshape(acc.to(dtype).to(tl.float32), [BLOCK_M, BLOCK_N // 2, 2]))
    pair = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    d = pair % HALF
    n_lo = (pair // HALF) * (2 * HALF) + d  # column of the pair's first element
    m_ok = offs_m < M
    is_v = (n_lo >= q_size + kv_size)[None, :]
    out_lo = tl.where(is_v, lo, lo * cos - hi * sin).to(dtype)
    out_hi = tl.where(is_v, hi, hi * cos + lo * sin).to(dtype)
    valid = m_ok[:, None] & (pair < N // 2)[None, :]
    is_q = (n_lo < q_size)[None, :]
    q_ptr = Out + offs_m.to(tl.int64)[:, None] * stride_om + n_lo[None, :]
    tl.store(q_ptr, out_lo, mask=valid & is_q)
    tl.store(q_ptr + HALF, out_hi, mask=valid & is_q)
    k_head = ((n_lo - q_size) // (2 * HALF))[None, :]
    is_k = ~is_q & ~is_v
    k_ptr = KPool + slot * stride_pk + k_head * stride_ph + d[None, :]
    tl.store(k_ptr, out_lo, mask=valid & is_k)
    tl.store(k_ptr + HALF, out_hi, mask=valid & is_k)
    v_head = ((n_lo - q_size - kv_size) // (2 * HALF))[None, :]
    v_ptr = VPool + slot * stride_pvk + v_head * stride_pvh + d[None, :]
    tl.store(v_ptr, out_lo, mask=valid & is_v)
    tl.store(v_ptr + HALF, out_hi, mask=valid & is_v)


# Above this M, cuBLAS (F.linear) always. Up to it, pick_config: the Triton config measured best
# for the shape and M bucket, or None (cuBLAS) where cuBLAS measured faster.
M_MAX = 64
# Untuned shapes above M = 16 go to cuBLAS when the weight has fewer elements than this: among
# the tuned shapes, cuBLAS was as fast for every weight under ~17M elements, slower over ~27M.
CUBLAS_BELOW = 20 * 2**20
class LinearConfig(NamedTuple):
    block_n: int  # weight rows per program (gate rows with SILU_MUL: it reads twice that)
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 1
    use_dot: bool = False  # tensor cores (block_n >= 16), else FMAs


def _fma(block_n: int, block_k: int, warps: int = 4, split: int = 1) -> LinearConfig:
    return LinearConfig(block_n, block_k, split, warps)


def _dot(block_n: int, block_k: int, stages: int, split: int = 1, warps: int = 4) -> LinearConfig:
    return LinearConfig(block_n, block_k, split, warps, stages, use_dot=True)


def _configs_from(rows: list[dict]) -> dict[tuple[int, int, bool, int], LinearConfig | None]:
    return {(r["n"], r["k"], r["silu_mul"], r["m"]): None if r["config"] is None else LinearConfig(**r["config"])
            for r in rows}


# The fastest config per (N, K, silu_mul, M bucket) at Qwen2 shapes (TP 1), measured with
# bench/tune_linear.py on an H100 (tuned_configs.json). N is the output width (the intermediate
# size for gate_up); M buckets are powers of two up to M_MAX (decode batches of 24 and 48 run the
# 32 and 64 configs). None: cuBLAS was faster. Other shapes: _heuristic_config.
CONFIGS: dict[tuple[int, int, bool, int], LinearConfig | None] = _configs_from(tuned_configs.table("linear")["rows"])


def _m_bucket(m: int) -> int:
    return min(M_MAX, triton.next_power_of_2(m))


def _heuristic_config(m: int, n: int, k: int, silu_mul: bool) -> LinearConfig | None:
    """For shapes not in CONFIGS, the configs that were within ~10% of the best at every tuned
    shape: M = 1, one row per program, 2048 columns per step (split K only if rows are too few
    for 2 programs per SM); M > 1, tensor cores on 64-row blocks, split K while there are fewer
    programs than SMs and each split keeps >= 1536 columns. M > 16: cuBLAS for weights under
    CUBLAS_BELOW elements, where it was as fast or faster."""
    if m > 16 and n * k * (2 if silu_mul else 1) < CUBLAS_BELOW:
        return None
    if m == 1:
        cfg, min_k = _fma(1, min(2048, triton.next_power_of_2(k))), 2 * 2048
        target = 264
    else:
        cfg, min_k = _dot(64, 128, stages=4), 2 * 1536
        target = 132
    split = 1
    while triton.cdiv(n, cfg.block_n) * split < target and k // (split + 1) >= min_k // 2 and split < 16:
        split += 1
    return cfg._replace(split_k=split)


def pick_config(m: int, n: int, k: int, silu_mul: bool = False) -> LinearConfig | None:
    """The config for x [m, k] @ w[n, k].T (n gate rows with silu_mul); None: use cuBLAS."""
    if m > M_MAX:
        return None
    if INTERPRET:  # small blocks: CPU tests at small shapes still cross several blocks and splits
        return LinearConfig(block_n=4, block_k=16, split_k=2 if k > 32 else 1)
    key = (n, k, silu_mul, _m_bucket(m))
    return CONFIGS[key] if key in CONFIGS else _heuristic_config(m, n, k, silu_mul)


# the FMA path's weight prefetch (LITELANG_LINEAR_PREFETCH=0: off, for comparisons)
PREFETCH = os.environ.get("LITELANG_LINEAR_PREFETCH", "1") == "1"

# per-row-block split-K counters
_COUNTERS = LaunchCounters("linear")


class _Rope(NamedTuple):
    """linear_rope_store's arguments beyond the projection's."""
    positions: torch.Tensor
    cos_sin: torch.Tensor
    k_pool: torch.Tensor
    v_pool: torch.Tensor
    slots: torch.Tensor
    q_size: int
    kv_size: int


def _launch(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, n: int, silu_mul: bool,
            cfg: LinearConfig, rope: _Rope | None = None, norm: DeferredNorm | None = None,
            residual: torch.Tensor | None = None, sumsq: torch.Tensor | None = None,
            norm_weight: torch.Tensor | None = None, weighted: torch.Tensor | None = None) -> torch.Tensor:
    m, k = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    w = w.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    # float32 dots are exact (ieee), never tf32
    block_m = max(16, triton.next_power_of_2(m)) if cfg.use_dot else triton.next_power_of_2(m)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    grid = (triton.cdiv(n, cfg.block_n), cfg.split_k)  # with rope: block_n even, so n / 2 pairs as well
    if cfg.split_k > 1:
        partial = torch.empty((cfg.split_k, 2 if silu_mul else 1, m, n), dtype=torch.float32, device=x.device)
        counters = _COUNTERS.get(x.device, grid[0])
    else:
        partial = counters = out  # unused
    r = rope or _Rope(out, out, out.view(1, 1, -1), out.view(1, 1, -1), out, 0, 0)  # unused without rope
    if norm is not None:
        sumsq = norm.sumsq
    if sumsq is not None:
        assert sumsq.dtype == torch.int64 and sumsq.is_contiguous() and sumsq.shape == (m,)
    if residual is not None:  # linear_residual
        assert sumsq is not None and norm_weight is not None and weighted is not None
        assert residual.shape == weighted.shape == out.shape and residual.stride(-1) == 1
        assert weighted.stride(0) == out.stride(0) and norm_weight.is_contiguous()
    _linear_kernel[grid](
        x, w, bias if bias is not None else out, out, partial, counters,
        r.positions, r.cos_sin, r.k_pool, r.v_pool, r.slots,
        sumsq if sumsq is not None else out, residual if residual is not None else out,
        norm_weight if norm_weight is not None else out, weighted if weighted is not None else out,
        m, n, k, x.stride(0), out.stride(0), n, k_per_split,
        r.cos_sin.stride(0), r.k_pool.stride(0), r.k_pool.stride(1), r.v_pool.stride(0), r.v_pool.stride(1),
        r.q_size, r.kv_size, residual.stride(0) if residual is not None else 0, norm.eps if norm is not None else 0.0,
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul, SPLITS=cfg.split_k, EVEN_K=k % cfg.block_k == 0,
        USE_DOT=cfg.use_dot, DOT_F32=INTERPRET or x.dtype == torch.float32, BLOCK_M=block_m,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, VEC=16 // x.element_size(), PREFETCH=PREFETCH,
        ROPE=rope is not None, HALF=rope.k_pool.shape[-1] // 2 if rope else 1, NORM=norm is not None,
        ADD_RESIDUAL=residual is not None, SUMSQ_UNIT=SUMSQ_ONE, LATE_RELEASE=LATE_RELEASE,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch(),
    )
    return out


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
           config: LinearConfig | None = None, norm: DeferredNorm | None = None) -> torch.Tensor:
    """Triton version of linear_ref where pick_config has a config (M <= M_MAX), else cuBLAS
    (after deferred_norm_ref with a norm). x may be a row-strided view; no host sync, CUDA-graph
    capturable. config overrides pick_config (tests, tuning)."""
    cfg = config or pick_config(x.shape[0], w.shape[0], w.shape[1])
    if cfg is None:
        return linear_ref(x, w, bias, norm)
    return _launch(x, w, bias, w.shape[0], False, cfg, norm=norm)


def linear_silu_mul(x: torch.Tensor, w_gate_up: torch.Tensor, config: LinearConfig | None = None,
                    norm: DeferredNorm | None = None) -> torch.Tensor:
    """Triton version of linear_silu_mul_ref: gate and up rows in the same program, so the
    [M, 2I] intermediate is never written."""
    n = w_gate_up.shape[0] // 2
    cfg = config or pick_config(x.shape[0], n, w_gate_up.shape[1], True)
    if cfg is None:
        return silu_and_mul(linear_ref(x, w_gate_up, norm=norm))
    return _launch(x, w_gate_up, None, n, True, cfg, norm=norm)


# Split count for the cuBLAS projections whose output only feeds the add + RMSNorm kernel (o and
# down) at 16 < M <= M_MAX on a residual stream at most PARTIALS_MAX_N wide: written as float32
# partials by one strided-batched GEMM, and summed by the norm kernel (rmsnorm.rms_norm_sum), so
# the GEMM needs no split-K reduce of its own. Faster in the 1.5B's decode step (hidden 1,536);
# at the 7B's width (3,584) every split count was slower.
PARTIAL_SPLITS = 2
PARTIALS_MAX_N = 2048


def partial_splits(m: int, w: torch.Tensor) -> int:
    """How many float32 split-K partials x [m, K] @ w.T is worth writing (0: a plain projection)."""
    n, k = w.shape
    if not 16 < m <= M_MAX or n > PARTIALS_MAX_N or k % PARTIAL_SPLITS or pick_config(m, n, k) is not None:
        return 0
    return PARTIAL_SPLITS


def linear_partials(x: torch.Tensor, w: torch.Tensor, splits: int | None = None) -> torch.Tensor | None:
    """CUDA version of linear_partials_ref: one strided-batched cuBLAS GEMM with float32 output and
    no reduction. splits None: partial_splits' choice, and None where that is 0."""
    splits = partial_splits(x.shape[0], w) if splits is None else splits
    if not splits:
        return None
    return torch.bmm(*_k_splits(x, w, splits), out_dtype=torch.float32)


def linear_residual(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor, sumsq: torch.Tensor,
                    norm_weight: torch.Tensor, config: LinearConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of linear_residual_ref: the residual add, the sums of squares and the next
    norm's weight in the projection's epilogue (where pick_config has a config), so the norm
    after it needs no kernel of its own (kernels/rmsnorm.py DeferredNorm)."""
    cfg = config or pick_config(x.shape[0], w.shape[0], w.shape[1])
    if cfg is None or x.shape[0] == 0:
        return linear_residual_ref(x, w, residual, sumsq, norm_weight)
    weighted = torch.empty(residual.shape, dtype=residual.dtype, device=residual.device)
    h = _launch(x, w, None, w.shape[0], False, cfg, residual=residual, sumsq=sumsq, norm_weight=norm_weight,
                weighted=weighted)
    return h, weighted


# Widest residual stream (o's and down's N) that defers its norms: faster at the 1.5B (1,536),
# slower at the 7B (3,584, where o and down run 3,584 one-row programs at M = 1).
DEFER_NORM_MAX_N = 2048


def defers_norm(m: int, w: torch.Tensor) -> bool:
    """Whether the norm after linear_residual(x [m, K], w) is worth deferring: the projection
    runs here (not on cuBLAS), so its epilogue takes the residual add, and N is narrow enough."""
    return w.shape[0] <= DEFER_NORM_MAX_N and pick_config(m, w.shape[0], w.shape[1]) is not None


def linear_rope_store(
    x: torch.Tensor, w_qkv: torch.Tensor, bias: torch.Tensor | None, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, q_heads: int, kv_heads: int,
    config: LinearConfig | None = None, norm: DeferredNorm | None = None,
) -> torch.Tensor:
    """Triton version of linear_rope_store_ref: where the projection runs here (small M), RoPE
    and the KV store run in its epilogue, one launch instead of two. Only qkv's q columns are
    written then (k and v go to the pool only: attention reads them there). Elsewhere the
    projection, then apply_rope_and_store_kv (k left unrotated in qkv). config: as in linear."""
    head_dim = k_pool.shape[-1]
    n = w_qkv.shape[0]
    cfg = config or pick_config(x.shape[0], n, w_qkv.shape[1])
    if cfg is None or x.shape[0] == 0 or head_dim & (head_dim - 1):
        qkv = linear(x, w_qkv, bias, cfg, norm)
        apply_rope_and_store_kv(*split_qkv(qkv, q_heads, kv_heads, head_dim), positions, cos_sin, k_pool, v_pool, slots)
        return qkv
    for t in (cos_sin, k_pool, v_pool):
        assert t.stride(-1) == 1, "head_dim (and the cos/sin row) must be contiguous"
    cfg = cfg._replace(block_n=max(2, cfg.block_n))  # whole (d, d + head_dim / 2) pairs per program
    rope = _Rope(positions, cos_sin, k_pool, v_pool, slots, q_heads * head_dim, kv_heads * head_dim)
    return _launch(x, w_qkv, bias, n, False, cfg, rope, norm)
