"""Batch-invariant kernels: a row's result does not depend on the other rows of its batch.

The served kernels pick their work split from the batch: the projections a config (or cuBLAS,
which picks its own kernel) by M, decode attention its split count by batch size, the greedy
sampler its vocabulary chunks by batch size. Each choice changes the float32 summation order,
so a request's logits (and, at near-ties, its tokens) move with what else runs in its step.
In `deterministic` mode (configs/schema.py) the worker swaps in the kernels here:
- one tile shape per weight for every M, with no split-K;
- a fixed number of vocabulary chunks for the greedy token and for every logprob;
- top-p's cumsum never on a lone row.
The norms, RoPE, the KV store and SiLU * up are already row-local. Extend attention walks each
query's keys in blocks of absolute position, so how a prompt is chunked does not change its
sums. Decode attention runs as extend attention of one token, so a token computes the same
whether it was generated or read in a prompt.

The CPU references get the same from F.linear over fixed blocks of rows (the CPU BLAS picks its
blocking by M as well), from attending every token, prompt or generated, as a decode row, and
from sampling and taking logprobs a row at a time (a lone row's logsumexp is split over threads).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from litelang.kernels import tuned_configs
from litelang.kernels.kernel_set import REFERENCE, KernelSet
from litelang.kernels._triton import INTERPRET, dot_f32, tl, triton
from litelang.kernels.activation import silu_and_mul, silu_and_mul_ref
from litelang.kernels.attention import decode_attention_as_extend, decode_attention_ref
from litelang.kernels.greedy import greedy_sample, greedy_sample_ref, logprobs_from_argmax
from litelang.kernels.linear import split_qkv
from litelang.kernels.rmsnorm import DeferredNorm
from litelang.kernels.rope_store import apply_rope_and_store_kv, apply_rope_and_store_kv_ref

# rows per F.linear call in the CPU reference: every call has this shape, whatever M is
REF_BLOCK_ROWS = 16
# greedy sampling's vocabulary chunks per row in this mode
GREEDY_CHUNKS = 32


def linear_invariant_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                         norm: DeferredNorm | None = None) -> torch.Tensor:
    """F.linear(x, w, bias), computed REF_BLOCK_ROWS rows at a time (zero-padded), so each call
    has the same shape and a row's result does not depend on M."""
    assert norm is None, "batch-invariant mode runs its norms as kernels (defers_norm is False)"
    m = x.shape[0]
    padded = torch.cat([x, x.new_zeros(-m % REF_BLOCK_ROWS, x.shape[1])])
    blocks = [F.linear(block, w, bias) for block in padded.split(REF_BLOCK_ROWS)]
    return torch.cat(blocks)[:m] if blocks else x.new_empty(0, w.shape[0])


def extend_attention_invariant_ref(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                   req_to_slot: torch.Tensor, req_rows: torch.Tensor, cu_seqlens_q: torch.Tensor,
                                   prefix_lens: torch.Tensor, scale: float, max_new_len: int | None = None
                                   ) -> torch.Tensor:
    """extend_attention_ref with every new token attended as a decode row of its own (its
    position + 1 keys): torch's attention blocks its sums by the chunk's shape, so a prompt split
    into other chunks would change them. A prompt token is then computed exactly as a decode
    token at that position."""
    counts = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
    rows = req_rows.repeat_interleave(counts)
    first = torch.repeat_interleave(cu_seqlens_q[:-1].long(), counts)
    positions = prefix_lens.long().repeat_interleave(counts) + torch.arange(q.shape[0], device=q.device) - first
    return decode_attention_ref(q, k_pool, v_pool, req_to_slot, rows, positions + 1, scale)


# --- Triton ----------------------------------------------------------------------------------


class TileConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


_TILES = tuned_configs.table("batch_invariant_linear")


def tile_config(n: int, k: int, dtype: torch.dtype) -> TileConfig:
    """The one tile shape for a weight [n, k]: from the weight alone, never from M. From
    tuned_configs.json (bench/tune_invariant.py on an H100, Qwen2-1.5B, bf16, weighing a decode
    batch of M = 48 against a 40 x 600 prefill): wide weights (gate_up, lm_head) take 128 x 128
    tiles, which prefill 1.6x faster than 64 x 128 for 10% more at decode; narrow weights with a
    long K (down) 32-column tiles, for 48 programs at hidden 1536; the square ones (qkv, o) 64 x 64."""
    if INTERPRET:  # small tiles: CPU tests at small shapes still cross several tiles
        return TileConfig(16, 16, 16, 4, 1)
    if dtype == torch.float32:
        rule = _TILES["float32"]
    elif n >= _TILES["wide"]["min_n"]:
        rule = _TILES["wide"]
    elif k >= _TILES["long_k"]["min_k_per_n"] * n:
        rule = _TILES["long_k"]
    else:
        rule = _TILES["other"]
    return TileConfig(**rule["config"])


@triton.jit(do_not_specialize=["M"])  # one compile, one instruction sequence, for every M
def _linear_kernel(X, W, Bias, Out, M, N, K, stride_xm, stride_om, HAS_BIAS: tl.constexpr,
                   DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """Program (column block, row block): Out[rows, cols] = X[rows] @ W[cols].T (+ bias), the K
    loop in one fixed order. Rows past M load zeros and are never stored."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = X + rows.to(tl.int64)[:, None] * stride_xm + ks[None, :]
    w_ptrs = W + cols.to(tl.int64)[:, None] * K + ks[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + ks) < K
        x = tl.load(x_ptrs + k0, mask=(rows < M)[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs + k0, mask=(cols < N)[:, None] & k_ok[None, :], other=0.0)
        if DOT_F32:
            acc = dot_f32(x, tl.trans(w), acc)
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out_ptrs = Out + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, acc.to(Out.dtype.element_ty), mask=(rows < M)[:, None] & (cols < N)[None, :])


def linear_invariant(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                     norm: DeferredNorm | None = None) -> torch.Tensor:
    """Triton version of linear_invariant_ref: x [M, K] (row-strided views allowed) @ w[N, K].T,
    one tile config per weight, so a row's bits do not depend on M or on the other rows."""
    assert norm is None, "batch-invariant mode runs its norms as kernels (defers_norm is False)"
    m, k = x.shape
    n = w.shape[0]
    assert x.stride(-1) == 1 and w.is_contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    cfg = tile_config(n, k, x.dtype)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m))
    _linear_kernel[grid](
        x, w, bias if bias is not None else w, out, m, n, k, x.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, DOT_F32=INTERPRET or x.dtype == torch.float32,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def token_logprobs_invariant(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """token_logprobs_ref through the greedy kernel's fixed chunks: torch's logsumexp splits a
    row over more blocks when there are fewer rows. logprob(t) = (x_t - max) + logprob(argmax)."""
    return logprobs_from_argmax(logits, tokens, *greedy_sample(logits, chunks=GREEDY_CHUNKS))


def _rows_alone(fn, logits: torch.Tensor, *per_row: torch.Tensor | None, **kw):
    """fn over each row of logits by itself ([1, vocab] calls, results concatenated): on the
    CPU, torch's reductions over a row (logsumexp, softmax, cumsum) split it over threads
    according to the batch size. per_row: fn's other per-row arguments (None passes through)."""
    if logits.shape[0] == 0:
        return fn(logits, *per_row, **kw)
    outs = [fn(logits[i : i + 1], *(None if t is None else t[i : i + 1] for t in per_row), **kw)
            for i in range(logits.shape[0])]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def _greedy_rows_alone(logits, last_tokens=None, rows=None):
    """greedy_sample_ref a row at a time; last_tokens is the whole table, written at rows."""
    return _rows_alone(lambda x, r: greedy_sample_ref(x, last_tokens, r), logits, rows)


def _sample_as_two_rows(sample, logits, temperature, top_k, top_p, min_p, seeds, positions, needs_filter=True):
    """sample, with a batch of one run as two copies of its row: torch's cumsum (the top-p mass)
    scans a single row with another algorithm than each row of a batch."""
    if logits.shape[0] != 1:
        return sample(logits, temperature, top_k, top_p, min_p, seeds, positions, needs_filter=needs_filter)
    twice = [torch.cat([t, t]) for t in (logits, temperature, top_k, top_p, min_p, seeds, positions)]
    return sample(*twice, needs_filter=needs_filter)[:1]


# --- the kernel set --------------------------------------------------------------------------


def _linear_silu_mul(linear, silu_mul, x, w_gate_up, norm=None):
    return silu_mul(linear(x, w_gate_up, norm=norm))


def _linear_rope_store(linear, rope_store, x, w_qkv, bias, positions, cos_sin, k_pool, v_pool, slots, q_heads,
                       kv_heads, norm=None):
    """The projection, then RoPE on q and k and the KV store as their own (row-local) kernel."""
    qkv = linear(x, w_qkv, bias, norm=norm)
    q, k, v = split_qkv(qkv, q_heads, kv_heads, k_pool.shape[-1])
    rope_store(q, k, v, positions, cos_sin, k_pool, v_pool, slots)
    return qkv


def batch_invariant(ks: KernelSet) -> KernelSet:
    """ks with every batch-dependent choice replaced (see the module docstring)."""
    if ks is REFERENCE:
        linear, silu_mul, rope_store = linear_invariant_ref, silu_and_mul_ref, apply_rope_and_store_kv_ref
        extend, decode, greedy = extend_attention_invariant_ref, ks.decode_attention, _greedy_rows_alone
        sample = functools.partial(_rows_alone, ks.sample)
        logprobs = functools.partial(_rows_alone, ks.token_logprobs)
    else:
        linear, silu_mul, rope_store = linear_invariant, silu_and_mul, apply_rope_and_store_kv
        extend = ks.extend_attention  # keys in blocks of absolute position: chunking changes nothing
        decode = decode_attention_as_extend  # a generated token computes as the same token in a prompt
        greedy = functools.partial(ks.greedy_sample, chunks=GREEDY_CHUNKS)
        sample, logprobs = functools.partial(_sample_as_two_rows, ks.sample), token_logprobs_invariant
    return dataclasses.replace(
        ks,
        name=ks.name + "-invariant",
        linear=linear,
        linear_silu_mul=functools.partial(_linear_silu_mul, linear, silu_mul),
        linear_rope_store=functools.partial(_linear_rope_store, linear, rope_store),
        linear_residual=None,  # never called: defers_norm is False
        defers_norm=lambda m, w: False,
        linear_partials=lambda x, w: None,
        extend_attention=extend,
        decode_attention=decode,
        greedy_sample=greedy,
        sample=sample,
        token_logprobs=logprobs,
    )
