"""Batch-invariant kernels: results against plain torch, and each row's bits against the same
row computed in other batches (alone, at other M, at another position, beside other rows).
On CPU the Triton kernels run in the interpreter; `-m gpu` repeats them at real shapes."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from litelang.kernels.attention import decode_attention_as_extend, decode_attention_ref, extend_attention  # noqa: E402
from litelang.kernels.batch_invariant import (  # noqa: E402
    GREEDY_CHUNKS,
    linear_invariant,
    linear_invariant_ref,
    token_logprobs_invariant,
)
from litelang.kernels.greedy import greedy_sample  # noqa: E402
from litelang.kernels.sampling import token_logprobs_ref  # noqa: E402
from helpers import make_pool  # noqa: E402


def rows_in_other_batches(fn, x: torch.Tensor, ms: list[int]) -> None:
    """fn(x[rows]) row by row equals fn(x) for prefixes of every size in ms, for one row alone,
    and for rows shifted to other positions beside other content."""
    full = fn(x)
    for m in ms:
        assert torch.equal(fn(x[:m]), full[:m]), f"rows of a batch of {m} differ from the same rows in {len(x)}"
    assert torch.equal(fn(x[5:6]), full[5:6]), "row 5 alone differs from row 5 in the batch"
    other = torch.cat([torch.randn_like(x[:3]), x[7:], x[:7]])  # new neighbours, every row moved
    assert torch.equal(fn(other)[3:], torch.cat([full[7:], full[:7]])), "rows moved beside others differ"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,k,bias", [(40, 48, True), (24, 100, False)])  # masked column and K tails
def test_linear_invariant_matches_torch_and_is_row_invariant(device, dtype, n, k, bias):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(37, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    out = linear_invariant(x, w, b)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, F.linear(x, w, b), atol=tol, rtol=tol)
    rows_in_other_batches(lambda t: linear_invariant(t, w, b), x, [1, 2, 16, 17, 33])


def test_linear_invariant_takes_row_strided_views(device):
    """The q||k||v output's q columns and logits_index gathers reach the projections as views."""
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(9, 80, generator=g).to(device)
    w = torch.randn(24, 48, generator=g).to(device)
    torch.testing.assert_close(linear_invariant(wide[:, :48], w), F.linear(wide[:, :48], w), atol=1e-5, rtol=1e-5)


def test_linear_invariant_ref_is_row_invariant():
    """The CPU reference: F.linear alone changes a row's bits with M (oneDNN picks its blocking
    by M); fixed 16-row calls do not."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(70, 96, generator=g), torch.randn(112, 96, generator=g)
    torch.testing.assert_close(linear_invariant_ref(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)
    rows_in_other_batches(lambda t: linear_invariant_ref(t, w), x, [1, 3, 16, 17, 40])


def test_greedy_fixed_chunks_is_row_invariant(device):
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(20, 3000, generator=g) * 4).to(device)
    rows_in_other_batches(lambda t: torch.stack(greedy_sample(t, chunks=GREEDY_CHUNKS)[1:], 1), logits, [1, 2, 7])
    tokens, _ = greedy_sample(logits, chunks=GREEDY_CHUNKS)
    assert torch.equal(tokens, logits.argmax(-1))


def test_token_logprobs_invariant(device):
    """Sampled tokens' logprobs (any token, not only the argmax), rows with -inf (suppressed) logits."""
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(12, 3000, generator=g) * 4).to(device)
    logits[3, :2000] = float("-inf")
    tokens = torch.randint(2000, 3000, (12,), generator=g).to(device)
    out = token_logprobs_invariant(logits, tokens)
    torch.testing.assert_close(out, token_logprobs_ref(logits, tokens), atol=1e-4, rtol=1e-5)
    for idx in ([5], [0, 1], [11, 3, 3, 0], list(range(7))):
        i = torch.tensor(idx, device=device)
        assert torch.equal(token_logprobs_invariant(logits[i], tokens[i]), out[i]), f"rows {idx} differ"


def test_decode_as_extend_equals_the_token_in_a_prompt(device):
    """Decode attention in this mode: each request's output equals, bit for bit, its last token
    attended inside a whole-prompt extend, and is the same alone and in other batches."""
    contexts = [150, 1, 97, 200, 33, 64, 120]
    k_pool, v_pool, r2s, rows = make_pool(device, torch.float32, 2, 16, contexts, seed=5)
    seq_lens = torch.tensor(contexts, device=device, dtype=torch.int32)
    q = torch.randn(len(contexts), 12, 16, generator=torch.Generator().manual_seed(6)).to(device)
    decode = decode_attention_as_extend

    def attend(idx: list[int]) -> torch.Tensor:
        i = torch.tensor(idx, device=device)
        return decode(q[i], k_pool, v_pool, r2s, rows[i], seq_lens[i], 0.25)

    full = attend(list(range(len(contexts))))
    torch.testing.assert_close(full, decode_attention_ref(q, k_pool, v_pool, r2s, rows, seq_lens, 0.25),
                               atol=2e-5, rtol=2e-5)
    for idx in ([0], [3], [3, 0], [6, 5, 4, 3, 2, 1, 0], [0, 0, 0, 3]):
        assert torch.equal(attend(idx), full[idx]), f"requests {idx} differ from the full batch"
    for b in (0, 3):  # the request's whole context as a prompt: its last row is the decode token
        n = contexts[b]
        prompt_q = torch.randn(n, 12, 16, generator=torch.Generator().manual_seed(b)).to(device)
        prompt_q[-1] = q[b]
        out = extend_attention(prompt_q, k_pool, v_pool, r2s, rows[b : b + 1],
                               torch.tensor([0, n], device=device, dtype=torch.int32),
                               torch.zeros(1, device=device, dtype=torch.int32), 0.25)
        assert torch.equal(out[-1], full[b]), f"request {b}: decode differs from its token in a prompt"


# --- GPU, real shapes ------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(2048, 1536), (1536, 1536), (17920, 1536), (1536, 8960), (151936, 1536)],
                         ids=["qkv", "o", "gate_up", "down", "lm_head"])
def test_linear_invariant_real_shapes(n, k):
    """Qwen2-1.5B's projections in bf16, from M = 1 to a prefill-sized M."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(600, k, generator=g).to("cuda", torch.bfloat16)
    w = (torch.randn(n, k, generator=g) / k**0.5).to("cuda", torch.bfloat16)
    out = linear_invariant(x, w)
    torch.testing.assert_close(out.float(), F.linear(x, w).float(), atol=2e-2, rtol=2e-2)
    rows_in_other_batches(lambda t: linear_invariant(t, w), x, [1, 2, 16, 17, 40, 48, 64, 65, 300])


def test_cpu_reference_set_samples_and_scores_each_row_as_alone():
    """deterministic mode on the CPU: a batch's tokens and logprobs, greedy or sampled, equal
    each row's computed alone. (torch's logsumexp over one [1, 151936] row splits it across
    threads, over a batch it does not: the plain references differ in the last bit on some rows.)"""
    from litelang.kernels.kernel_set import REFERENCE
    from litelang.kernels.batch_invariant import batch_invariant

    ks = batch_invariant(REFERENCE)
    g = torch.Generator().manual_seed(0)
    rows, vocab = 32, 151936
    logits = torch.randn(rows, vocab, generator=g) * 3
    tokens = torch.randint(0, vocab, (rows,), generator=g)
    per_row = (torch.full((rows,), 1.0), torch.zeros(rows, dtype=torch.long), torch.full((rows,), 0.9),
               torch.zeros(rows), torch.arange(rows, dtype=torch.long) + 100, torch.full((rows,), 7, dtype=torch.long))

    def alone(fn, *args):
        outs = [fn(*(a[i : i + 1] for a in args)) for i in range(rows)]
        return tuple(torch.cat(o) for o in zip(*outs)) if isinstance(outs[0], tuple) else torch.cat(outs)

    assert torch.equal(ks.token_logprobs(logits, tokens), alone(ks.token_logprobs, logits, tokens))
    assert torch.equal(ks.token_logprobs(logits, tokens), alone(token_logprobs_ref, logits, tokens))
    batch_greedy, alone_greedy = ks.greedy_sample(logits), alone(ks.greedy_sample, logits)
    assert all(torch.equal(a, b) for a, b in zip(batch_greedy, alone_greedy))
    assert torch.equal(ks.sample(logits, *per_row), alone(ks.sample, logits, *per_row))
