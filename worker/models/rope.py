"""The RoPE table attention rotates by, with the frequency scalings litelang implements.

A scaling (Llama 3.1's "llama3") changes only the inverse frequencies; the table keeps the
layout of kernels/rope.py, so the kernels rotate by it unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from litelang.kernels.rope import rope_cos_sin_cache

if TYPE_CHECKING:
    from litelang.worker.models.spec import ModelSpec

# the parameters a "llama3" scaling needs, all read from the config's scaling dict
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
SCALINGS = ("llama3",)


def scaling_type(scaling: dict[str, Any]) -> str | None:
    """rope_type in newer configs, type in older ones."""
    return scaling.get("rope_type", scaling.get("type"))


def scaling_problem(scaling: dict[str, Any]) -> str | None:
    """Why a scaling dict cannot be served (None when it can): an unimplemented type, or a
    llama3 scaling missing one of its parameters."""
    kind = scaling_type(scaling)
    if kind not in SCALINGS:
        return (f"RoPE scaling {kind!r} (config.json rope_scaling / rope_parameters rope_type, {scaling}) "
                f"is not implemented; litelang serves plain RoPE and {', '.join(map(repr, SCALINGS))}")
    missing = [key for key in LLAMA3_KEYS if scaling.get(key) is None]
    if missing:
        return f"RoPE scaling 'llama3' lacks {', '.join(missing)} in config.json rope_scaling / rope_parameters"
    return None


def plain_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """[head_dim / 2] float32: theta ** (-2i / head_dim), the frequencies of plain RoPE."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's scaling: frequencies whose wavelength is longer than the original context over
    low_freq_factor are divided by factor, those shorter than it over high_freq_factor are kept,
    and those between blend the two linearly in original context / wavelength."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    context = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    blend = (context / wavelength - low) / (high - low)  # 0: divided, 1: kept
    between = torch.where(wavelength < context / high, inv_freq, blend * inv_freq + (1 - blend) * inv_freq / factor)
    return torch.where(wavelength > context / low, inv_freq / factor, between)


def rope_inv_freq(spec: ModelSpec) -> torch.Tensor:
    """[head_dim / 2] float32: the spec's inverse frequencies, scaled as its rope_scaling says."""
    inv_freq = plain_inv_freq(spec.head_dim, spec.rope_theta)
    if spec.rope_scaling is None:
        return inv_freq
    return llama3_inv_freq(inv_freq, spec.rope_scaling)  # check_served refused every other type


def rope_cos_sin(spec: ModelSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """[max_position_embeddings, head_dim] float32: cos of the frequencies, then their sin
    (kernels/rope.py's layout). Plain RoPE is the kernels' own table."""
    if spec.rope_scaling is None:
        return rope_cos_sin_cache(spec.head_dim, spec.max_position_embeddings, spec.rope_theta, device)
    positions = torch.arange(spec.max_position_embeddings, dtype=torch.float32, device=device)
    angles = torch.outer(positions, rope_inv_freq(spec).to(device))
    return torch.cat([angles.cos(), angles.sin()], dim=-1)
