"""Llama (LlamaForCausalLM, Llama 3.x): no q/k/v bias by default, no q/k norm, Qwen2's tensor names.

Llama 3.1's long-context "llama3" RoPE scaling is in the shared RoPE table (rope.py); Llama 3.2
1B/3B tie the lm_head to the embeddings, which the shared loader honours.
"""

from __future__ import annotations

from typing import Any

from litelang.worker.models.qwen2 import Qwen2Model
from litelang.worker.models.spec import ModelSpec, read_common


def llama_spec(config: dict[str, Any], architecture: str) -> ModelSpec:
    return ModelSpec(**read_common(config), architecture=architecture,
                     attention_bias=bool(config.get("attention_bias", False)),
                     mlp_bias=bool(config.get("mlp_bias", False)), qk_norm=False, sliding_window=None)


class LlamaModel(Qwen2Model):
    """HF names Llama's tensors as it names Qwen2's; the spec's attention_bias says whether the
    q/k/v biases are read, so Qwen2's loader serves both."""
