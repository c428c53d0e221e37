"""Triton fused RoPE + KV store vs apply_rope_and_store_kv_ref, at small shapes: ragged
positions, GQA, q/k/v as strided views of a fused qkv output, shuffled slots, pool dtype casts."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from litelang.kernels.rope import rope_cos_sin_cache  # noqa: E402
from litelang.kernels.rope_store import apply_rope_and_store_kv, apply_rope_and_store_kv_ref  # noqa: E402

# the interpreter rounds bfloat16 differently from torch
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def qkv_views(device, dtype, tokens: int, q_heads: int, kv_heads: int, head_dim: int, seed: int):
    """q, k, v as views of one [tokens, (q + 2 kv) heads * head_dim + 8] buffer (padded rows:
    the token stride is not the heads' extent), like slices of the model's qkv output."""
    g = torch.Generator().manual_seed(seed)
    width = (q_heads + 2 * kv_heads) * head_dim
    qkv = torch.randn(tokens, width + 8, generator=g).to(device, dtype)
    q = qkv[:, : q_heads * head_dim].view(tokens, q_heads, head_dim)
    k = qkv[:, q_heads * head_dim : (q_heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (q_heads + kv_heads) * head_dim : width].view(tokens, kv_heads, head_dim)
    return qkv, q, k, v


@pytest.mark.parametrize("dtype,pool_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                              (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float16)],
                         ids=str)
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(7, 1, 16), (12, 2, 32), (6, 3, 16), (2, 2, 16)])
def test_rope_store_matches_reference(device, dtype, pool_dtype, q_heads, kv_heads, head_dim):
    tokens, num_slots = 7, 50
    seed = q_heads * head_dim + kv_heads
    g = torch.Generator().manual_seed(seed + 1)
    qkv, q, k, v = qkv_views(device, dtype, tokens, q_heads, kv_heads, head_dim, seed)
    cos_sin = rope_cos_sin_cache(head_dim, 4096, 1e6, device=device)
    positions = torch.tensor([0, 1, 5, 17, 1000, 4095, 2], device=device)  # ragged, not sorted
    slots = torch.randperm(num_slots, generator=g)[:tokens].to(device)  # shuffled
    k_pool = torch.randn(num_slots, kv_heads, head_dim, generator=g).to(device, pool_dtype)
    v_pool = torch.randn(num_slots, kv_heads, head_dim, generator=g).to(device, pool_dtype)

    q_ref, k_ref, v_ref = q.clone(), k.clone(), v.clone()
    k_pool_ref, v_pool_ref = k_pool.clone(), v_pool.clone()
    apply_rope_and_store_kv_ref(q_ref, k_ref, v_ref, positions, cos_sin, k_pool_ref, v_pool_ref, slots)
    v_before, pad_before = v.clone(), qkv[:, -8:].clone()
    apply_rope_and_store_kv(q, k, v, positions, cos_sin, k_pool, v_pool, slots)

    tol = max(TOL[dtype], TOL[pool_dtype])
    torch.testing.assert_close(q, q_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(k_pool, k_pool_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(v_pool, v_pool_ref, atol=tol, rtol=tol)
    assert torch.equal(v, v_before)  # v is only read
    untouched = torch.ones(num_slots, dtype=torch.bool, device=device)
    untouched[slots] = False
    assert torch.equal(k_pool[untouched], k_pool_ref[untouched])
    assert torch.equal(v_pool[untouched], v_pool_ref[untouched])
    assert torch.equal(qkv[:, -8:], pad_before)  # the padding columns too


def test_rope_store_int32_slots_and_no_tokens(device):
    """int32 slots/positions work; zero tokens is a no-op."""
    _, q, k, v = qkv_views(device, torch.float32, 3, 4, 2, 16, seed=9)
    cos_sin = rope_cos_sin_cache(16, 64, 1e4, device=device)
    positions = torch.tensor([3, 0, 63], device=device, dtype=torch.int32)
    slots = torch.tensor([5, 0, 2], device=device, dtype=torch.int32)
    pools = [torch.zeros(6, 2, 16, device=device) for _ in range(4)]
    q_ref, k_ref = q.clone(), k.clone()
    apply_rope_and_store_kv_ref(q_ref, k_ref, v, positions, cos_sin, pools[0], pools[1], slots)
    apply_rope_and_store_kv(q, k, v, positions, cos_sin, pools[2], pools[3], slots)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pools[2], pools[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pools[3], pools[1], atol=0, rtol=0)
    before = [p.clone() for p in pools]
    apply_rope_and_store_kv(q[:0], k[:0], v[:0], positions[:0], cos_sin, pools[2], pools[3], slots[:0])
    assert all(torch.equal(a, b) for a, b in zip(pools, before))
