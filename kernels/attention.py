"""Attention over the token-granular KV pool: extend (prefill, with cached prefixes) and decode.

Both read keys and values through the req->slot table, so a request's cached prefix (from the
radix cache) costs no recompute: only its new tokens are in q. The new tokens' k and v are
stored in the pool (kv_store) before attention runs.

Shapes: q [tokens, q_heads, head_dim]; k_pool, v_pool [num_slots, kv_heads, head_dim] (one
layer); req_to_slot [rows, max_context] int32; req_rows [batch] int: each request's row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _context(pool: torch.Tensor, req_to_slot: torch.Tensor, row: int, length: int) -> torch.Tensor:
    return pool[req_to_slot[row, :length].long()]


def extend_attention_ref(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    prefix_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention for new tokens q[cu[b]:cu[b+1]] of request b at positions prefix_lens[b] + i,
    over its context slots req_to_slot[row_b, : prefix_lens[b] + new_len_b]."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_pool.shape[1]
    cu = cu_seqlens_q.tolist()
    for b, (row, prefix) in enumerate(zip(req_rows.tolist(), prefix_lens.tolist())):
        qb = q[cu[b] : cu[b + 1]]
        n = qb.shape[0]
        if n == 0:
            continue
        total = prefix + n
        k = _context(k_pool, req_to_slot, row, total).repeat_interleave(group, dim=1)
        v = _context(v_pool, req_to_slot, row, total).repeat_interleave(group, dim=1)
        # query i sits at position prefix + i and may see keys 0..prefix + i
        mask = torch.arange(total, device=q.device)[None, :] <= (prefix + torch.arange(n, device=q.device))[:, None]
        o = F.scaled_dot_product_attention(
            qb.transpose(0, 1).float(), k.transpose(0, 1).float(), v.transpose(0, 1).float(),
            attn_mask=mask, scale=scale,
        )
        out[cu[b] : cu[b + 1]] = o.transpose(0, 1).to(q.dtype)
    return out


def decode_attention_ref(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One new token per request (q [batch, q_heads, head_dim]) over its whole context of
    seq_lens[b] tokens (the new token included)."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_pool.shape[1]
    for b, (row, length) in enumerate(zip(req_rows.tolist(), seq_lens.tolist())):
        k = _context(k_pool, req_to_slot, row, length).repeat_interleave(group, dim=1)
        v = _context(v_pool, req_to_slot, row, length).repeat_interleave(group, dim=1)
        o = F.scaled_dot_product_attention(
            q[b : b + 1].transpose(0, 1).float(), k.transpose(0, 1).float(), v.transpose(0, 1).float(), scale=scale
        )
        out[b] = o.transpose(0, 1)[0].to(q.dtype)
    return out
