"""Attention over the token-granular KV pool: extend (prefill, with cached prefixes) and decode.

Both read keys and values through the req->slot table, so a request's cached prefix (from the
radix cache) costs no recompute: only its new tokens are in q. The new tokens' k and v are
stored in the pool (kv_store) before attention runs.

Shapes: q [tokens, q_heads, head_dim]; k_pool, v_pool [num_slots, kv_heads, head_dim] (one
layer); req_to_slot [rows, max_context] int32; req_rows [batch] int: each request's row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from litelang.kernels import tuned_configs
from litelang.kernels._triton import INTERPRET, LATE_RELEASE, LaunchCounters, dot_f32, pdl_launch, pdl_release, pdl_start, tl, triton


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
        return dot_f32(a, b, tl.zeros([a.shape[0], b.shape[1]], dtype=tl.float32))
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
    DOT_F32: tl.constexpr, HEAD_ROWS: tl.constexpr = False,
):
    """Program (m-block, q head, request): BLOCK_M new tokens of one request against its context.
    HEAD_ROWS (decode: one new token per request, q row b, the last of its seq_lens[b] tokens;
    PrefixLens holds seq_lens, CuSeqlens is unused): program (0, kv head, request), the tile's
    rows that token's GROUP query heads; each row runs exactly as it would as a token of a q
    head's tile."""
    # the largest m-blocks (most keys under the causal mask) launch first
    mb = tl.num_programs(0) - 1 - tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    if HEAD_ROWS:
        q_start = b
        n_new = 1
    else:
        q_start = tl.load(CuSeqlens + b).to(tl.int32)
        n_new = tl.load(CuSeqlens + b + 1).to(tl.int32) - q_start
    m_start = mb * BLOCK_M
    if m_start < n_new:
        if HEAD_ROWS:
            prefix = tl.load(PrefixLens + b).to(tl.int32) - 1
        else:
            prefix = tl.load(PrefixLens + b).to(tl.int32)
        slot_row = ReqToSlot + tl.load(ReqRows + b).to(tl.int64) * stride_r
        d = tl.arange(0, HEAD_DIM)
        r = tl.arange(0, BLOCK_M)
        if HEAD_ROWS:
            kvh = h
            heads = (kvh * GROUP + r)[:, None]
            m = tl.zeros([BLOCK_M], tl.int32)  # every row is the request's one new token
            q_mask = (r < GROUP)[:, None]
        else:
            kvh = h // GROUP
            heads = h
            m = m_start + r
            q_mask = (m < n_new)[:, None]
        q_off = (q_start + m).to(tl.int64)[:, None]
        q = tl.load(Q + q_off * stride_qt + heads * stride_qh + d[None, :], mask=q_mask, other=0.0)
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
        tl.store(Out + q_off * stride_ot + heads * stride_oh + d[None, :], out.to(Out.dtype.element_ty), mask=q_mask)


_EXTEND = tuned_configs.table("extend_attention")


def _extend_config(dtype: torch.dtype) -> dict:
    """Extend tiles from tuned_configs.json (bf16/fp16: bench/tune_extend.py on an H100 at
    head_dim 128, 12 q / 2 kv heads; 4 warps on 128 x 64 tiles)."""
    if INTERPRET:  # small tiles: CPU tests at small shapes still cross several blocks
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    return dict(_EXTEND["float32" if dtype == torch.float32 else "half"]["config"])


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
    tokens = q.shape[0]
    batch = cu_seqlens_q.shape[0] - 1
    if tokens == 0 or batch == 0:
        return torch.empty_like(q)
    if max_new_len is None:
        max_new_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    if max_new_len == 0:
        return torch.empty_like(q)
    return _launch_extend(q, k_pool, v_pool, req_to_slot, req_rows, cu_seqlens_q, prefix_lens, scale, max_new_len,
                          head_rows=False)


def decode_attention_as_extend(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """decode_attention's contract (q [batch, q_heads, head_dim], one new token per request, the
    last of its seq_lens) run by the extend kernel: one program per (kv head, request) with the
    group's query heads as the tile's rows, so the context is read once per kv head, and each
    row's result is bit for bit the one its token gets inside a longer extend (the
    batch-invariant decode, kernels/batch_invariant.py). The kernel reads the row and the prefix
    from seq_lens itself: no helper launches per layer."""
    if q.shape[0] == 0:
        return torch.empty_like(q)
    return _launch_extend(q, k_pool, v_pool, req_to_slot, req_rows, seq_lens, seq_lens, scale, 1, head_rows=True)


def _launch_extend(q, k_pool, v_pool, req_to_slot, req_rows, cu_seqlens_q, prefix_lens, scale: float,
                   max_new_len: int, head_rows: bool) -> torch.Tensor:
    q_heads, head_dim = q.shape[1:]
    out = torch.empty_like(q)
    assert q.stride(-1) == 1 and k_pool.stride(-1) == 1 and v_pool.stride(-1) == 1
    assert req_to_slot.stride(-1) == 1
    cfg = _extend_config(q.dtype)
    group = q_heads // k_pool.shape[1]
    if head_rows:
        assert group <= cfg["BLOCK_M"], "head_rows: a kv head's query heads must fit one tile"
        grid = (1, k_pool.shape[1], q.shape[0])
    else:
        grid = (triton.cdiv(max_new_len, cfg["BLOCK_M"]), q_heads, cu_seqlens_q.shape[0] - 1)
    _extend_kernel[grid](
        q, k_pool, v_pool, out, req_to_slot, req_rows, cu_seqlens_q, prefix_lens, scale * _LOG2E,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        out.stride(0), out.stride(1), req_to_slot.stride(0),
        GROUP=group, HEAD_DIM=head_dim, DOT_F32=INTERPRET or q.dtype == torch.float32, HEAD_ROWS=head_rows,
        **cfg,
    )
    return out


# --- decode (flash-decoding) ---
#
# Grid (batch, kv_heads, num_splits), num_splits from shapes only (CUDA-graph safe). Each request
# spreads its *actual* context, read from seq_lens on the device, evenly over the num_splits
# programs in whole BLOCK_N blocks: a 300-token context runs as 5 one-block programs rather
# than one 5-block program (the rest exit at once), and a 32k context as num_splits programs.
# A request that fits one split (or has none, a padding row) is normalized and written by its
# split program. Otherwise the splits' partial results are merged (log-sum-exp), either by the
# last split program of the (request, kv head) to finish (an integer counter, so no second
# launch per layer), reading the partials 8 splits at a time, so the merge costs registers for 8
# whatever num_splits is, and a short context (few of its splits used) one pass. Only past
# fused_merge_max splits (tests, tuning) does a merge kernel run.


class DecodeConfig(NamedTuple):
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = True  # load the next block's slot indices before this block's K and V
    fused_merge_max: int = 64  # merge in the split kernel up to this many splits, else a merge launch


@triton.jit
def _split_len(seq_len, num_splits, BLOCK_N: tl.constexpr):
    """Tokens per split of a seq_len context: whole blocks, at least one (both kernels use it)."""
    per_split = (seq_len + num_splits - 1) // num_splits
    return tl.maximum((per_split + BLOCK_N - 1) // BLOCK_N, 1) * BLOCK_N


@triton.jit
def _merge_splits(PartAcc, PartMax, PartSum, Out, stride_oh, first_part, n_heads, n_splits, num_splits,
                  HEADS_PAD: tl.constexpr, CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The fused merge: log-sum-exp merge of the n_splits (>= 2) partials of n_heads heads,
    scratch rows from first_part on, into Out[h]; CHUNK splits at a time, every load of a chunk
    in flight at once (short contexts use few splits: one chunk). The order of the sums is
    fixed: the result does not depend on which split program arrives last."""
    h = tl.arange(0, HEADS_PAD)
    d = tl.arange(0, HEAD_DIM)
    h_mask = h < n_heads
    m = tl.full([HEADS_PAD], float("-inf"), tl.float32)
    l = tl.zeros([HEADS_PAD], tl.float32)
    acc = tl.zeros([HEADS_PAD, HEAD_DIM], tl.float32)
    for c in range(0, n_splits, CHUNK):
        s = c + tl.arange(0, CHUNK)
        part = (first_part + h * num_splits)[:, None] + s[None, :]  # [heads, splits]
        valid = h_mask[:, None] & (s < n_splits)[None, :]
        # .cg: from L2, where the other programs' partials are (not a stale L1 line)
        m_s = tl.load(PartMax + part, mask=valid, other=float("-inf"), cache_modifier=".cg")
        l_s = tl.load(PartSum + part, mask=valid, other=0.0, cache_modifier=".cg")
        acc_s = tl.load(PartAcc + part[:, :, None] * HEAD_DIM + d[None, None, :], mask=valid[:, :, None], other=0.0,
                        cache_modifier=".cg")
        m_new = tl.where(h_mask, tl.maximum(m, tl.max(m_s, axis=1)), 0.0)  # finite: the first chunk holds keys
        rescale = tl.exp2(m - m_new)  # 0 on the first chunk (m = -inf)
        w = tl.where(valid, tl.exp2(m_s - m_new[:, None]), 0.0)
        l = l * rescale + tl.sum(l_s * w, axis=1)
        acc = acc * rescale[:, None] + tl.sum(acc_s * w[:, :, None], axis=1)
        m = m_new
    out = acc / tl.where(h_mask, l, 1.0)[:, None]
    tl.store(Out + h[:, None] * stride_oh + d[None, :], out.to(Out.dtype.element_ty), mask=h_mask[:, None])


@triton.jit
def _decode_split_kernel(
    Q, K, V, Out, ReqToSlot, ReqRows, SeqLens, PartAcc, PartMax, PartSum, Counters, qk_scale, num_splits,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ob, stride_oh, stride_r,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_F32: tl.constexpr, PREFETCH: tl.constexpr, FUSED_MERGE: tl.constexpr, MERGE_G: tl.constexpr,
    MERGE_CHUNK: tl.constexpr, LATE_RELEASE: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (request, kv head, split): every query head of the kv head's group against one
    slice of the context. Unnormalized partial results go to scratch for the merge, unless the
    request has a single split: then the normalized output goes straight to Out. FUSED_MERGE:
    the last split to finish merges its group's partials, MERGE_CHUNK splits at a time.

    Before the PDL wait it reads only what the step's first kernel wrote or what was copied
    before it (seq_len, the row, the first block's slot numbers; kernels/_triton.py), so that
    chain of dependent loads overlaps the kernel before; q and the keys and values (this
    token's come from the kernel before) are read after it."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    slot_row = ReqToSlot + tl.load(ReqRows + b).to(tl.int64) * stride_r
    split_len = _split_len(seq_len, num_splits, BLOCK_N)
    n_splits = (seq_len + split_len - 1) // split_len  # 0 for an empty context
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    if PREFETCH:
        n = start + tl.arange(0, BLOCK_N)
        next_slot = tl.load(slot_row + n, mask=n < end, other=0)
    # before reading q, K or V (kernels/_triton.py); programs hold 72 KB of shared memory: the next
    # kernel launches after the main loop
    pdl_start(PDL, RELEASE=not LATE_RELEASE)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    heads = kvh * GROUP + g
    g_mask = g < GROUP
    q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=g_mask[:, None], other=0.0)
    if split < tl.maximum(n_splits, 1):  # splits past the context do nothing
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < end
            if PREFETCH:
                # K and V wait on their slot indices: fetch the next block's now, so that each
                # block costs one memory round trip, not two
                slot = next_slot
                next_slot = tl.load(slot_row + n + BLOCK_N, mask=n + BLOCK_N < end, other=0)
            else:
                slot = tl.load(slot_row + n, mask=n_mask, other=0)
            slot = slot.to(tl.int64)[:, None]
            k = tl.load(K + slot * stride_kt + kvh * stride_kh + d[None, :], mask=n_mask[:, None], other=0.0)
            v = tl.load(V + slot * stride_vt + kvh * stride_vh + d[None, :], mask=n_mask[:, None], other=0.0)
            s = _mma(q, tl.trans(k), DOT_F32) * qk_scale
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, DOT_F32)
        if LATE_RELEASE:
            pdl_release(PDL)  # (splits past the context release by exiting)

        if n_splits <= 1:
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty context gives zeros
            out_ptr = Out + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + d[None, :]
            tl.store(out_ptr, out.to(Out.dtype.element_ty), mask=g_mask[:, None])
        else:
            # scratch layout: [batch, q_heads, num_splits] (+ [head_dim] for acc)
            first_part = (b.to(tl.int64) * tl.num_programs(1) * GROUP + kvh * GROUP) * num_splits
            part = first_part + g * num_splits + split
            tl.store(PartAcc + part[:, None] * HEAD_DIM + d[None, :], acc, mask=g_mask[:, None])
            tl.store(PartMax + part, m_i, mask=g_mask)
            tl.store(PartSum + part, l_i, mask=g_mask)
            if FUSED_MERGE:
                pair = b * tl.num_programs(1) + kvh
                tl.debug_barrier()  # every thread's partial is written before the counter's release
                arrived = tl.atomic_add(Counters + pair, 1, sem="acq_rel")
                if arrived == n_splits - 1:  # the last split of the pair: all partials are out
                    tl.atomic_xchg(Counters + pair, 0)  # ready for the next launch
                    _merge_splits(PartAcc, PartMax, PartSum, Out + b.to(tl.int64) * stride_ob + kvh * GROUP * stride_oh,
                                  stride_oh, first_part, GROUP, n_splits, num_splits, MERGE_G, MERGE_CHUNK, HEAD_DIM)


@triton.jit
def _decode_merge_kernel(
    PartAcc, PartMax, PartSum, Out, SeqLens, stride_ob, stride_oh, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (request, q head): log-sum-exp merge of the request's splits, all loaded at once
    (num_splits <= SPLITS_PAD). Requests with one split were written by the split kernel.
    (Kept 2D: _merge_splits' [1, splits, head_dim] tile measured slower here.)"""
    pdl_start(PDL)  # before any memory access: see kernels/_triton.py
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    split_len = _split_len(seq_len, num_splits, BLOCK_N)
    n_splits = (seq_len + split_len - 1) // split_len
    if n_splits > 1:
        s = tl.arange(0, SPLITS_PAD)
        valid = s < n_splits
        part = (b.to(tl.int64) * tl.num_programs(1) + h) * num_splits + s
        d = tl.arange(0, HEAD_DIM)
        m_s = tl.load(PartMax + part, mask=valid, other=float("-inf"))
        l_s = tl.load(PartSum + part, mask=valid, other=0.0)
        acc_s = tl.load(PartAcc + part[:, None] * HEAD_DIM + d[None, :], mask=valid[:, None], other=0.0)
        m = tl.max(m_s, axis=0)  # finite: every valid split holds at least one key
        w = tl.where(valid, tl.exp2(m_s - m), 0.0)
        l = tl.sum(l_s * w, axis=0)
        acc = tl.sum(acc_s * w[:, None], axis=0)
        tl.store(Out + b.to(tl.int64) * stride_ob + h * stride_oh + d, (acc / l).to(Out.dtype.element_ty))


_DECODE = tuned_configs.table("decode_attention")


def _decode_config(dtype: torch.dtype) -> DecodeConfig:
    """From tuned_configs.json (bf16: bench/tune_decode.py on an H100, 12 q / 2 kv heads,
    head_dim 128, K/V from HBM): 3 stages with the slot prefetch fit 3 programs per SM."""
    if INTERPRET:
        return DecodeConfig(block_n=16, num_warps=4, num_stages=1)
    return DecodeConfig(**_DECODE["float32" if dtype == torch.float32 else "half"]["config"])


# Split policy (tuned_configs.json, tune with bench/tune_decode.py): split programs to aim for per
# step, active or not, and a cap on splits per request (bounds the merge tile and the scratch; a
# long context at batch 1 reaches it).
DECODE_TARGET_PROGRAMS: int = _DECODE["split_policy"]["target_programs"]
DECODE_MAX_SPLITS: int = _DECODE["split_policy"]["max_splits"]


def decode_num_splits(batch: int, kv_heads: int, max_context: int, block_n: int, target: int | None = None,
                      max_splits: int | None = None) -> int:
    """Split programs per (request, kv head), from shapes only (CUDA-graph safe): enough to
    fill the GPU with a long context at small batch, no more than a max_context-long context
    has blocks. Shorter contexts use fewer of them (the others exit at once)."""
    target = target or (8 if INTERPRET else DECODE_TARGET_PROGRAMS)
    blocks = triton.cdiv(max(max_context, 1), block_n)
    return max(1, min(max_splits or DECODE_MAX_SPLITS, target // max(1, batch * kv_heads), blocks))


# splits the fused merge reads at a time: [8 heads, 8 splits, 128] float32 partials in registers
FUSED_MERGE_CHUNK = 8

# per-(request, kv head) split counters of the fused merge
_COUNTERS = LaunchCounters("decode_attention")


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

    seq_lens must not exceed req_to_slot.shape[1]; a request with seq_len 0 (a padding row)
    gets zeros. split_size (a power of two >= 16), for tests and tuning, overrides the policy:
    num_splits = cdiv(req_to_slot.shape[1], split_size), so no split is longer than it.
    """
    cfg = _decode_config(q.dtype)
    width = max(req_to_slot.shape[1], 1)
    if split_size:
        assert split_size >= 16 and split_size & (split_size - 1) == 0, "split_size: a power of two >= 16"
        cfg = cfg._replace(block_n=min(cfg.block_n, split_size))
        num_splits = triton.cdiv(width, split_size)
    else:
        num_splits = decode_num_splits(q.shape[0], k_pool.shape[1], width, cfg.block_n)
    return _decode_launch(q, k_pool, v_pool, req_to_slot, req_rows, seq_lens, scale, cfg, num_splits)


def _decode_launch(q, k_pool, v_pool, req_to_slot, req_rows, seq_lens, scale: float, cfg: DecodeConfig,
                   num_splits: int) -> torch.Tensor:
    """decode_attention with an explicit config and split count (bench/tune_decode.py sweeps them)."""
    batch, q_heads, head_dim = q.shape
    kv_heads = k_pool.shape[1]
    group = q_heads // kv_heads
    assert q_heads == group * kv_heads and head_dim & (head_dim - 1) == 0
    assert q.stride(-1) == 1 and k_pool.stride(-1) == 1 and v_pool.stride(-1) == 1
    assert req_to_slot.stride(-1) == 1
    assert num_splits <= 256, "split_size too small for this req_to_slot width (merge tile)"
    out = torch.empty_like(q)
    if batch == 0:
        return out
    fused = 1 < num_splits <= cfg.fused_merge_max
    splits_pad = triton.next_power_of_2(num_splits)
    # scratch for the partial results (unused when num_splits == 1)
    part_acc = torch.empty((batch, q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
    part_max = torch.empty((batch, q_heads, num_splits), dtype=torch.float32, device=q.device)
    part_sum = torch.empty_like(part_max)
    counters = _COUNTERS.get(q.device, batch * kv_heads) if fused else part_max
    _decode_split_kernel[(batch, kv_heads, num_splits)](
        q, k_pool, v_pool, out, req_to_slot, req_rows, seq_lens, part_acc, part_max, part_sum, counters,
        scale * _LOG2E, num_splits,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        out.stride(0), out.stride(1), req_to_slot.stride(0),
        # tl.dot needs at least 16 rows: a group of 6 or 7 pads to 16 (free: decode waits on memory)
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_N=cfg.block_n, DOT_F32=INTERPRET or q.dtype == torch.float32, PREFETCH=cfg.prefetch,
        FUSED_MERGE=fused, MERGE_G=triton.next_power_of_2(group), MERGE_CHUNK=min(splits_pad, FUSED_MERGE_CHUNK) if fused else 1,
        LATE_RELEASE=LATE_RELEASE,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch(),
    )
    if num_splits > 1 and not fused:  # every request fits one split otherwise: already written
        _decode_merge_kernel[(batch, q_heads)](
            part_acc, part_max, part_sum, out, seq_lens, out.stride(0), out.stride(1), num_splits,
            HEAD_DIM=head_dim, BLOCK_N=cfg.block_n, SPLITS_PAD=splits_pad, num_warps=4 if splits_pad <= 64 else 8,
            **pdl_launch(),
        )
    return out
