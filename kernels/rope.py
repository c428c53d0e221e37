"""Rotary position embedding, Qwen2 "rotate half" layout, applied in place to q and k."""

from __future__ import annotations

import torch

from litelang.kernels._triton import tl, triton


def rope_cos_sin_cache(head_dim: int, max_positions: int, theta: float, device=None) -> torch.Tensor:
    """[max_positions, head_dim] float32: cos of the head_dim/2 frequencies, then their sin."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(max_positions, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def apply_rope_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """Rotate q [tokens, q_heads, head_dim] and k [tokens, kv_heads, head_dim] in place.

    positions: [tokens] int; cos_sin: from rope_cos_sin_cache.
    """
    half = q.shape[-1] // 2
    cs = cos_sin[positions.long()]
    cos = cs[:, None, :half]
    sin = cs[:, None, half:]
    for x in (q, k):
        x1 = x[..., :half].float()
        x2 = x[..., half:].float()
        out1 = x1 * cos - x2 * sin
        out2 = x2 * cos + x1 * sin
        x.copy_(torch.cat([out1, out2], dim=-1).to(x.dtype))


# --- Triton ----------------------------------------------------------------------------------


@triton.jit
def _rotate_heads(base, stride_h, n_heads, cos, sin, HALF: tl.constexpr, HEADS_PAD: tl.constexpr):
    """Rotate every head of one token in place: base points at head 0, element 0."""
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HALF)[None, :]
    mask = h < n_heads
    ptr1 = base + h * stride_h + d
    x1 = tl.load(ptr1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr1 + HALF, mask=mask, other=0.0).to(tl.float32)
    out1 = x1 * cos - x2 * sin
    out2 = x2 * cos + x1 * sin
    tl.store(ptr1, out1.to(base.dtype.element_ty), mask=mask)
    tl.store(ptr1 + HALF, out2.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    Q, K, Positions, CosSin,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cs,
    q_heads, k_heads,
    HALF: tl.constexpr, Q_HEADS_PAD: tl.constexpr, K_HEADS_PAD: tl.constexpr,
):
    """One program per token rotates all its q and k heads: the cos/sin row is loaded once."""
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Positions + t).to(tl.int64)
    d = tl.arange(0, HALF)[None, :]
    cos = tl.load(CosSin + pos * stride_cs + d)
    sin = tl.load(CosSin + pos * stride_cs + HALF + d)
    _rotate_heads(Q + t * stride_qt, stride_qh, q_heads, cos, sin, HALF, Q_HEADS_PAD)
    _rotate_heads(K + t * stride_kt, stride_kh, k_heads, cos, sin, HALF, K_HEADS_PAD)


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """Triton version of apply_rope_ref: one launch for q and k, in place (views allowed, e.g. slices
    of the fused qkv output, as long as head_dim is contiguous). head_dim must be a power of two."""
    tokens, q_heads, head_dim = q.shape
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and cos_sin.stride(-1) == 1
    assert head_dim & (head_dim - 1) == 0, "head_dim must be a power of two"
    if tokens == 0:
        return
    _rope_kernel[(tokens,)](
        q, k, positions, cos_sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin.stride(0),
        q_heads, k.shape[1],
        HALF=head_dim // 2,
        Q_HEADS_PAD=triton.next_power_of_2(q_heads), K_HEADS_PAD=triton.next_power_of_2(k.shape[1]),
        num_warps=4,
    )
