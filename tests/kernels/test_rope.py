"""Triton RoPE (in place on q and k, one launch) vs apply_rope_ref."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from litelang.kernels.rope import apply_rope, apply_rope_ref, rope_cos_sin_cache  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(7, 1, 16), (12, 2, 32)])
def test_rope_matches_reference(device, dtype, q_heads, kv_heads, head_dim):
    g = torch.Generator().manual_seed(q_heads * head_dim)
    tokens = 6
    cos_sin = rope_cos_sin_cache(head_dim, 4096, 1e6, device=device)
    # q and k as views of a fused qkv output: strided tokens, like the model produces them
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, generator=g).to(device, dtype)
    q = qkv[:, : q_heads * head_dim].view(tokens, q_heads, head_dim)
    k = qkv[:, q_heads * head_dim : (q_heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v_before = qkv[:, (q_heads + kv_heads) * head_dim :].clone()
    positions = torch.tensor([0, 1, 5, 17, 1000, 4095], device=device)
    q_ref, k_ref = q.clone(), k.clone()
    apply_rope_ref(q_ref, k_ref, positions, cos_sin)
    apply_rope(q, k, positions, cos_sin)
    tol = TOL[dtype]
    torch.testing.assert_close(q, q_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(k, k_ref, atol=tol, rtol=tol)
    assert torch.equal(qkv[:, (q_heads + kv_heads) * head_dim :], v_before)  # v untouched
