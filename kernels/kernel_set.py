"""Kernels used by the worker's model, each beside its plain-torch reference.

`kernel_set(use_triton, deterministic)` picks the implementation once, at model construction:
Triton kernels on CUDA, the torch references on CPU (and whenever Triton is unavailable), each
with a batch-invariant variant (kernels/batch_invariant.py). Every pair has the
same signature, so the model code never branches on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from litelang.kernels.activation import silu_and_mul_ref
from litelang.kernels.attention import decode_attention_ref, extend_attention_ref
from litelang.kernels.decode_inputs import decode_inputs_ref
from litelang.kernels.greedy import greedy_sample_ref
from litelang.kernels.kv_store import store_kv_ref
from litelang.kernels.linear import linear_ref, linear_residual_ref, linear_rope_store_ref, linear_silu_mul_ref
from litelang.kernels.rmsnorm import rms_norm_ref, rms_norm_sum_ref
from litelang.kernels.rope import apply_rope_ref
from litelang.kernels.sampling import apply_penalties_ref, sample_ref, token_logprobs_ref
from litelang.kernels.token_mask import apply_token_mask_ref


@dataclass(frozen=True)
class KernelSet:
    name: str
    rms_norm: Callable
    # (partials [splits, tokens, hidden] float32, weight, eps, residual): rms_norm of their sum
    rms_norm_sum: Callable
    apply_rope: Callable
    silu_and_mul: Callable
    store_kv: Callable
    extend_attention: Callable
    decode_attention: Callable
    sample: Callable
    # (logits, last_tokens=None, rows=None) -> (argmax tokens, their logprobs); also stores
    # last_tokens[rows] = tokens when given
    greedy_sample: Callable
    apply_penalties: Callable
    # (float32 logits [batch, vocab], tokens [batch]) -> each token's log-softmax
    token_logprobs: Callable
    # (logits [rows, vocab], words [rows, vocab / 32] int32) -> logits, -inf in place where a
    # structured output's bitmask disallows the token
    apply_token_mask: Callable
    # The projections take norm=DeferredNorm | None (kernels/rmsnorm.py): x is the residual
    # stream times the norm weight, and the projection scales by 1/rms
    linear: Callable  # (x, w, bias=None, norm=None): F.linear; Triton for small M
    linear_silu_mul: Callable  # (x, w_gate_up, norm=None): silu_and_mul(linear(x, w_gate_up)), fused
    # (x, w_qkv, bias, positions, cos_sin, k_pool, v_pool, slots, q_heads, kv_heads, norm=None) ->
    # qkv: the projection, then RoPE on q and k and the KV store (in its epilogue at small M)
    linear_rope_store: Callable
    # (x, w, residual, sumsq, norm_weight) -> (h, h * norm_weight), h = linear(x, w) + residual,
    # adding h's rows' sums of squares into sumsq
    linear_residual: Callable
    # (m, w) -> whether to defer the norm after linear_residual(x [m, K], w): the add runs in the
    # projection's epilogue, and that measured faster than the norm kernel
    defers_norm: Callable
    # (x, w) -> x @ w.T as float32 split-K partials [splits, M, N] for rms_norm_sum to add up, or
    # None where the plain projection is faster (always None in the references)
    linear_partials: Callable
    # (embed, last_tokens, req_to_slot, rows, slots, seq_lens) -> hidden: a decode-only step's
    # table write and embedding of each row's last sampled token
    decode_inputs: Callable


REFERENCE = KernelSet(
    name="torch",
    rms_norm=rms_norm_ref,
    rms_norm_sum=rms_norm_sum_ref,
    apply_rope=apply_rope_ref,
    silu_and_mul=silu_and_mul_ref,
    store_kv=store_kv_ref,
    extend_attention=extend_attention_ref,
    decode_attention=decode_attention_ref,
    sample=sample_ref,
    greedy_sample=greedy_sample_ref,
    apply_penalties=apply_penalties_ref,
    token_logprobs=token_logprobs_ref,
    apply_token_mask=apply_token_mask_ref,
    linear=linear_ref,
    linear_silu_mul=linear_silu_mul_ref,
    linear_rope_store=linear_rope_store_ref,
    linear_residual=linear_residual_ref,
    defers_norm=lambda m, w: False,
    linear_partials=lambda x, w: None,
    decode_inputs=decode_inputs_ref,
)


def triton_kernel_set() -> KernelSet:
    """The Triton implementations (imported lazily: triton is optional on CPU machines)."""
    from litelang.kernels.triton_set import TRITON

    return TRITON


def kernel_set(use_triton: bool, deterministic: bool = False) -> KernelSet:
    """LITELANG_KERNELS=torch|triton overrides the choice (for debugging and comparisons).
    deterministic: the batch-invariant variant (kernels/batch_invariant.py)."""
    forced = os.environ.get("LITELANG_KERNELS")
    if forced:
        use_triton = forced == "triton"
    ks = triton_kernel_set() if use_triton else REFERENCE
    if deterministic:
        from litelang.kernels.batch_invariant import batch_invariant

        ks = batch_invariant(ks)
    return ks
