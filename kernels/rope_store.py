"""RoPE on q and k fused with the KV store: one launch per layer instead of two.

apply_rope (q and k in place) and then store_kv (k and v into their pool slots) would be two
launches per layer, at batch 1 pure launch latency. The fused kernel rotates q in place and
writes the rotated k, and v, straight into the pool.

k in the caller's tensor: the reference rotates it in place (it is apply_rope_ref + store_kv_ref),
the Triton kernel leaves it unrotated (one store fewer). Nothing reads it afterwards: both
attention kernels read keys from the pool, so after this call only the pool's copy of k counts.
"""

from __future__ import annotations

import torch

from litelang.kernels._triton import pdl_launch, pdl_start, tl, triton
from litelang.kernels.kv_store import store_kv_ref
from litelang.kernels.rope import apply_rope_ref


def apply_rope_and_store_kv_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """apply_rope_ref(q, k, positions, cos_sin), then store_kv_ref(k_pool, v_pool, k, v, slots).

    q [tokens, q_heads, head_dim], k and v [tokens, kv_heads, head_dim]; positions, slots [tokens] int.
    """
    apply_rope_ref(q, k, positions, cos_sin)
    store_kv_ref(k_pool, v_pool, k, v, slots)


# --- Triton ----------------------------------------------------------------------------------


@triton.jit
def _load_rotated(base, stride_h, n_heads, cos, sin, HALF: tl.constexpr, HEADS_PAD: tl.constexpr):
    """Every head of one token (base: head 0, element 0), rotated, as float32 halves, and the
    head mask."""
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HALF)[None, :]
    mask = h < n_heads
    x1 = tl.load(base + h * stride_h + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + h * stride_h + HALF + d, mask=mask, other=0.0).to(tl.float32)
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin, mask


@triton.jit
def _store_halves(base, stride_h, out1, out2, mask, HALF: tl.constexpr, HEADS_PAD: tl.constexpr):
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HALF)[None, :]
    tl.store(base + h * stride_h + d, out1.to(base.dtype.element_ty), mask=mask)
    tl.store(base + h * stride_h + HALF + d, out2.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _rope_store_kernel(
    Q, K, V, Positions, CosSin, KPool, VPool, Slots,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cs,
    stride_pk, stride_ph, stride_pvk, stride_pvh,
    q_heads, kv_heads,
    HALF: tl.constexpr, Q_HEADS_PAD: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per token: rotate its q heads in place, its k heads into the pool slot, and
    copy its v heads there (the cos/sin row and the slot are loaded once)."""
    pdl_start(PDL)  # before any memory access: see kernels/_triton.py
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Positions + t).to(tl.int64)
    slot = tl.load(Slots + t).to(tl.int64)
    d = tl.arange(0, HALF)[None, :]
    cos = tl.load(CosSin + pos * stride_cs + d)
    sin = tl.load(CosSin + pos * stride_cs + HALF + d)

    q1, q2, q_mask = _load_rotated(Q + t * stride_qt, stride_qh, q_heads, cos, sin, HALF, Q_HEADS_PAD)
    _store_halves(Q + t * stride_qt, stride_qh, q1, q2, q_mask, HALF, Q_HEADS_PAD)

    k1, k2, kv_mask = _load_rotated(K + t * stride_kt, stride_kh, kv_heads, cos, sin, HALF, KV_HEADS_PAD)
    # round to k's dtype first, as the reference does (rotate in place, then cast into the pool)
    k1 = k1.to(K.dtype.element_ty)
    k2 = k2.to(K.dtype.element_ty)
    _store_halves(KPool + slot * stride_pk, stride_ph, k1, k2, kv_mask, HALF, KV_HEADS_PAD)

    h = tl.arange(0, KV_HEADS_PAD)[:, None]
    e = tl.arange(0, 2 * HALF)[None, :]
    v = tl.load(V + t * stride_vt + h * stride_vh + e, mask=kv_mask)
    tl.store(VPool + slot * stride_pvk + h * stride_pvh + e, v.to(VPool.dtype.element_ty), mask=kv_mask)


def apply_rope_and_store_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """Triton version of apply_rope_and_store_kv_ref, one launch; k is left unrotated (see the
    module docstring). q, k, v may be strided views (of the fused qkv output) with head_dim
    contiguous; head_dim a power of two. Duplicate slots in one call: one of the writes wins."""
    tokens, q_heads, head_dim = q.shape
    kv_heads = k.shape[1]
    for x in (q, k, v, cos_sin, k_pool, v_pool):
        assert x.stride(-1) == 1, "head_dim (and the cos/sin row) must be contiguous"
    assert head_dim & (head_dim - 1) == 0, "head_dim must be a power of two"
    if tokens == 0:
        return
    _rope_store_kernel[(tokens,)](
        q, k, v, positions, cos_sin, k_pool, v_pool, slots,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin.stride(0),
        k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        q_heads, kv_heads,
        HALF=head_dim // 2,
        Q_HEADS_PAD=triton.next_power_of_2(q_heads), KV_HEADS_PAD=triton.next_power_of_2(kv_heads),
        num_warps=4, **pdl_launch(),
    )
