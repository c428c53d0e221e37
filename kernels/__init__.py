"""Kernels used by the worker's model, each beside its plain-torch reference.

`kernel_set(use_triton)` picks the implementation once, at model construction: Triton kernels
on CUDA, the torch references on CPU (and whenever Triton is unavailable). Every pair has the
same signature, so the model code never branches on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from litelang.kernels.activation import silu_and_mul_ref
from litelang.kernels.attention import decode_attention_ref, extend_attention_ref
from litelang.kernels.kv_store import store_kv_ref
from litelang.kernels.rmsnorm import rms_norm_ref
from litelang.kernels.rope import apply_rope_ref
from litelang.kernels.sampling import apply_penalties_ref, sample_ref


@dataclass(frozen=True)
class KernelSet:
    name: str
    rms_norm: Callable
    apply_rope: Callable
    silu_and_mul: Callable
    store_kv: Callable
    extend_attention: Callable
    decode_attention: Callable
    sample: Callable
    apply_penalties: Callable


REFERENCE = KernelSet(
    name="torch",
    rms_norm=rms_norm_ref,
    apply_rope=apply_rope_ref,
    silu_and_mul=silu_and_mul_ref,
    store_kv=store_kv_ref,
    extend_attention=extend_attention_ref,
    decode_attention=decode_attention_ref,
    sample=sample_ref,
    apply_penalties=apply_penalties_ref,
)


def triton_kernel_set() -> KernelSet:
    """The Triton implementations (imported lazily: triton is optional on CPU machines)."""
    from litelang.kernels.triton_set import TRITON

    return TRITON


def kernel_set(use_triton: bool) -> KernelSet:
    """LITELANG_KERNELS=torch|triton overrides the choice (for debugging and comparisons)."""
    forced = os.environ.get("LITELANG_KERNELS")
    if forced:
        use_triton = forced == "triton"
    return triton_kernel_set() if use_triton else REFERENCE
