"""Triton RMSNorm (+ fused residual add) vs rms_norm_ref."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from litelang.kernels.rmsnorm import rms_norm, rms_norm_ref, rms_norm_sum, rms_norm_sum_ref  # noqa: E402

# bfloat16 allows 1 ulp: the CPU interpreter truncates float32 -> bfloat16 instead of rounding
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hidden", [64, 80])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(device, dtype, hidden, with_residual):
    g = torch.Generator().manual_seed(hidden)
    x = torch.randn(5, hidden, generator=g).to(device, dtype) * 3
    residual = torch.randn(5, hidden, generator=g).to(device, dtype) if with_residual else None
    weight = (1 + 0.1 * torch.randn(hidden, generator=g)).to(device, dtype)
    out, new_res = rms_norm(x, weight, 1e-6, residual)
    ref_out, ref_res = rms_norm_ref(x, weight, 1e-6, residual)
    assert out.dtype == ref_out.dtype and new_res.dtype == ref_res.dtype
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(new_res, ref_res, atol=tol, rtol=tol)
    if residual is None:
        assert new_res is x


def test_rms_norm_float32_weight_promotes(device):
    """bfloat16 activations with a float32 weight give a float32 result, as in the reference."""
    x = torch.randn(3, 64).to(device, torch.bfloat16)
    weight = torch.rand(64, device=device) + 0.5
    out, _ = rms_norm(x, weight, 1e-6)
    ref, _ = rms_norm_ref(x, weight, 1e-6)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)  # the bfloat16 rounding of the norm


def test_rms_norm_strided_rows(device):
    """Rows of a wider buffer (a view with row stride > hidden)."""
    buf = torch.randn(4, 96, device=device)
    x = buf[:, :64]
    weight = torch.rand(64, device=device)
    torch.testing.assert_close(rms_norm(x, weight, 1e-5)[0], rms_norm_ref(x, weight, 1e-5)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("splits", [1, 2, 5])
def test_rms_norm_sum_matches_reference(device, dtype, splits):
    """The norm that sums a projection's float32 split-K partials first: the same as rounding
    their sum to the activation dtype and calling rms_norm_ref."""
    g = torch.Generator().manual_seed(splits)
    partials = torch.randn(splits, 6, 80, generator=g).to(device)
    residual = torch.randn(6, 80, generator=g).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(80, generator=g)).to(device, dtype)
    out, new_res = rms_norm_sum(partials, weight, 1e-6, residual)
    ref_out, ref_res = rms_norm_sum_ref(partials, weight, 1e-6, residual)
    assert out.dtype == ref_out.dtype and new_res.dtype == ref_res.dtype == dtype
    torch.testing.assert_close(out, ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(new_res, ref_res, atol=TOL[dtype], rtol=TOL[dtype])
    # and the reference is the plain norm of the summed projection
    plain, _ = rms_norm_ref(partials.sum(0).to(dtype), weight, 1e-6, residual)
    torch.testing.assert_close(ref_out, plain)
