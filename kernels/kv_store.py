"""Scatter the new tokens' keys and values into their KV pool slots."""

from __future__ import annotations

import torch


def store_kv_ref(
    k_pool: torch.Tensor, v_pool: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor
) -> None:
    """k_pool, v_pool: [num_slots, kv_heads, head_dim] (one layer); k, v: [tokens, kv_heads, head_dim];
    slots: [tokens] int, the pool slot of each token."""
    idx = slots.long()
    k_pool[idx] = k.to(k_pool.dtype)
    v_pool[idx] = v.to(v_pool.dtype)
