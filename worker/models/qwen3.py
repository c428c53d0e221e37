"""Qwen3 (Qwen3ForCausalLM, dense): Qwen2's layout and tensor names without the q/k/v biases,
with per-head q/k RMSNorm before RoPE and head_dim read from the config (it need not be
hidden / heads)."""

from __future__ import annotations

from typing import Any

from litelang.worker.models.qwen2 import Qwen2Model, qwen2_sliding_window
from litelang.worker.models.spec import ModelSpec, read_common


def qwen3_spec(config: dict[str, Any], architecture: str) -> ModelSpec:
    """read_common takes head_dim from the config; HF's Qwen3 slides the way Qwen2 does."""
    if config.get("attention_bias", False):
        # HF's Qwen3 then biases o_proj as well, which the shared blocks have no bias for
        raise ValueError(f"{architecture} checkpoint not served: attention_bias (biased q, k, v and o "
                         "projections) is not implemented; litelang serves Qwen3 without attention biases")
    return ModelSpec(**read_common(config), architecture=architecture, attention_bias=False, qk_norm=True,
                     sliding_window=qwen2_sliding_window(config))


class Qwen3Model(Qwen2Model):
    """Qwen2's loader as it is: Attention.load reads self_attn.q_norm / k_norm (one [head_dim]
    weight each, whole on every rank) because the spec asks for q/k norm, and no biases."""
