"""Triton SiLU-and-Mul vs silu_and_mul_ref."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from litelang.kernels.activation import silu_and_mul, silu_and_mul_ref  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("inter", [48, 1500])  # masked tail; several column blocks
def test_silu_and_mul_matches_reference(device, dtype, inter):
    x = (torch.randn(3, 2 * inter, generator=torch.Generator().manual_seed(inter)) * 4).to(device, dtype)
    out = silu_and_mul(x)
    assert out.shape == (3, inter) and out.dtype == dtype
    torch.testing.assert_close(out, silu_and_mul_ref(x), atol=TOL[dtype], rtol=TOL[dtype])
