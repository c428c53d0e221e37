"""Fused residual-add + RMSNorm, and the norm deferred into the projections around it.

Qwen2 adds the residual right before each norm; fusing the two saves one read and one write of
the hidden states per norm.

At decode sizes the norm can leave its own kernel altogether (worker/residual.py): the
projection before it (o, down) adds the residual in its epilogue, adds each row's sum of squares
into an accumulator and writes the rows times the norm weight, and the projection after it
(qkv, gate_up, lm_head) takes those and scales its sums by 1/rms (DeferredNorm). The sums of
squares are integers in units of 1/SUMSQ_ONE: integer atomics are exact, so the total is the
same whichever program adds first, and results stay deterministic. The unit covers sums up to
2**63 / SUMSQ_ONE ~ 8.8e12 (an RMS of 7.5e4 over 1536 values) at a resolution far below the
norm's epsilon.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from litelang.kernels._triton import pdl_launch, pdl_start, tl, triton


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


SUMSQ_ONE = 2**20


class DeferredNorm(NamedTuple):
    """RMSNorm(h) * weight, left to the projection that consumes it: the projection's input is
    h * weight, and sumsq [rows] int64 holds each row's sum of squares of h in units of
    1/SUMSQ_ONE (both from linear_residual)."""
    sumsq: torch.Tensor
    eps: float


def sumsq_ref(x: torch.Tensor) -> torch.Tensor:
    """x [rows, hidden] -> each row's sum of squares (float32 math) in units of 1/SUMSQ_ONE."""
    return torch.round(x.float().pow(2).sum(-1) * SUMSQ_ONE).long()


def deferred_norm_ref(weighted: torch.Tensor, norm: DeferredNorm) -> torch.Tensor:
    """The normed rows that weighted (h * weight) and `norm` stand for."""
    inv_rms = torch.rsqrt(norm.sumsq.double() / SUMSQ_ONE / weighted.shape[-1] + norm.eps).float()
    return (weighted.float() * inv_rms[:, None]).to(weighted.dtype)


# --- Triton ----------------------------------------------------------------------------------


@triton.jit
def _rms_norm_kernel(
    X, Residual, Weight, Out, NewResidual,
    stride_x, stride_r, stride_o, stride_nr, stride_xs,
    hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per token row; the whole row sits in registers (hidden <= BLOCK). SPLITS > 0:
    X holds a projection's float32 split-K partials [SPLITS, rows, hidden], summed in split order
    and rounded to the residual's dtype, as the projection's own output would be."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    w = tl.load(Weight + offs, mask=mask, other=0.0)  # a weight: safe to read before the wait
    pdl_start(PDL)  # before reading x or the residual: see kernels/_triton.py
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
    if SPLITS > 0:
        for s in tl.static_range(1, SPLITS):
            x += tl.load(X + s * stride_xs + row * stride_x + offs, mask=mask, other=0.0)
        x = x.to(Residual.dtype.element_ty)
    if HAS_RESIDUAL:
        r = tl.load(Residual + row * stride_r + offs, mask=mask, other=0.0)
        # round the sum to the activation dtype, as `x + residual` does in torch
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(NewResidual + row * stride_nr + offs, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
    normed = (xf * inv_rms).to(x.dtype)
    out = w.to(tl.float32) * normed.to(tl.float32)
    tl.store(Out + row * stride_o + offs, out.to(Out.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of rms_norm_ref (same results up to float32 summation order)."""
    x2 = _rows(x)
    tokens, hidden = x2.shape
    out = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if residual is None:
        res_in, res_out = x2, out  # placeholders the kernel never touches
    else:
        res_in = _rows(residual)
        res_out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if tokens > 0:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(tokens,)](
            x2, res_in, weight, out, res_out,
            x2.stride(0), res_in.stride(0), out.stride(0), res_out.stride(0), 0,
            hidden, eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block, SPLITS=0, num_warps=min(max(block // 512, 1), 8),
            **pdl_launch(),
        )
    new_residual = x if residual is None else res_out.reshape(x.shape)
    return out.reshape(x.shape), new_residual


def rms_norm_sum_ref(partials: torch.Tensor, weight: torch.Tensor, eps: float,
                     residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm_ref of a projection given as float32 split-K partials [splits, tokens, hidden]:
    their sum, rounded to the residual's dtype, is the projection's output."""
    return rms_norm_ref(partials.sum(0).to(residual.dtype), weight, eps, residual)


def rms_norm_sum(partials: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of rms_norm_sum_ref: the split-K sum inside the norm kernel, so the
    projection before it needs no reduction of its own (kernels/linear.py linear_partials)."""
    splits, tokens, hidden = partials.shape
    assert partials.dtype == torch.float32 and partials.stride(-1) == 1 and partials.stride(1) == hidden
    res_in = _rows(residual)
    out = torch.empty(res_in.shape, dtype=torch.promote_types(weight.dtype, residual.dtype), device=residual.device)
    res_out = torch.empty_like(res_in)
    if tokens > 0:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(tokens,)](
            partials, res_in, weight, out, res_out,
            partials.stride(1), res_in.stride(0), out.stride(0), res_out.stride(0), partials.stride(0),
            hidden, eps,
            HAS_RESIDUAL=True, BLOCK=block, SPLITS=splits, num_warps=min(max(block // 512, 1), 8),
            **pdl_launch(),
        )
    return out, res_out
