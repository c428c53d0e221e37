"""Greedy sampling with the chosen token's log-probability, in one pass over the logits.

torch needs a float32 copy of the [batch, vocab] logits, an argmax and a logsumexp (several
passes over 600 KB per row); here each row is split into chunks, each program keeps a running
max, its first index and the sum of exponentials, and a second tiny kernel merges the chunks.
"""

from __future__ import annotations

import torch

from litelang.kernels._triton import INTERPRET, pdl_launch, pdl_start, tl, triton
from litelang.kernels.sampling import token_logprobs_ref

# programs the chunk kernel aims for (batch x chunks, at most 128 chunks a row): enough to fill the
# GPU at batch 1, one chunk per row at large batches (bench/sweep_decode.py varies both)
TARGET_PROGRAMS = 512
BLOCK = 2048  # logits per program per loop step


def greedy_sample_ref(logits: torch.Tensor, last_tokens: torch.Tensor | None = None,
                      rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [batch, vocab] (any float dtype) -> (argmax token [batch] int64, its log-softmax
    [batch] float32). Ties go to the lowest token id. With last_tokens and rows [batch], also
    last_tokens[rows] = tokens (each request's next decode input)."""
    x = logits.float()
    tokens = x.argmax(dim=-1)
    if last_tokens is not None:
        last_tokens[rows.long()] = tokens
    return tokens, token_logprobs_ref(x, tokens)


def logprobs_from_argmax(logits: torch.Tensor, tokens: torch.Tensor, best: torch.Tensor,
                         best_logprob: torch.Tensor) -> torch.Tensor:
    """Each row's log-softmax at tokens from a greedy pass's (argmax, its log-softmax):
    logprob(t) = (x_t - x_best) + logprob(best), with no second reduction over the vocabulary."""
    at = lambda ids: logits.gather(1, ids[:, None])[:, 0].float()  # noqa: E731
    return (at(tokens) - at(best)) + best_logprob


# --- Triton ----------------------------------------------------------------------------------


@triton.jit
def _greedy_chunk_kernel(
    Logits, PartMax, PartIdx, PartSum, vocab, stride_b, chunk, num_chunks,
    BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    """Program (row, chunk): max, first argmax and sum of exp(x - max) over one chunk."""
    pdl_start(PDL)  # before any memory access: see kernels/_triton.py
    b = tl.program_id(0)
    c = tl.program_id(1)
    start = c * chunk
    end = tl.minimum(start + chunk, vocab)
    row = Logits + b.to(tl.int64) * stride_b
    m = float("-inf")
    idx = 0
    s = 0.0
    for n0 in range(start, end, BLOCK):
        n = n0 + tl.arange(0, BLOCK)
        x = tl.load(row + n, mask=n < end, other=float("-inf")).to(tl.float32)
        tile_max = tl.max(x, axis=0)
        tile_idx = tl.min(tl.where(x == tile_max, n, 2147483647), axis=0)
        new_m = tl.maximum(m, tile_max)
        idx = tl.where(tile_max > m, tile_idx, idx)  # strict: an earlier tile wins a tie
        shift = tl.where(new_m > float("-inf"), new_m, 0.0)  # all -inf so far: no -inf - -inf
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = new_m
    part = b * num_chunks + c
    tl.store(PartMax + part, m)
    tl.store(PartIdx + part, idx)
    tl.store(PartSum + part, s)


@triton.jit
def _greedy_merge_kernel(PartMax, PartIdx, PartSum, Tokens, Logprobs, LastTokens, Rows, num_chunks,
                         CHUNKS_PAD: tl.constexpr, STORE_LAST: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    b = tl.program_id(0)
    c = tl.arange(0, CHUNKS_PAD)
    valid = c < num_chunks
    m_c = tl.load(PartMax + b * num_chunks + c, mask=valid, other=float("-inf"))
    idx_c = tl.load(PartIdx + b * num_chunks + c, mask=valid, other=2147483647)
    s_c = tl.load(PartSum + b * num_chunks + c, mask=valid, other=0.0)
    m = tl.max(m_c, axis=0)
    idx = tl.min(tl.where(m_c == m, idx_c, 2147483647), axis=0)  # chunks are in token order
    total = tl.sum(tl.where(valid & (m_c > float("-inf")), s_c * tl.exp(m_c - m), 0.0), axis=0)
    tl.store(Tokens + b, idx.to(tl.int64))
    tl.store(Logprobs + b, -tl.log(total))  # log-softmax of the max: m - (m + log total)
    if STORE_LAST:
        tl.store(LastTokens + tl.load(Rows + b).to(tl.int64), idx.to(LastTokens.dtype.element_ty))


def greedy_sample(logits: torch.Tensor, last_tokens: torch.Tensor | None = None,
                  rows: torch.Tensor | None = None, chunks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of greedy_sample_ref (the last_tokens store in the merge kernel, no extra
    launch); no host sync, CUDA-graph capturable. chunks: vocabulary chunks per row (default: by
    batch size, to fill the GPU); fixed, a row's log-sum-exp does not depend on the batch."""
    batch, vocab = logits.shape
    assert logits.stride(-1) == 1
    tokens = torch.empty(batch, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(batch, dtype=torch.float32, device=logits.device)
    if batch == 0:
        return tokens, logprobs
    block = 64 if INTERPRET else BLOCK
    chunks = max(1, min(128, chunks or TARGET_PROGRAMS // batch, triton.cdiv(vocab, block)))
    chunk = triton.cdiv(triton.cdiv(vocab, chunks), block) * block
    chunks = triton.cdiv(vocab, chunk)
    part_max = torch.empty((batch, chunks), dtype=torch.float32, device=logits.device)
    part_idx = torch.empty((batch, chunks), dtype=torch.int32, device=logits.device)
    part_sum = torch.empty_like(part_max)
    _greedy_chunk_kernel[(batch, chunks)](
        logits, part_max, part_idx, part_sum, vocab, logits.stride(0), chunk, chunks, BLOCK=block,
        num_warps=max(1, min(8, block // 256)),
        **pdl_launch(),
    )
    _greedy_merge_kernel[(batch,)](
        part_max, part_idx, part_sum, tokens, logprobs,
        last_tokens if last_tokens is not None else tokens, rows if rows is not None else tokens, chunks,
        CHUNKS_PAD=max(16, triton.next_power_of_2(chunks)), STORE_LAST=last_tokens is not None, num_warps=1,
        **pdl_launch(),
    )
    return tokens, logprobs
