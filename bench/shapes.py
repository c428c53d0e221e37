"""Model shapes for GPU tests and benchmarks, and random-weight checkpoints at those shapes.

The device machine cannot receive a real checkpoint (64 MiB per call), so GPU tests and
benchmarks build random weights at real Qwen2 shapes with HF transformers and save them as an
ordinary checkpoint directory, which both litelang and the HF baseline then load.
"""

from __future__ import annotations

from pathlib import Path

SHAPES = {
    "qwen2-1.5b": dict(
        num_hidden_layers=28, hidden_size=1536, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6,
    ),
    "qwen2-7b": dict(
        num_hidden_layers=28, hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
        intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6,
    ),
}


def random_checkpoint(shape: str, out: Path, seed: int = 0, dtype: str = "bfloat16", **overrides) -> Path:
    """Save a random Qwen2 at `shape` to out (reused when it exists). Weights ~N(0, 0.02) like HF
    init, q/k/v biases ~N(0, 0.02) so the bias path is exercised."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    if (out / "config.json").exists():
        return out
    cfg = Qwen2Config(**{**SHAPES[shape], **overrides}, torch_dtype=dtype)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(getattr(torch, dtype))
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.02)
    model.save_pretrained(out)
    del model
    return out
