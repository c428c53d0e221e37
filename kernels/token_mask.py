"""Structured outputs' token masks applied to the logits, straight from the packed bitmask.

The engine sends each constrained row's allowed tokens as int32 words (bit j of word i allows
token 32 * i + j, xgrammar's layout). Unpacking them into a [rows, vocab] bool tensor first
would cost a pass of its own; here each program reads a block of words and writes -inf only
where a bit is clear, so a row whose words are all set (an unconstrained row) is never written.
"""

from __future__ import annotations

import torch

from litelang.kernels._triton import tl, triton

ALL_ALLOWED = -1  # an int32 word with every bit set


def mask_words_for(vocab: int) -> int:
    """int32 words of one row's mask."""
    return (vocab + 31) // 32


def apply_token_mask_ref(logits: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """In place: logits[r, t] = -inf where bit t % 32 of words[r, t // 32] is clear.
    logits [rows, vocab] (any float dtype), words [rows, ceil(vocab / 32)] int32. Returns logits."""
    rows, vocab = logits.shape
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    allowed = ((words[:, :, None] >> shifts) & 1).reshape(rows, -1)[:, :vocab].bool()
    return logits.masked_fill_(~allowed, float("-inf"))


@triton.jit
def _token_mask_kernel(Logits, Words, vocab, num_words, stride_logits, stride_words,
                       WORDS_PER_PROGRAM: tl.constexpr):
    """Program (row, block of words): -inf into the logits whose bits are clear."""
    r = tl.program_id(0)
    w = tl.program_id(1) * WORDS_PER_PROGRAM + tl.arange(0, WORDS_PER_PROGRAM)
    words = tl.load(Words + r.to(tl.int64) * stride_words + w, mask=w < num_words, other=-1)
    bit = tl.arange(0, 32)
    clear = ((words[:, None] >> bit[None, :]) & 1) == 0
    t = w[:, None] * 32 + bit[None, :]
    tl.store(Logits + r.to(tl.int64) * stride_logits + t, tl.full(t.shape, float("-inf"), tl.float32)
             .to(Logits.dtype.element_ty), mask=clear & (t < vocab))


def apply_token_mask(logits: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """apply_token_mask_ref as one Triton launch (no host sync; CUDA graphs capture it)."""
    rows, vocab = logits.shape
    if rows == 0:
        return logits
    assert logits.stride(-1) == 1 and words.stride(-1) == 1 and words.dtype == torch.int32
    num_words = words.shape[1]
    block = 128
    _token_mask_kernel[(rows, triton.cdiv(num_words, block))](
        logits, words, vocab, num_words, logits.stride(0), words.stride(0), WORDS_PER_PROGRAM=block,
    )
    return logits
