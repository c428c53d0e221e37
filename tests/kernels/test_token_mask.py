"""Triton token masks (packed int32 bitmasks applied to logits) vs apply_token_mask_ref, and the
reference against a brute-force reading of the bits."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from litelang.kernels.token_mask import apply_token_mask, apply_token_mask_ref, mask_words_for  # noqa: E402


def random_words(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, list[set[int]]]:
    """Packed words and, per row, the allowed token ids they encode (built bit by bit)."""
    g = torch.Generator().manual_seed(seed)
    allowed = [set(torch.nonzero(torch.rand(vocab, generator=g) < 0.3).flatten().tolist()) for _ in range(rows)]
    allowed[0] = set(range(vocab))  # an unconstrained row: every word all ones
    words = torch.zeros(rows, mask_words_for(vocab), dtype=torch.int64)
    for r, ids in enumerate(allowed):
        for t in ids:
            words[r, t // 32] |= 1 << (t % 32)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # as int32's bits
    if vocab % 32:  # bits past the vocabulary set too (xgrammar may set them): never written
        words[0, -1] = -1
    return words, allowed


def test_reference_reads_each_bit():
    vocab = 70
    words, allowed = random_words(3, vocab, seed=0)
    logits = torch.randn(3, vocab)
    out = apply_token_mask_ref(logits.clone(), words)
    for r in range(3):
        for t in range(vocab):
            assert (out[r, t] == float("-inf")) == (t not in allowed[r]), (r, t)
            if t in allowed[r]:
                assert out[r, t] == logits[r, t]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows,vocab", [(1, 32), (3, 70), (4, 5000)])  # one word; a ragged tail; several programs
def test_triton_matches_reference(device, dtype, rows, vocab):
    words, _ = random_words(rows, vocab, seed=vocab)
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = apply_token_mask_ref(logits.clone(), words)
    got = logits.to(device)
    assert apply_token_mask(got, words.to(device)) is got  # in place
    torch.testing.assert_close(got.cpu(), want, atol=0, rtol=0)


def test_rows_of_a_wider_buffer(device):
    """Logits and words as row slices of larger buffers (the CUDA graphs' static mask buffer)."""
    vocab = 100
    words, _ = random_words(6, vocab, seed=5)
    logits = torch.randn(6, vocab + 28)[:, :vocab]  # a row stride wider than the vocabulary
    want = apply_token_mask_ref(logits[2:5].clone(), words[2:5])
    got = logits.to(device)
    apply_token_mask(got[2:5], words.to(device)[2:5])
    torch.testing.assert_close(got[2:5].cpu(), want, atol=0, rtol=0)
    torch.testing.assert_close(got[:2].cpu(), logits[:2], atol=0, rtol=0)  # rows outside untouched
