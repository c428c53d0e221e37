"""ModelSpec: what the blocks need to know about a checkpoint, whatever its family.

A family's reader fills one from config.json (`read_common` does the fields every family spells
the same way); the blocks read only the spec, so a family that reuses them needs a reader and a
loader, not a forward pass of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litelang.worker.models.rope import scaling_problem


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    architecture: str  # config.json architectures[0], e.g. "Qwen2ForCausalLM"
    model_type: str  # config.json model_type, e.g. "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    # None for plain RoPE, else the config's scaling dict (rope_type and its parameters)
    rope_scaling: dict[str, Any] | None = field(hash=False)
    max_position_embeddings: int
    attention_bias: bool  # q, k and v projections have biases (Qwen2)
    qk_norm: bool  # per-head RMSNorm of q and k before RoPE (Qwen3)
    tie_word_embeddings: bool
    sliding_window: int | None  # None: every layer attends to the whole context
    mlp_bias: bool = False  # gate, up and down have biases (config.json mlp_bias); no block has them


def read_common(config: dict[str, Any]) -> dict[str, Any]:
    """The ModelSpec fields every Llama-like family's config.json spells the same way."""
    heads = config["num_attention_heads"]
    return dict(
        model_type=str(config.get("model_type", "")),
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta(config),
        rope_scaling=rope_scaling(config),
        max_position_embeddings=config.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def rope_theta(config: dict[str, Any]) -> float:
    """Top level in older transformers, under rope_parameters in newer ones."""
    theta = config.get("rope_theta")
    if theta is None:
        theta = (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return float(theta)


def rope_scaling(config: dict[str, Any]) -> dict[str, Any] | None:
    """None for plain RoPE. Older transformers write rope_scaling (null when plain), newer ones
    rope_parameters, whose rope_type is "default" when plain."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters")
    if not scaling or scaling.get("rope_type", scaling.get("type", "default")) == "default":
        return None
    return dict(scaling)


def check_served(spec: ModelSpec, where: str) -> None:
    """Refuse, before any weight is read, a checkpoint asking for what the blocks do not
    implement: serving it anyway would give wrong tokens without any error."""
    problems = []
    if spec.rope_scaling is not None and (problem := scaling_problem(spec.rope_scaling)):
        problems.append(problem)
    if spec.mlp_bias:
        problems.append("MLP biases (config.json mlp_bias: true) are not implemented; litelang serves bias-free MLPs")
    if spec.sliding_window is not None:
        problems.append(f"sliding-window attention (window {spec.sliding_window}) is not implemented; "
                        "litelang serves full attention")
    if problems:
        raise ValueError(f"{where}: {spec.architecture} checkpoint not served: " + "; ".join(problems))
