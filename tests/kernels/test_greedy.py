"""Triton greedy sampling (argmax + its log-softmax in one pass) vs greedy_sample_ref."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from litelang.kernels.greedy import greedy_sample, greedy_sample_ref  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch,vocab", [(1, 1000), (3, 257), (40, 130)])  # many chunks; masked tails; one chunk
def test_greedy_matches_reference(device, dtype, batch, vocab):
    logits = (torch.randn(batch, vocab, generator=torch.Generator().manual_seed(vocab)) * 5).to(device, dtype)
    tokens, logprobs = greedy_sample(logits)
    ref_tokens, ref_logprobs = greedy_sample_ref(logits)
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32
    torch.testing.assert_close(tokens, ref_tokens, atol=0, rtol=0)
    torch.testing.assert_close(logprobs, ref_logprobs, atol=1e-4, rtol=1e-4)


def test_greedy_ties_go_to_the_lowest_id_across_chunks(device):
    """The same maximum in several chunks and twice within one: the first occurrence wins."""
    logits = torch.zeros(2, 1000, device=device)
    logits[0, [700, 130, 131, 999]] = 3.0
    logits[1, [64, 65]] = 2.0
    tokens, logprobs = greedy_sample(logits)
    assert tokens.tolist() == [130, 64]
    torch.testing.assert_close(logprobs, greedy_sample_ref(logits)[1], atol=1e-5, rtol=1e-5)


def test_greedy_ignores_masked_tokens(device):
    """-inf logits (masked tokens) add nothing to the normalizer; a whole -inf chunk is skipped."""
    logits = torch.full((1, 600), float("-inf"), device=device)
    logits[0, 500:510] = torch.arange(10, dtype=torch.float32, device=device)
    tokens, logprobs = greedy_sample(logits)
    ref_tokens, ref_logprobs = greedy_sample_ref(logits)
    assert tokens.item() == ref_tokens.item() == 509
    torch.testing.assert_close(logprobs, ref_logprobs, atol=1e-5, rtol=1e-5)


def test_greedy_stores_each_token_as_its_rows_next_input(device):
    """With last_tokens and rows, the merge kernel also writes last_tokens[rows] = tokens (rows
    in any order; other rows untouched), as the reference does."""
    logits = torch.randn(3, 300, generator=torch.Generator().manual_seed(1)).to(device)
    rows = torch.tensor([4, 0, 2], device=device)
    last = torch.full((6,), -1, dtype=torch.long, device=device)
    ref_last = last.clone()
    tokens, _ = greedy_sample(logits, last, rows)
    ref_tokens, _ = greedy_sample_ref(logits, ref_last, rows)
    assert torch.equal(last, ref_last)
    assert last[rows].tolist() == ref_tokens.tolist() == tokens.tolist()
    assert last[[1, 3, 5]].tolist() == [-1, -1, -1]
