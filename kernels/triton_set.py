"""The Triton kernel set: same signatures as the references in REFERENCE (kernels/__init__.py).

Optional keywords beyond the shared signatures: extend_attention(max_new_len=) (pass it: without
it the grid size costs a host sync) and sample(needs_filter=) (the references accept both and
ignore them); decode_attention(split_size=) for tests and tuning only.
"""

from __future__ import annotations

from litelang.kernels.kernel_set import KernelSet
from litelang.kernels.activation import silu_and_mul
from litelang.kernels.attention import decode_attention, extend_attention
from litelang.kernels.decode_inputs import decode_inputs
from litelang.kernels.greedy import greedy_sample
from litelang.kernels.kv_store import store_kv
from litelang.kernels.linear import (
    defers_norm,
    linear,
    linear_partials,
    linear_residual,
    linear_rope_store,
    linear_silu_mul,
)
from litelang.kernels.rmsnorm import rms_norm, rms_norm_sum
from litelang.kernels.rope import apply_rope
from litelang.kernels.sampling import apply_penalties, sample, token_logprobs_ref
from litelang.kernels.token_mask import apply_token_mask

TRITON = KernelSet(
    name="triton",
    rms_norm=rms_norm,
    rms_norm_sum=rms_norm_sum,
    apply_rope=apply_rope,
    silu_and_mul=silu_and_mul,
    store_kv=store_kv,
    extend_attention=extend_attention,
    decode_attention=decode_attention,
    sample=sample,
    greedy_sample=greedy_sample,
    apply_penalties=apply_penalties,
    token_logprobs=token_logprobs_ref,  # torch: one reduction per row
    apply_token_mask=apply_token_mask,
    linear=linear,
    linear_silu_mul=linear_silu_mul,
    linear_rope_store=linear_rope_store,
    linear_residual=linear_residual,
    defers_norm=defers_norm,
    linear_partials=linear_partials,
    decode_inputs=decode_inputs,
)
