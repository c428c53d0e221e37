"""Kernels at real shapes on a CUDA GPU (run with `pytest -m gpu kernels`).

Qwen2 shapes: head_dim 128 (1.5B / 7B) and 64 (0.5B), GQA 6:1 and 7:1, bfloat16, contexts to
32k, batches 1 to 256, and a batch mixing length 1 with 32k. Where the torch reference would be
slow, a subset of the batch is compared (every request is computed independently) or a chunked
float32 reference stands in. Also: no host sync in the decode path, and CUDA-graph replay equals
eager execution.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from litelang.kernels.activation import silu_and_mul, silu_and_mul_ref
from litelang.kernels.attention import decode_attention, decode_attention_ref, extend_attention
from litelang.kernels.kv_store import store_kv, store_kv_ref
from litelang.kernels.rmsnorm import rms_norm, rms_norm_ref
from litelang.kernels.rope import apply_rope, apply_rope_ref, rope_cos_sin_cache
from litelang.kernels.rope_store import apply_rope_and_store_kv, apply_rope_and_store_kv_ref
from litelang.kernels.sampling import apply_penalties, apply_penalties_ref, sample, sample_ref
from litelang.kernels.token_mask import apply_token_mask, apply_token_mask_ref, mask_words_for

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"
BF16 = torch.bfloat16
MAX_CONTEXT = 32768
VOCAB = 151936
# bfloat16 attention (probabilities rounded to bf16 before P @ V) vs a float32 reference
ATTN_TOL = dict(atol=1.5e-2, rtol=2e-2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def make_pool(seq_lens: list[int], kv_heads: int, head_dim: int, dtype=BF16, max_context=MAX_CONTEXT, seed=0,
              num_slots: int | None = None):
    """KV pool holding every request's context on shuffled slots. Entries of req_to_slot past a
    request's length point at valid slots too, so reading past the end gives wrong numbers, not
    a crash. Request b lives in row req_rows[b] of a table with spare rows."""
    g = gen(seed)
    num_slots = num_slots or sum(seq_lens) + 1024
    k_pool = torch.randn(num_slots, kv_heads, head_dim, device=DEV, generator=g).to(dtype)
    v_pool = torch.randn(num_slots, kv_heads, head_dim, device=DEV, generator=g).to(dtype)
    perm = torch.randperm(num_slots, device=DEV, generator=g).to(torch.int32)
    rows = len(seq_lens) + 4
    req_to_slot = torch.randint(0, num_slots, (rows, max_context), device=DEV, generator=g, dtype=torch.int32)
    req_rows = torch.randperm(rows, device=DEV, generator=g)[: len(seq_lens)].to(torch.int32)
    start = 0
    for row, n in zip(req_rows.tolist(), seq_lens):
        req_to_slot[row, :n] = perm[start : start + n]
        start += n
    return k_pool, v_pool, req_to_slot, req_rows


def chunked_extend_ref(q, k_pool, v_pool, req_to_slot, req_rows, cu, prefix, scale, chunk=512):
    """extend_attention_ref computed in query chunks (the full reference materializes the whole
    [new, context] mask and scores, too big at 32k)."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_pool.shape[1]
    cu_l, prefix_l, rows_l = cu.tolist(), prefix.tolist(), req_rows.tolist()
    for b in range(len(rows_l)):
        n = cu_l[b + 1] - cu_l[b]
        total = prefix_l[b] + n
        slots = req_to_slot[rows_l[b], :total].long()
        k = k_pool[slots].float().repeat_interleave(group, dim=1).transpose(0, 1)
        v = v_pool[slots].float().repeat_interleave(group, dim=1).transpose(0, 1)
        for i0 in range(0, n, chunk):
            i1 = min(i0 + chunk, n)
            qc = q[cu_l[b] + i0 : cu_l[b] + i1].float().transpose(0, 1)
            pos = prefix_l[b] + torch.arange(i0, i1, device=DEV)
            mask = torch.arange(total, device=DEV)[None, :] <= pos[:, None]
            o = F.scaled_dot_product_attention(qc, k, v, attn_mask=mask, scale=scale)
            out[cu_l[b] + i0 : cu_l[b] + i1] = o.transpose(0, 1).to(q.dtype)
    return out


DECODE_BATCHES = {
    "b1-32k": [32768],
    "b64-4k": "random:64:4096",
    "b256-2k": "random:256:2048",
    "mixed-1-32k": [1, 32768, 1, 5, 32768, 1000, 1, 16385],
}


def batch_lens(spec, seed: int) -> list[int]:
    if isinstance(spec, list):
        return spec
    _, batch, longest = spec.split(":")
    return torch.randint(1, int(longest) + 1, (int(batch),), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("batch_name", list(DECODE_BATCHES))
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(12, 2, 128), (14, 2, 128), (14, 2, 64), (28, 4, 128)])
def test_decode_real_shapes(batch_name, q_heads, kv_heads, head_dim):
    lens = batch_lens(DECODE_BATCHES[batch_name], seed=head_dim)
    k_pool, v_pool, r2s, rows = make_pool(lens, kv_heads, head_dim, seed=q_heads)
    seq_lens = torch.tensor(lens, device=DEV, dtype=torch.int32)
    q = torch.randn(len(lens), q_heads, head_dim, device=DEV, generator=gen(1)).to(BF16)
    scale = head_dim**-0.5
    out = decode_attention(q, k_pool, v_pool, r2s, rows, seq_lens, scale)
    # each request is independent: check the shortest, the longest and a few others
    order = sorted(range(len(lens)), key=lambda i: lens[i])
    idx = torch.tensor(sorted(set(order[:2] + order[-2:] + list(range(0, len(lens), max(1, len(lens) // 6))))), device=DEV)
    ref = decode_attention_ref(q[idx], k_pool, v_pool, r2s, rows[idx], seq_lens[idx], scale)
    torch.testing.assert_close(out[idx], ref, **ATTN_TOL)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_decode_other_dtypes(dtype):
    lens = [1, 3000, 17, 9000]
    k_pool, v_pool, r2s, rows = make_pool(lens, 2, 128, dtype=dtype, seed=3)
    seq_lens = torch.tensor(lens, device=DEV, dtype=torch.int32)
    q = torch.randn(4, 12, 128, device=DEV, generator=gen(2)).to(dtype)
    out = decode_attention(q, k_pool, v_pool, r2s, rows, seq_lens, 128**-0.5)
    ref = decode_attention_ref(q, k_pool, v_pool, r2s, rows, seq_lens, 128**-0.5)
    tol = 1e-4 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


SMALL_BATCH_DECODE = {
    # name: (context lengths, req_to_slot width); "b40" = 40 requests of 600..1200 tokens
    "b1-1-w32k": ([1], 32768),
    "b1-64-w2048": ([64], 2048),
    "b1-65-w32k": ([65], 32768),
    "b1-300-w32k": ([300], 32768),
    "b40-w2048": ("b40", 2048),
    "b40-w32k": ("b40", 32768),
    "b3-full-width": ([2048, 2047, 1], 2048),
}


@pytest.mark.parametrize("name", list(SMALL_BATCH_DECODE))
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(12, 2, 128), (14, 2, 64)])
def test_decode_small_batch_short_context(name, q_heads, kv_heads, head_dim):
    """The shapes the split policy targets, with the policy's splits and with one split per
    request (the split kernel normalizes and writes; no merge launch)."""
    lens, width = SMALL_BATCH_DECODE[name]
    if lens == "b40":
        lens = torch.randint(600, 1201, (40,), generator=torch.Generator().manual_seed(width)).tolist()
    k_pool, v_pool, r2s, rows = make_pool(lens, kv_heads, head_dim, max_context=width, seed=head_dim)
    seq_lens = torch.tensor(lens, device=DEV, dtype=torch.int32)
    q = torch.randn(len(lens), q_heads, head_dim, device=DEV, generator=gen(3)).to(BF16)
    scale = head_dim**-0.5
    ref = decode_attention_ref(q, k_pool, v_pool, r2s, rows, seq_lens, scale)
    for split_size in (None, width):
        out = decode_attention(q, k_pool, v_pool, r2s, rows, seq_lens, scale, split_size=split_size)
        torch.testing.assert_close(out, ref, **ATTN_TOL)


def _capture_decode(args) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """decode_attention(*args) captured in a CUDA graph (after one eager call on a side stream,
    which compiles and allocates the counters), and the graph's output tensor."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_attention(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(*args)
    return graph, out


def test_cuda_graph_decode_any_length():
    """One captured decode (batch 4, table width 32k) replayed with contexts from 0 (a padding
    row: zeros) to the full width: the replay equals eager and the reference."""
    width, batch = 32768, 4
    k_pool, v_pool, r2s, rows = make_pool([width] * batch, 2, 128, max_context=width, seed=40)
    seq_lens = torch.zeros(batch, device=DEV, dtype=torch.int32)
    q = torch.zeros(batch, 12, 128, device=DEV, dtype=BF16)
    args = (q, k_pool, v_pool, r2s, rows, seq_lens, 128**-0.5)
    graph, out = _capture_decode(args)
    for i, lens in enumerate([[0, 1, 64, 300], [32768, 65, 0, 1200], [5, 32767, 2048, 1]]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        q.copy_(torch.randn(batch, 12, 128, device=DEV, generator=gen(41 + i)))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, decode_attention(*args), atol=0, rtol=0)
        live = torch.tensor([n > 0 for n in lens], device=DEV)
        assert torch.equal(out[~live], torch.zeros_like(out[~live]))
        ref = decode_attention_ref(q[live], k_pool, v_pool, r2s, rows[live], seq_lens[live], 128**-0.5)
        torch.testing.assert_close(out[live], ref, **ATTN_TOL)


def test_cuda_graph_decode_fused_merge():
    """Batch 40 on a 2048-wide table: a few splits, merged by the last split program to finish
    (counters, no merge launch). Replays with new lengths (0 to the full width) equal eager, the
    reference, and leave the counters at zero."""
    from litelang.kernels import attention

    width, batch = 2048, 40
    assert 1 < attention.decode_num_splits(batch, 2, width, 64) <= attention._decode_config(BF16).fused_merge_max
    k_pool, v_pool, r2s, rows = make_pool([width] * batch, 2, 128, max_context=width, seed=50)
    seq_lens = torch.zeros(batch, device=DEV, dtype=torch.int32)
    q = torch.zeros(batch, 12, 128, device=DEV, dtype=BF16)
    args = (q, k_pool, v_pool, r2s, rows, seq_lens, 128**-0.5)
    graph, out = _capture_decode(args)
    for i in range(3):
        lens = torch.randint(600, 1201, (batch,), generator=torch.Generator().manual_seed(51 + i))
        lens[:4] = torch.tensor([0, 1, width, width - 1])
        seq_lens.copy_(lens.to(torch.int32))
        q.copy_(torch.randn(batch, 12, 128, device=DEV, generator=gen(51 + i)))
        for _ in range(2):
            graph.replay()
        torch.cuda.synchronize()
        assert not attention._COUNTERS[q.device].any()
        torch.testing.assert_close(out, decode_attention(*args), atol=0, rtol=0)
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        idx = torch.tensor([1, 2, 3, 4, 17, 39], device=DEV)
        ref = decode_attention_ref(q[idx], k_pool, v_pool, r2s, rows[idx], seq_lens[idx], 128**-0.5)
        torch.testing.assert_close(out[idx], ref, **ATTN_TOL)


EXTEND_CASES = {
    # name: (new tokens per request, cached prefix per request)
    "prefill-8k": ([8192], [0]),
    "ragged-prefix-32k": ([2048, 1, 700, 4000, 0, 129], [30000, 32000, 0, 5000, 77, 16000]),
    "many-short": ([37] * 40 + [600] * 8, [0] * 20 + [300] * 20 + [0] * 8),
}


@pytest.mark.parametrize("case", list(EXTEND_CASES))
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(12, 2, 128), (14, 2, 64)])
def test_extend_real_shapes(case, q_heads, kv_heads, head_dim):
    new_lens, prefix_lens = EXTEND_CASES[case]
    contexts = [p + n for p, n in zip(prefix_lens, new_lens)]
    k_pool, v_pool, r2s, rows = make_pool(contexts, kv_heads, head_dim, seed=5)
    cu = torch.zeros(len(new_lens) + 1, device=DEV, dtype=torch.int32)
    cu[1:] = torch.tensor(new_lens, device=DEV).cumsum(0)
    prefix = torch.tensor(prefix_lens, device=DEV, dtype=torch.int32)
    q = torch.randn(sum(new_lens), q_heads, head_dim, device=DEV, generator=gen(6)).to(BF16)
    scale = head_dim**-0.5
    out = extend_attention(q, k_pool, v_pool, r2s, rows, cu, prefix, scale, max_new_len=max(new_lens))
    ref = chunked_extend_ref(q, k_pool, v_pool, r2s, rows, cu, prefix, scale)
    torch.testing.assert_close(out, ref, **ATTN_TOL)


@pytest.mark.parametrize("hidden", [896, 1536, 3584])
def test_rms_norm_real_shapes(hidden):
    x = torch.randn(4096, hidden, device=DEV, generator=gen(7)).to(BF16)
    res = torch.randn(4096, hidden, device=DEV, generator=gen(8)).to(BF16)
    w = (1 + 0.1 * torch.randn(hidden, device=DEV, generator=gen(9))).to(BF16)
    out, new_res = rms_norm(x, w, 1e-6, res)
    ref_out, ref_res = rms_norm_ref(x, w, 1e-6, res)
    assert torch.equal(new_res, ref_res)  # the add rounds the same way
    torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=1.6e-2)  # at most a bf16 ulp or so


@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(12, 2, 128), (14, 2, 64)])
def test_rope_real_shapes(q_heads, kv_heads, head_dim):
    tokens = 4096
    cos_sin = rope_cos_sin_cache(head_dim, MAX_CONTEXT, 1e6, device=DEV)
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, device=DEV, generator=gen(10)).to(BF16)
    q = qkv[:, : q_heads * head_dim].view(tokens, q_heads, head_dim)
    k = qkv[:, q_heads * head_dim : (q_heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    positions = torch.randint(0, MAX_CONTEXT, (tokens,), device=DEV, generator=gen(11))
    q_ref, k_ref = q.clone(), k.clone()
    apply_rope_ref(q_ref, k_ref, positions, cos_sin)
    apply_rope(q, k, positions, cos_sin)
    torch.testing.assert_close(q, q_ref, atol=2e-2, rtol=1.6e-2)
    torch.testing.assert_close(k, k_ref, atol=2e-2, rtol=1.6e-2)


@pytest.mark.parametrize("tokens", [1, 64, 4096])
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(12, 2, 128), (14, 2, 64), (28, 4, 128)])
def test_rope_and_store_kv_real_shapes(tokens, q_heads, kv_heads, head_dim):
    """The fused kernel equals apply_rope + store_kv: q in place, rotated k and v in the pool."""
    cos_sin = rope_cos_sin_cache(head_dim, MAX_CONTEXT, 1e6, device=DEV)
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, device=DEV, generator=gen(16)).to(BF16)
    q, k, v = qkv.view(tokens, q_heads + 2 * kv_heads, head_dim).split([q_heads, kv_heads, kv_heads], dim=1)
    positions = torch.randint(0, MAX_CONTEXT, (tokens,), device=DEV, generator=gen(17))
    k_pool = torch.zeros(1 << 18, kv_heads, head_dim, device=DEV, dtype=BF16)
    v_pool = torch.zeros_like(k_pool)
    slots = torch.randperm(1 << 18, device=DEV, generator=gen(18))[:tokens]
    q_ref, k_ref, v_ref, k_pool_ref, v_pool_ref = q.clone(), k.clone(), v.clone(), k_pool.clone(), v_pool.clone()
    apply_rope_and_store_kv_ref(q_ref, k_ref, v_ref, positions, cos_sin, k_pool_ref, v_pool_ref, slots)
    apply_rope_and_store_kv(q, k, v, positions, cos_sin, k_pool, v_pool, slots)
    torch.testing.assert_close(q, q_ref, atol=2e-2, rtol=1.6e-2)
    torch.testing.assert_close(k_pool, k_pool_ref, atol=2e-2, rtol=1.6e-2)
    assert torch.equal(v_pool, v_pool_ref)
    # the same float32 math as the reference: bf16 results differ by the odd rounding at most
    assert (k_pool[slots] != k_pool_ref[slots]).float().mean() < 0.01


def test_silu_and_mul_and_store_kv_real_shapes():
    x = torch.randn(4096, 2 * 8960, device=DEV, generator=gen(12)).to(BF16)
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), atol=2e-2, rtol=1.6e-2)
    k_pool = torch.zeros(1 << 20, 2, 128, device=DEV, dtype=BF16)
    v_pool = torch.zeros_like(k_pool)
    kv = torch.randn(8192, 2, 2, 128, device=DEV, generator=gen(13)).to(BF16)
    slots = torch.randperm(1 << 20, device=DEV, generator=gen(14))[:8192]
    k_ref, v_ref = k_pool.clone(), v_pool.clone()
    store_kv_ref(k_ref, v_ref, kv[:, 0], kv[:, 1], slots)
    store_kv(k_pool, v_pool, kv[:, 0], kv[:, 1], slots)
    assert torch.equal(k_pool, k_ref) and torch.equal(v_pool, v_ref)


def sampling_batch(batch: int, seed: int = 0):
    """bf16-valued logits (many ties, like a bf16 lm_head) and every kind of sampling row."""
    g = gen(seed)
    logits = (torch.randn(batch, VOCAB, device=DEV, generator=g) * 4).to(BF16).float()
    kind = torch.arange(batch, device=DEV) % 8
    temperature = torch.where(kind == 0, 0.0, 0.3 + 1.5 * torch.rand(batch, device=DEV, generator=g))
    top_k = torch.where(kind == 2, 40, torch.where(kind == 5, 1, torch.where(kind == 6, 1000, 0)))
    top_p = torch.where((kind == 3) | (kind == 6), 0.9, torch.where(kind == 7, 0.5, 1.0))
    min_p = torch.where(kind == 4, 0.05, torch.where(kind == 7, 0.01, 0.0))
    seeds = torch.randint(-(2**62), 2**62, (batch,), device=DEV, generator=g)
    positions = torch.randint(0, 40000, (batch,), device=DEV, generator=g)
    return logits, temperature, top_k, top_p, min_p, seeds, positions


@pytest.mark.parametrize("batch", [1, 37, 256])
def test_sample_real_vocab_matches_reference(batch):
    args = sampling_batch(batch, seed=batch)
    for step in range(3):
        positions = args[-1] + step
        got = sample(*args[:-1], positions)
        assert torch.equal(got, sample_ref(*args[:-1], positions))


def test_sample_without_filter_real_vocab():
    logits, temperature, _, _, _, seeds, positions = sampling_batch(64, seed=3)
    off = (torch.zeros(64, device=DEV, dtype=torch.long), torch.ones(64, device=DEV), torch.zeros(64, device=DEV))
    got = sample(logits, temperature, *off, seeds, positions, needs_filter=False)
    assert torch.equal(got, sample_ref(logits, temperature, *off, seeds, positions))


def test_sample_row_independent_of_batch_real_vocab():
    args = sampling_batch(256, seed=4)
    full = sample(*args)
    for i in [0, 3, 6, 7, 255]:
        alone = sample(*(a[i : i + 1] for a in args))
        assert alone.item() == full[i].item()


@pytest.mark.parametrize("dtype", [BF16, torch.float32], ids=str)
def test_token_mask_real_vocab(dtype):
    """Structured outputs' bitmask at the real vocabulary and the largest graph bucket, rows of
    the static [max_batch, words] buffer: every bit as the reference reads it."""
    batch = 256
    words = torch.randint(-2**31, 2**31 - 1, (batch, mask_words_for(VOCAB)), dtype=torch.int32, device=DEV,
                          generator=gen(11))
    words[::3] = -1  # unconstrained rows
    logits = torch.randn(batch, VOCAB, device=DEV, generator=gen(12)).to(dtype)
    want = apply_token_mask_ref(logits.clone(), words)
    torch.testing.assert_close(apply_token_mask(logits, words), want, atol=0, rtol=0)
    assert torch.isinf(want[1]).any() and not torch.isinf(want[0]).any()


def test_penalties_real_vocab():
    g = gen(15)
    logits = torch.randn(64, VOCAB, device=DEV, generator=g) * 4
    counts = (torch.randint(0, 3, (64, VOCAB), device=DEV, generator=g) * (torch.rand(64, VOCAB, device=DEV, generator=g) < 0.01)).int()
    prompt = torch.rand(64, VOCAB, device=DEV, generator=g) < 0.01
    rep = 1 + torch.rand(64, device=DEV, generator=g)
    freq = torch.rand(64, device=DEV, generator=g)
    pres = torch.rand(64, device=DEV, generator=g)
    torch.testing.assert_close(
        apply_penalties(logits, counts, prompt, rep, freq, pres),
        apply_penalties_ref(logits, counts, prompt, rep, freq, pres),
        atol=1e-5, rtol=1e-6,
    )


def decode_step_inputs(batch: int, q_heads: int, kv_heads: int, head_dim: int, max_context: int, seed: int):
    lens = torch.randint(1, max_context + 1, (batch,), generator=torch.Generator().manual_seed(seed)).tolist()
    # a fixed pool size, so that a later step's inputs fit a captured graph's tensors
    k_pool, v_pool, r2s, rows = make_pool(lens, kv_heads, head_dim, max_context=max_context, seed=seed,
                                          num_slots=batch * max_context)
    attn = dict(
        q=torch.randn(batch, q_heads, head_dim, device=DEV, generator=gen(seed)).to(BF16),
        k_pool=k_pool, v_pool=v_pool, req_to_slot=r2s, req_rows=rows,
        seq_lens=torch.tensor(lens, device=DEV, dtype=torch.int32), scale=head_dim**-0.5,
    )
    logits, temperature, top_k, top_p, min_p, seeds, positions = sampling_batch(batch, seed=seed)
    samp = dict(logits=logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seeds=seeds,
                positions=positions)
    return attn, samp


def test_decode_path_has_no_host_sync():
    attn, samp = decode_step_inputs(16, 12, 2, 128, 4096, seed=20)
    cos_sin = rope_cos_sin_cache(128, 4096, 1e6, device=DEV)
    x = torch.randn(16, 1536, device=DEV, dtype=BF16)
    qkv = torch.randn(16, 16 * 128, device=DEV, dtype=BF16)
    q, k, v = qkv.view(16, 16, 128).split([12, 2, 2], dim=1)
    slots = torch.arange(16, device=DEV)
    positions = attn["seq_lens"] - 1
    counts = torch.zeros(16, VOCAB, device=DEV, dtype=torch.int32)
    prompt = torch.zeros(16, VOCAB, device=DEV, dtype=torch.bool)
    ones = torch.ones(16, device=DEV)

    def step():
        rms_norm(x, x[0], 1e-6, x)
        apply_rope(q, k, positions, cos_sin)
        store_kv(attn["k_pool"], attn["v_pool"], k, v, slots)
        apply_rope_and_store_kv(q, k, v, positions, cos_sin, attn["k_pool"], attn["v_pool"], slots)
        decode_attention(**attn, split_size=4096)  # one split: no merge
        silu_and_mul(x)
        decode_attention(**attn)
        extend_attention(attn["q"], attn["k_pool"], attn["v_pool"], attn["req_to_slot"], attn["req_rows"],
                         torch.arange(17, device=DEV, dtype=torch.int32), attn["seq_lens"] - 1, attn["scale"], max_new_len=1)
        logits = apply_penalties(samp["logits"], counts, prompt, ones, 0 * ones, 0 * ones)
        sample(**{**samp, "logits": logits})
        sample(**samp, needs_filter=False)

    step()  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_cuda_graph_decode_and_sample_equal_eager():
    """Capture decode attention + sampling once, replay with new inputs copied into the static
    tensors (new contexts, lengths, logits, positions): the replay equals eager on that data."""
    attn, samp = decode_step_inputs(32, 12, 2, 128, 4096, seed=30)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compile) outside the capture
        for _ in range(2):
            decode_attention(**attn)
            sample(**samp)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(**attn)
        tokens = sample(**samp)

    for seed in (31, 32):
        new_attn, new_samp = decode_step_inputs(32, 12, 2, 128, 4096, seed=seed)
        for name, value in new_attn.items():
            if isinstance(value, torch.Tensor):
                attn[name].copy_(value)  # new contents in the captured tensors
        for name, value in new_samp.items():
            samp[name].copy_(value)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, decode_attention(**attn), atol=0, rtol=0)
        assert torch.equal(tokens, sample(**samp))
        assert torch.equal(tokens, sample_ref(**samp))
