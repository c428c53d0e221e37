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

from litelang.kernels._triton import INTERPRET, tl, triton


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
    max_new_len: int | None = None,
) -> torch.Tensor:
    """Causal attention for new tokens q[cu[b]:cu[b+1]] of request b at positions prefix_lens[b] + i,
    over its context slots req_to_slot[row_b, : prefix_lens[b] + new_len_b]. (max_new_len is the
    Triton version's hint to avoid a host sync; the reference reads the lengths itself.)"""
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


# --- Triton ----------------------------------------------------------------------------------
#
# Scores are computed in base 2: q.k * scale * log2(e), then exp2 — one multiply fewer per score.
# K and V rows are gathered through req_to_slot, so there are no block pointers / TMA: every
# tile is a pointer-tensor gather of head_dim-contiguous rows.

_LOG2E = 1.4426950408889634


@triton.jit
def _mma(a, b, DOT_F32: tl.constexpr):
    """a @ b, float32 accumulate. DOT_F32: exact float32 products (fp32 inputs on GPU, where the
    default would be tf32, and the CPU interpreter, which cannot multiply bfloat16 tiles)."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc, DOT_F32: tl.constexpr):
    """One FlashAttention-2 online-softmax update with scores s [M, N] (base 2) and values v [N, D]."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    acc = acc * alpha[:, None] + _mma(p.to(v.dtype), v, DOT_F32)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return m_new, l_i, acc


# --- extend (prefill with cached prefixes) ---


@triton.jit
def _extend_kernel(
    Q, K, V, Out, ReqToSlot, ReqRows, CuSeqlens, PrefixLens, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_r,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """Program (m-block, q head, request): BLOCK_M new tokens of one request against its context."""
    # the largest m-blocks (most keys under the causal mask) launch first
    mb = tl.num_programs(0) - 1 - tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_start = tl.load(CuSeqlens + b).to(tl.int32)
    n_new = tl.load(CuSeqlens + b + 1).to(tl.int32) - q_start
    m_start = mb * BLOCK_M
    if m_start < n_new:
        prefix = tl.load(PrefixLens + b).to(tl.int32)
        slot_row = ReqToSlot + tl.load(ReqRows + b).to(tl.int64) * stride_r
        kvh = h // GROUP
        m = m_start + tl.arange(0, BLOCK_M)
        d = tl.arange(0, HEAD_DIM)
        q_mask = (m < n_new)[:, None]
        q_off = (q_start + m).to(tl.int64)[:, None]
        q = tl.load(Q + q_off * stride_qt + h * stride_qh + d[None, :], mask=q_mask, other=0.0)
        pos = prefix + m  # absolute position of each query row

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        # keys before the block's first position are visible to every row: no mask there
        unmasked_end = ((prefix + m_start) // BLOCK_N) * BLOCK_N
        end = prefix + tl.minimum(m_start + BLOCK_M, n_new)
        for n0 in range(0, unmasked_end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            slot = tl.load(slot_row + n).to(tl.int64)[:, None]
            k = tl.load(K + slot * stride_kt + kvh * stride_kh + d[None, :])
            v = tl.load(V + slot * stride_vt + kvh * stride_vh + d[None, :])
            s = _mma(q, tl.trans(k), DOT_F32) * qk_scale
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, DOT_F32)
        for n0 in range(unmasked_end, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < end
            slot = tl.load(slot_row + n, mask=n_mask, other=0).to(tl.int64)[:, None]
            k = tl.load(K + slot * stride_kt + kvh * stride_kh + d[None, :], mask=n_mask[:, None], other=0.0)
            v = tl.load(V + slot * stride_vt + kvh * stride_vh + d[None, :], mask=n_mask[:, None], other=0.0)
            s = _mma(q, tl.trans(k), DOT_F32) * qk_scale
            visible = (n[None, :] <= pos[:, None]) & n_mask[None, :]
            s = tl.where(visible, s, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, DOT_F32)
        # every row sees key 0, so l_i > 0
        out = acc / l_i[:, None]
        tl.store(Out + q_off * stride_ot + h * stride_oh + d[None, :], out.to(Out.dtype.element_ty), mask=q_mask)


def _extend_config(head_dim: int, dtype: torch.dtype) -> dict:
    if INTERPRET:  # small tiles: CPU tests at small shapes still cross several blocks
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    if head_dim <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)


def extend_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    prefix_lens: torch.Tensor,
    scale: float,
    max_new_len: int | None = None,
) -> torch.Tensor:
    """Triton version of extend_attention_ref.

    max_new_len: the longest request's new-token count (max of cu_seqlens_q's differences), which
    sizes the grid. Pass it: the caller knows it on the host. When None it is read from
    cu_seqlens_q, a host sync (acceptable in eager extend steps, never inside a CUDA graph).
    """
    tokens, q_heads, head_dim = q.shape
    batch = cu_seqlens_q.shape[0] - 1
    out = torch.empty_like(q)
    if tokens == 0 or batch == 0:
        return out
    if max_new_len is None:
        max_new_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    if max_new_len == 0:
        return out
    assert q.stride(-1) == 1 and k_pool.stride(-1) == 1 and v_pool.stride(-1) == 1
    assert req_to_slot.stride(-1) == 1
    cfg = _extend_config(head_dim, q.dtype)
    grid = (triton.cdiv(max_new_len, cfg["BLOCK_M"]), q_heads, batch)
    _extend_kernel[grid](
        q, k_pool, v_pool, out, req_to_slot, req_rows, cu_seqlens_q, prefix_lens, scale * _LOG2E,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        out.stride(0), out.stride(1), req_to_slot.stride(0),
        GROUP=q_heads // k_pool.shape[1], HEAD_DIM=head_dim, DOT_F32=INTERPRET or q.dtype == torch.float32,
        **cfg,
    )
    return out


# --- decode (flash-decoding) ---


@triton.jit
def _decode_split_kernel(
    Q, K, V, ReqToSlot, ReqRows, SeqLens, PartAcc, PartMax, PartSum, qk_scale,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_r,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr,
):
    """Program (request, kv head, split): every query head of the kv head's group against one
    SPLIT-token slice of the context; unnormalized partial results go to scratch."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    start = split * SPLIT
    if start < seq_len:  # splits past the request's length do nothing
        end = tl.minimum(start + SPLIT, seq_len)
        slot_row = ReqToSlot + tl.load(ReqRows + b).to(tl.int64) * stride_r
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        heads = kvh * GROUP + g
        g_mask = (g < GROUP)[:, None]
        q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=g_mask, other=0.0)

        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < end
            slot = tl.load(slot_row + n, mask=n_mask, other=0).to(tl.int64)[:, None]
            k = tl.load(K + slot * stride_kt + kvh * stride_kh + d[None, :], mask=n_mask[:, None], other=0.0)
            v = tl.load(V + slot * stride_vt + kvh * stride_vh + d[None, :], mask=n_mask[:, None], other=0.0)
            s = _mma(q, tl.trans(k), DOT_F32) * qk_scale
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, DOT_F32)

        # scratch layout: [batch, q_heads, max_splits] (+ [head_dim] for acc)
        part = (b.to(tl.int64) * tl.num_programs(1) * GROUP + heads) * tl.num_programs(2) + split
        tl.store(PartAcc + part[:, None] * HEAD_DIM + d[None, :], acc, mask=g_mask)
        tl.store(PartMax + part, m_i, mask=g < GROUP)
        tl.store(PartSum + part, l_i, mask=g < GROUP)


@triton.jit
def _decode_merge_kernel(
    PartAcc, PartMax, PartSum, Out, SeqLens, stride_ob, stride_oh, max_splits,
    HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    """Program (request, q head): log-sum-exp merge of the request's non-empty splits, all
    loaded at once (max_splits <= SPLITS_PAD)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    s = tl.arange(0, SPLITS_PAD)
    valid = s < (seq_len + SPLIT - 1) // SPLIT
    part = (b.to(tl.int64) * tl.num_programs(1) + h) * max_splits + s
    m_s = tl.load(PartMax + part, mask=valid, other=float("-inf"))
    l_s = tl.load(PartSum + part, mask=valid, other=0.0)
    acc_s = tl.load(PartAcc + part[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], mask=valid[:, None], other=0.0)
    m = tl.max(m_s, axis=0)
    m = tl.where(m > float("-inf"), m, 0.0)  # no valid split: avoid -inf - -inf
    w = tl.where(valid, tl.exp2(m_s - m), 0.0)
    l = tl.sum(l_s * w, axis=0)
    acc = tl.sum(acc_s * w[:, None], axis=0)
    out = acc / tl.where(l > 0, l, 1.0)  # an empty context (a padding row) gives zeros
    tl.store(Out + b.to(tl.int64) * stride_ob + h * stride_oh + tl.arange(0, HEAD_DIM), out.to(Out.dtype.element_ty))


def _decode_config(dtype: torch.dtype) -> dict:
    if INTERPRET:
        return dict(BLOCK_N=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_N=32, num_warps=4, num_stages=2)
    return dict(BLOCK_N=64, num_warps=4, num_stages=2)


# Split policy knobs (tune with bench/bench_kernels.py): programs of the split kernel to aim
# for, active or not, and a cap on splits per request (bounds the merge and the scratch).
DECODE_TARGET_PROGRAMS = 4096
DECODE_MAX_SPLITS = 64


def decode_split_size(batch: int, kv_heads: int, max_context: int, block_n: int) -> int:
    """Tokens per split, from shapes only (CUDA-graph safe). Every request gets
    max_context / split programs however short its context, those past its length exiting at
    once: enough splits fill the GPU at small batch, few enough keep empty programs cheap."""
    target = 8 if INTERPRET else DECODE_TARGET_PROGRAMS
    splits = min(DECODE_MAX_SPLITS, max(1, target // max(1, batch * kv_heads)))
    return max(block_n, triton.next_power_of_2(triton.cdiv(max(max_context, 1), splits)))


def decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    split_size: int | None = None,
) -> torch.Tensor:
    """Triton version of decode_attention_ref: flash-decoding, no host sync, graph-capturable.

    Grid (batch, kv_heads, max_splits) with max_splits = cdiv(req_to_slot.shape[1], split_size),
    so seq_lens must not exceed req_to_slot.shape[1]. A request with seq_len 0 (a padding row)
    gets zeros. split_size (a power of two) overrides decode_split_size, for tests and tuning.
    """
    batch, q_heads, head_dim = q.shape
    kv_heads = k_pool.shape[1]
    group = q_heads // kv_heads
    assert q_heads == group * kv_heads and head_dim & (head_dim - 1) == 0
    assert q.stride(-1) == 1 and k_pool.stride(-1) == 1 and v_pool.stride(-1) == 1
    assert req_to_slot.stride(-1) == 1
    out = torch.empty_like(q)
    if batch == 0:
        return out
    cfg = _decode_config(q.dtype)
    split = split_size or decode_split_size(batch, kv_heads, req_to_slot.shape[1], cfg["BLOCK_N"])
    assert split >= 16 and split & (split - 1) == 0, "split_size: a power of two >= 16"
    max_splits = triton.cdiv(max(req_to_slot.shape[1], 1), split)
    assert max_splits <= 256, "split_size too small for this req_to_slot width (merge tile)"
    part_acc = torch.empty((batch, q_heads, max_splits, head_dim), dtype=torch.float32, device=q.device)
    part_max = torch.empty((batch, q_heads, max_splits), dtype=torch.float32, device=q.device)
    part_sum = torch.empty_like(part_max)
    dot_f32 = INTERPRET or q.dtype == torch.float32
    _decode_split_kernel[(batch, kv_heads, max_splits)](
        q, k_pool, v_pool, req_to_slot, req_rows, seq_lens, part_acc, part_max, part_sum, scale * _LOG2E,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        req_to_slot.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        SPLIT=split, BLOCK_N=min(cfg["BLOCK_N"], split), DOT_F32=dot_f32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    _decode_merge_kernel[(batch, q_heads)](
        part_acc, part_max, part_sum, out, seq_lens, out.stride(0), out.stride(1), max_splits,
        HEAD_DIM=head_dim, SPLIT=split, SPLITS_PAD=triton.next_power_of_2(max_splits), num_warps=4,
    )
    return out
