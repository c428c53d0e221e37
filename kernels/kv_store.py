"""Scatter the new tokens' keys and values into their KV pool slots."""

from __future__ import annotations

import torch

from litelang.kernels._triton import tl, triton


def store_kv_ref(
    k_pool: torch.Tensor, v_pool: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor
) -> None:
    """k_pool, v_pool: [num_slots, kv_heads, head_dim] (one layer); k, v: [tokens, kv_heads, head_dim];
    slots: [tokens] int, the pool slot of each token."""
    idx = slots.long()
    k_pool[idx] = k.to(k_pool.dtype)
    v_pool[idx] = v.to(v_pool.dtype)


# --- Triton ----------------------------------------------------------------------------------


@triton.jit
def _store_kv_kernel(
    KPool, VPool, K, V, Slots,
    stride_pk, stride_ph, stride_pvk, stride_pvh, stride_kt, stride_kh, stride_vt, stride_vh,
    kv_heads, HEAD_DIM: tl.constexpr, HEADS_PAD: tl.constexpr,
):
    """One program per token copies all its kv heads into its slot."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(Slots + t).to(tl.int64)
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HEAD_DIM)[None, :]
    mask = h < kv_heads
    k = tl.load(K + t * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(V + t * stride_vt + h * stride_vh + d, mask=mask)
    tl.store(KPool + slot * stride_pk + h * stride_ph + d, k.to(KPool.dtype.element_ty), mask=mask)
    tl.store(VPool + slot * stride_pvk + h * stride_pvh + d, v.to(VPool.dtype.element_ty), mask=mask)


def store_kv(
    k_pool: torch.Tensor, v_pool: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor
) -> None:
    """Triton version of store_kv_ref (k, v may be strided views of the fused qkv output).
    head_dim must be a power of two. Duplicate slots in one call: one of the writes wins."""
    tokens, kv_heads, head_dim = k.shape
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and k_pool.stride(-1) == 1 and v_pool.stride(-1) == 1
    assert head_dim & (head_dim - 1) == 0, "head_dim must be a power of two"
    if tokens == 0:
        return
    _store_kv_kernel[(tokens,)](
        k_pool, v_pool, k, v, slots,
        k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_heads, HEAD_DIM=head_dim, HEADS_PAD=triton.next_power_of_2(kv_heads), num_warps=1,
    )
