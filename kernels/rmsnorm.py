"""Fused residual-add + RMSNorm.

Qwen2 adds the residual right before each norm; fusing the two saves one read and one write of
the hidden states per norm.
"""

from __future__ import annotations

import torch


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (norm(x + residual) * weight, x + residual). Math in float32, like HF Qwen2RMSNorm.

    x, residual: [tokens, hidden]; weight: [hidden]. The second result is the new residual stream.
    """
    if residual is not None:
        x = x + residual
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * out.to(x.dtype), x
