"""Qwen2 (Qwen2ForCausalLM, Qwen2.5 too): biased q/k/v, no q/k norm, HF's tensor names."""

from __future__ import annotations

from typing import Any

from litelang.worker.checkpoint import CheckpointReader
from litelang.worker.model import CausalLM
from litelang.worker.models.attention import Attention
from litelang.worker.models.decoder import DecoderLayer
from litelang.worker.models.mlp import GatedMLP
from litelang.worker.models.spec import ModelSpec, read_common


def qwen2_spec(config: dict[str, Any], architecture: str) -> ModelSpec:
    return ModelSpec(**read_common(config), architecture=architecture, attention_bias=True, qk_norm=False,
                     sliding_window=qwen2_sliding_window(config))


def qwen2_sliding_window(config: dict[str, Any]) -> int | None:
    """The window, when some layer slides: with use_sliding_window, HF's Qwen2 slides in the
    layers layer_types names, or else from layer max_window_layers on."""
    window = config.get("sliding_window")
    if not config.get("use_sliding_window", False) or window is None:
        return None
    layer_types = config.get("layer_types")
    if layer_types is not None:
        slides = "sliding_attention" in layer_types
    else:
        slides = config.get("max_window_layers", 28) < config["num_hidden_layers"]
    return int(window) if slides else None


class Qwen2Model(CausalLM):
    def load(self, reader: CheckpointReader) -> None:
        s, weights = self.spec, self.weights(reader)
        self.embed = weights("model.embed_tokens.weight")
        self.final_norm = weights("model.norm.weight")
        if "lm_head.weight" in reader and not s.tie_word_embeddings:
            self.lm_head = weights("lm_head.weight")
        else:
            self.lm_head = self.embed
        for i in range(s.num_layers):
            p = f"model.layers.{i}."
            self.layers.append(DecoderLayer(
                input_norm=weights(p + "input_layernorm.weight"),
                attention=Attention.load(weights, p + "self_attn.", s, self.heads, self.kernels, self.cos_sin),
                post_norm=weights(p + "post_attention_layernorm.weight"),
                mlp=GatedMLP.load(weights, p + "mlp.", s, self.tp, self.kernels),
            ))
