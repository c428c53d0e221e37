"""Rotary position embedding, Qwen2 "rotate half" layout, applied in place to q and k."""

from __future__ import annotations

import torch


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
