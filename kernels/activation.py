"""SiLU(gate) * up over the fused gate‖up projection output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from litelang.kernels._triton import tl, triton


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """x: [tokens, 2 * intermediate] with gate first, up second -> [tokens, intermediate]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


# --- Triton ----------------------------------------------------------------------------------


@triton.jit
def _silu_and_mul_kernel(X, Out, stride_x, stride_o, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + inter + offs, mask=mask, other=0.0).to(tl.float32)
    # round silu(gate) to the input dtype before the product, as the two torch ops do
    act = (gate * tl.sigmoid(gate)).to(Out.dtype.element_ty).to(tl.float32)
    tl.store(Out + row * stride_o + offs, (act * up).to(Out.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Triton version of silu_and_mul_ref: one read of gate||up, one write of the product."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    tokens, inter = x2.shape[0], x2.shape[1] // 2
    out = torch.empty((tokens, inter), dtype=x.dtype, device=x.device)
    if tokens > 0:
        block = min(1024, triton.next_power_of_2(inter))
        _silu_and_mul_kernel[(tokens, triton.cdiv(inter, block))](
            x2, out, x2.stride(0), out.stride(0), inter, BLOCK=block, num_warps=4
        )
    return out.reshape(*x.shape[:-1], inter)
