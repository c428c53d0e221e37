"""Triton extend (prefill with cached prefixes) and decode (flash-decoding) attention vs the
references, at small shapes: ragged batches, prefix offsets, GQA 7:1 / 6:1 / 1:1, shuffled pool
slots, contexts crossing several blocks and splits, every length up to the req->slot table's
width in one launch, float32 / float16 / bfloat16."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from helpers import make_pool  # noqa: E402
from litelang.kernels import attention  # noqa: E402
from litelang.kernels.attention import (  # noqa: E402
    decode_attention,
    decode_attention_ref,
    extend_attention,
    extend_attention_ref,
)

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (q_heads, kv_heads, head_dim): GQA 7:1 and 6:1, and plain multi-head
HEADS = [(7, 1, 16), (12, 2, 32), (2, 2, 16)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", HEADS)
def test_decode_matches_reference(device, dtype, q_heads, kv_heads, head_dim):
    # length 1 next to long contexts; 200 tokens cross 7 splits of 32 (each 2 blocks of 16)
    seq_lens = torch.tensor([1, 97, 33, 200, 16], device=device, dtype=torch.int32)
    k_pool, v_pool, r2s, rows = make_pool(device, dtype, kv_heads, head_dim, seq_lens.tolist())
    q = torch.randn(len(seq_lens), q_heads, head_dim, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    scale = head_dim**-0.5
    out = decode_attention(q, k_pool, v_pool, r2s, rows, seq_lens, scale, split_size=32)
    ref = decode_attention_ref(q, k_pool, v_pool, r2s, rows, seq_lens, scale)
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("split_size", [None, 16, 64, 256])
def test_decode_split_size_does_not_matter(device, split_size):
    """The log-sum-exp merge makes the split only a performance choice (None: the shape policy)."""
    seq_lens = torch.tensor([200, 1, 129], device=device, dtype=torch.int32)
    k_pool, v_pool, r2s, rows = make_pool(device, torch.float32, 2, 16, seq_lens.tolist(), seed=3)
    q = torch.randn(3, 12, 16, generator=torch.Generator().manual_seed(4)).to(device)
    out = decode_attention(q, k_pool, v_pool, r2s, rows, seq_lens, 0.25, split_size=split_size)
    ref = decode_attention_ref(q, k_pool, v_pool, r2s, rows, seq_lens, 0.25)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_decode_empty_context_gives_zeros(device):
    """Padding rows of a CUDA-graph bucket may carry seq_len 0: no NaN, no effect on other rows."""
    seq_lens = torch.tensor([0, 40], device=device, dtype=torch.int32)
    k_pool, v_pool, r2s, rows = make_pool(device, torch.float32, 1, 16, [0, 40], seed=5)
    q = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(6)).to(device)
    out = decode_attention(q, k_pool, v_pool, r2s, rows, seq_lens, 0.25, split_size=16)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    ref = decode_attention_ref(q[1:], k_pool, v_pool, r2s, rows[1:], seq_lens[1:], 0.25)
    torch.testing.assert_close(out[1:], ref, atol=2e-5, rtol=2e-5)


# every boundary: empty (padding row), one token, block edges, the full req_to_slot width (256)
ANY_LENGTHS = [0, 1, 15, 16, 17, 63, 64, 65, 128, 200, 255, 256]


@pytest.mark.parametrize("split_size", [None, 16, 64, 256])
def test_decode_any_length_up_to_table_width(device, split_size):
    """The grid depends on shapes only, so one launch must handle every seq_len from 0 to the
    table width: single-split requests written directly next to merged ones."""
    seq_lens = torch.tensor(ANY_LENGTHS, device=device, dtype=torch.int32)
    k_pool, v_pool, r2s, rows = make_pool(device, torch.float32, 1, 16, ANY_LENGTHS, seed=11)
    q = torch.randn(len(ANY_LENGTHS), 6, 16, generator=torch.Generator().manual_seed(12)).to(device)
    out = decode_attention(q, k_pool, v_pool, r2s, rows, seq_lens, 0.25, split_size=split_size)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    ref = decode_attention_ref(q[1:], k_pool, v_pool, r2s, rows[1:], seq_lens[1:], 0.25)
    torch.testing.assert_close(out[1:], ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_single_split_writes_output_without_merge(device, dtype, monkeypatch):
    """split_size >= the table width: one split per request, normalized by the split kernel;
    the merge kernel is not launched."""

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the merge kernel must not be launched")

    monkeypatch.setattr(attention, "_decode_merge_kernel", NoLaunch())
    seq_lens = torch.tensor([0, 1, 100, 256, 33], device=device, dtype=torch.int32)
    k_pool, v_pool, r2s, rows = make_pool(device, dtype, 2, 32, seq_lens.tolist(), seed=13)
    q = torch.randn(5, 12, 32, generator=torch.Generator().manual_seed(14)).to(device, dtype)
    out = decode_attention(q, k_pool, v_pool, r2s, rows, seq_lens, 32**-0.5, split_size=256)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    ref = decode_attention_ref(q[1:], k_pool, v_pool, r2s, rows[1:], seq_lens[1:], 32**-0.5)
    torch.testing.assert_close(out[1:], ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_decode_num_splits_policy(monkeypatch):
    """The GPU policy: a batch-1 long table spreads over many programs, large batches and short
    tables over few; never more splits than the table has blocks."""
    monkeypatch.setattr(attention, "INTERPRET", False)
    assert attention.decode_num_splits(1, 2, 32768, 64) == attention.DECODE_MAX_SPLITS
    assert attention.decode_num_splits(40, 2, 32768, 64) == attention.DECODE_TARGET_PROGRAMS // 80
    assert attention.decode_num_splits(40, 2, 128, 64) == 2  # 128 / 64 blocks
    assert attention.decode_num_splits(1, 2, 64, 64) == 1  # one block: no merge
    assert attention.decode_num_splits(4096, 2, 32768, 64) == 1


@pytest.mark.parametrize("prefetch,num_splits", [(True, 8), (False, 8), (True, 20)],
                         ids=["prefetch", "no-prefetch", "chunks"])
def test_decode_fused_merge_equals_merge_launch(device, monkeypatch, prefetch, num_splits):
    """Up to fused_merge_max splits, the last split program of each (request, kv head) merges:
    no merge launch, the same result as the merge launch, and its counters are back at zero
    for the next launch (run twice). With and without the slot prefetch; 20 splits: the merge
    reads the partials in several chunks (FUSED_MERGE_CHUNK)."""
    lens = [0, 1, 16, 17, 100, 255, 256, 64]
    k_pool, v_pool, r2s, rows = make_pool(device, torch.float32, 2, 16, lens, seed=21)
    seq_lens = torch.tensor(lens, device=device, dtype=torch.int32)
    q = torch.randn(len(lens), 12, 16, generator=torch.Generator().manual_seed(22)).to(device)
    args = (q, k_pool, v_pool, r2s, rows, seq_lens, 0.25)
    cfg = attention._decode_config(torch.float32)._replace(prefetch=prefetch)
    launched = attention._decode_launch(*args, cfg._replace(fused_merge_max=0), num_splits)  # a merge launch

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the merge kernel must not be launched")

    monkeypatch.setattr(attention, "_decode_merge_kernel", NoLaunch())
    for _ in range(2):
        fused = attention._decode_launch(*args, cfg._replace(fused_merge_max=num_splits), num_splits)
        torch.testing.assert_close(fused, launched, atol=1e-5, rtol=1e-5)  # the sums' order may differ
        assert not attention._COUNTERS[q.device].any()
    ref = decode_attention_ref(q, k_pool, v_pool, r2s, rows, seq_lens, 0.25)
    torch.testing.assert_close(fused, ref, atol=2e-5, rtol=2e-5)


def extend_inputs(device, dtype, q_heads, kv_heads, head_dim, new_lens, prefix_lens, seed=0):
    contexts = [p + n for p, n in zip(prefix_lens, new_lens)]
    k_pool, v_pool, r2s, rows = make_pool(device, dtype, kv_heads, head_dim, contexts, seed=seed)
    cu = torch.zeros(len(new_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(new_lens).cumsum(0)
    q = torch.randn(int(cu[-1]), q_heads, head_dim, generator=torch.Generator().manual_seed(seed + 1))
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    return q.to(device, dtype), k_pool, v_pool, r2s, rows, cu.to(device), prefix.to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", HEADS)
def test_extend_matches_reference(device, dtype, q_heads, kv_heads, head_dim):
    # ragged: a fresh prompt, a prefix-cache hit (prefix not a multiple of the block), one new
    # token after a long prefix, an empty request, a longer prompt crossing several blocks
    new_lens, prefix_lens = [5, 17, 1, 0, 40], [0, 23, 60, 7, 3]
    args = extend_inputs(device, dtype, q_heads, kv_heads, head_dim, new_lens, prefix_lens)
    scale = head_dim**-0.5
    out = extend_attention(*args, scale, max_new_len=max(new_lens))
    ref = extend_attention_ref(*args, scale)
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_extend_without_max_new_len(device):
    """max_new_len=None reads it from cu_seqlens_q (one host sync) and gives the same result."""
    args = extend_inputs(device, torch.float32, 6, 1, 16, [3, 33], [17, 0], seed=7)
    out = extend_attention(*args, 0.25)
    torch.testing.assert_close(out, extend_attention(*args, 0.25, max_new_len=33))
    torch.testing.assert_close(out, extend_attention_ref(*args, 0.25), atol=2e-5, rtol=2e-5)


def test_extend_last_token_equals_decode(device):
    """The last new token of an extend sees the same context as a decode step at that length."""
    q, k_pool, v_pool, r2s, rows, cu, prefix = extend_inputs(device, torch.float32, 7, 1, 16, [9, 4], [30, 50], seed=9)
    out = extend_attention(q, k_pool, v_pool, r2s, rows, cu, prefix, 0.25, max_new_len=9)
    last = cu[1:].long() - 1
    seq_lens = (prefix + cu[1:] - cu[:-1]).to(torch.int32)
    dec = decode_attention(q[last], k_pool, v_pool, r2s, rows, seq_lens, 0.25, split_size=16)
    torch.testing.assert_close(out[last], dec, atol=2e-5, rtol=2e-5)
