"""Triton KV store (scatter into pool slots) vs store_kv_ref."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from litelang.kernels.kv_store import store_kv, store_kv_ref  # noqa: E402


@pytest.mark.parametrize("pool_dtype,src_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                  (torch.float16, torch.float32)])
@pytest.mark.parametrize("kv_heads,head_dim", [(1, 16), (2, 32), (3, 16)])
def test_store_kv_matches_reference(device, pool_dtype, src_dtype, kv_heads, head_dim):
    g = torch.Generator().manual_seed(kv_heads * head_dim)
    slots_total, tokens = 64, 9
    k_pool = torch.randn(slots_total, kv_heads, head_dim, generator=g).to(device, pool_dtype)
    v_pool = torch.randn(slots_total, kv_heads, head_dim, generator=g).to(device, pool_dtype)
    # k and v as strided views of one buffer, like slices of the fused qkv output
    kv = torch.randn(tokens, 2 * kv_heads * head_dim + 8, generator=g).to(device, src_dtype)
    k = kv[:, : kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    v = kv[:, kv_heads * head_dim : 2 * kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    slots = torch.randperm(slots_total, generator=g)[:tokens].to(device, torch.int32)  # shuffled
    k_ref, v_ref = k_pool.clone(), v_pool.clone()
    store_kv_ref(k_ref, v_ref, k, v, slots)
    store_kv(k_pool, v_pool, k, v, slots)
    # the conversion to the pool dtype is a plain cast: exact, except the interpreter's bf16 rounding
    tol = 1e-2 if pool_dtype == torch.bfloat16 else 1e-3 if pool_dtype == torch.float16 else 0
    torch.testing.assert_close(k_pool, k_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(v_pool, v_ref, atol=tol, rtol=tol)
    untouched = torch.ones(slots_total, dtype=torch.bool, device=device)
    untouched[slots.long()] = False
    assert torch.equal(k_pool[untouched], k_ref[untouched])
