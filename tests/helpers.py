"""Test helpers importable from any test module (pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path


def make_tiny_qwen2(path: Path, tie: bool = True, seed: int = 0, **overrides) -> Path:
    """Save a random Qwen2 (2 layers, hidden 64, 4 heads / 2 kv heads) with HF transformers."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kwargs = dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=10000.0, tie_word_embeddings=tie, rms_norm_eps=1e-6,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**kwargs)).eval()
    with torch.no_grad():  # HF inits biases to zero; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(path)
    return path
