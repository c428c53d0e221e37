"""Triton small-M linear and linear+SiLU*mul vs their references.

CPU-sized cases run in the interpreter with tiny blocks (kernels/linear.py pick_config), so N and K
cross several blocks with ragged tails, and K splits into two. `-m gpu` cases run at Qwen2 1.5B / 7B
shapes with the configs the served path picks, plus determinism and CUDA-graph replay.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from litelang.kernels.linear import (  # noqa: E402
    M_MAX, NORM_M_MAX, LinearConfig, _fit_norm_stages, linear, linear_ref, linear_silu_mul, linear_silu_mul_ref,
    rms_norm_linear, rms_norm_linear_ref,
)
from litelang.kernels.rmsnorm import rms_norm_ref  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def rand(*shape, seed: int, device, dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(device, dtype)


def check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=TOL[out.dtype], rtol=TOL[out.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("has_bias", [False, True], ids=["nobias", "bias"])
def test_linear_matches_reference(device, dtype, m, has_bias):
    n, k = 37, 72  # neither a multiple of the interpreter's blocks (4 rows, 16 columns)
    x = rand(m, k, seed=m, device=device, dtype=dtype)
    w = rand(n, k, seed=1, device=device, dtype=dtype, scale=k**-0.5)
    bias = rand(n, seed=2, device=device, dtype=dtype) if has_bias else None
    check(linear(x, w, bias), linear_ref(x, w, bias))


@pytest.mark.parametrize("m", [M_MAX // 2 + 1, M_MAX])  # the largest M bucket, ragged and full
def test_linear_large_m_bucket(device, m):
    x = rand(m, 40, seed=m, device=device, dtype=torch.float32)
    w = rand(2 * 11, 40, seed=12, device=device, dtype=torch.float32, scale=40**-0.5)
    check(linear(x, w), linear_ref(x, w))
    check(linear_silu_mul(x, w), linear_silu_mul_ref(x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_linear_silu_mul_matches_reference(device, dtype, m):
    inter, k = 21, 80
    x = rand(m, k, seed=m, device=device, dtype=dtype)
    w = rand(2 * inter, k, seed=3, device=device, dtype=dtype, scale=k**-0.5)
    check(linear_silu_mul(x, w), linear_silu_mul_ref(x, w))


def test_strided_rows(device):
    """x a row view of a wider buffer (like q‖k‖v slices): the row stride is honoured."""
    wide = rand(3, 100, seed=4, device=device, dtype=torch.float32)
    x = wide[:, 10:58]
    w = rand(20, 48, seed=5, device=device, dtype=torch.float32)
    assert not x.is_contiguous()
    check(linear(x, w), linear_ref(x, w))
    check(linear_silu_mul(x, w), linear_silu_mul_ref(x, w))


@pytest.mark.parametrize("config", [
    LinearConfig(block_n=16, block_k=32, split_k=3, use_dot=True),  # tensor cores
    LinearConfig(block_n=2, block_k=16, split_k=8),  # more splits than K blocks: empty splits
    LinearConfig(block_n=8, block_k=64),  # one K block, masked
], ids=["dot", "empty-splits", "one-block"])
@pytest.mark.parametrize("m", [1, 3])
def test_explicit_configs(device, config, m):
    x = rand(m, 72, seed=6, device=device, dtype=torch.float32)
    w = rand(2 * 19, 72, seed=7, device=device, dtype=torch.float32)
    bias = rand(2 * 19, seed=8, device=device, dtype=torch.float32)
    check(linear(x, w, bias, config=config), linear_ref(x, w, bias))
    check(linear_silu_mul(x, w, config=config), linear_silu_mul_ref(x, w))


def test_large_m_falls_back_to_torch(device):
    x = rand(M_MAX + 1, 40, seed=9, device=device, dtype=torch.float32)
    w = rand(24, 40, seed=10, device=device, dtype=torch.float32)
    torch.testing.assert_close(linear(x, w), F.linear(x, w), atol=0, rtol=0)
    check(linear_silu_mul(x, w), linear_silu_mul_ref(x, w))


def test_empty_batch(device):
    w = rand(24, 40, seed=11, device=device, dtype=torch.float32)
    assert linear(torch.empty(0, 40, device=device), w).shape == (0, 24)


# --- rms_norm_linear ---------------------------------------------------------------------------


def norm_case(m: int, k: int, n: int, dtype, device, residual: bool, seed: int = 0):
    x = rand(m, k, seed=seed, device=device, dtype=dtype)
    res = rand(m, k, seed=seed + 1, device=device, dtype=dtype) if residual else None
    norm_w = (1 + rand(k, seed=seed + 2, device=device, dtype=torch.float32, scale=0.2)).to(dtype)
    w = rand(n, k, seed=seed + 3, device=device, dtype=dtype, scale=k**-0.5)
    bias = rand(n, seed=seed + 4, device=device, dtype=dtype)
    return x, res, norm_w, w, bias


def check_norm_linear(got, want, x, residual) -> None:
    (out, new_res), (ref_out, ref_res) = got, want
    if out.dtype == torch.bfloat16 and not out.is_cuda:
        # the interpreter's truncations (x + residual, normalized, weighted) all lean toward zero
        torch.testing.assert_close(out, ref_out, atol=6e-2, rtol=6e-2)
    else:
        check(out, ref_out)
    if residual is None:
        assert new_res is x  # like rms_norm: the stream starts at x itself
    elif new_res.dtype == torch.float32 or new_res.is_cuda:
        assert torch.equal(new_res, ref_res)  # x + residual rounded once, written by one program
    else:  # the CPU interpreter truncates float32 -> bfloat16 instead of rounding: 1 ulp
        check(new_res, ref_res)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3, 5])
@pytest.mark.parametrize("residual", [False, True], ids=["first", "residual"])
@pytest.mark.parametrize("silu_mul", [False, True], ids=["bias", "silu"])
def test_rms_norm_linear_matches_reference(device, dtype, m, residual, silu_mul):
    x, res, norm_w, w, bias = norm_case(m, 72, 2 * 19, dtype, device, residual, seed=m)
    want = rms_norm_linear_ref(x, res, norm_w, 1e-6, w, bias, silu_mul=silu_mul)
    check_norm_linear(rms_norm_linear(x, res, norm_w, 1e-6, w, bias, silu_mul=silu_mul, fuse=True), want, x, res)
    check_norm_linear(rms_norm_linear(x, res, norm_w, 1e-6, w, bias, silu_mul=silu_mul), want, x, res)  # default


def test_rms_norm_linear_reference_is_norm_then_linear(device):
    x, res, norm_w, w, bias = norm_case(3, 40, 24, torch.bfloat16, device, True)
    h, new_res = rms_norm_ref(x, norm_w, 1e-5, res)
    out, got_res = rms_norm_linear_ref(x, res, norm_w, 1e-5, w, bias)
    assert torch.equal(out, linear_ref(h, w, bias)) and torch.equal(got_res, new_res)
    out, _ = rms_norm_linear_ref(x, res, norm_w, 1e-5, w, silu_mul=True)
    assert torch.equal(out, linear_silu_mul_ref(h, w))


@pytest.mark.parametrize("config", [
    LinearConfig(block_n=16, block_k=32, split_k=3, use_dot=True),  # tensor cores, split K
    LinearConfig(block_n=2, block_k=16, split_k=8),  # more splits than K blocks: empty splits
], ids=["dot", "empty-splits"])
@pytest.mark.parametrize("m", [1, 3])
def test_rms_norm_linear_explicit_configs(device, config, m):
    """Every split of every row block normalizes x; one program writes the new residual."""
    x, res, norm_w, w, bias = norm_case(m, 72, 2 * 19, torch.float32, device, True, seed=20 + m)
    for silu in (False, True):
        got = rms_norm_linear(x, res, norm_w, 1e-6, w, bias, silu_mul=silu, config=config, fuse=True)
        check_norm_linear(got, rms_norm_linear_ref(x, res, norm_w, 1e-6, w, bias, silu_mul=silu), x, res)


@pytest.mark.parametrize("fuse", [True, False, None], ids=["fused", "two-calls", "default"])
def test_rms_norm_linear_strided_and_large_m(device, fuse):
    """x a column slice of a wider buffer; M past NORM_M_MAX and M_MAX."""
    wide = rand(M_MAX + 1, 100, seed=30, device=device, dtype=torch.float32)
    for m in (2, NORM_M_MAX + 1, M_MAX + 1):
        x = wide[:m, 10:58]
        _, res, norm_w, w, bias = norm_case(m, 48, 20, torch.float32, device, True, seed=31)
        got = rms_norm_linear(x, res, norm_w, 1e-6, w, bias, fuse=fuse)
        check_norm_linear(got, rms_norm_linear_ref(x, res, norm_w, 1e-6, w, bias), x, res)


def test_fused_norm_fits_shared_memory():
    """7B gate_up at M = 48 with the residual tile: 4 stages compile to 240 KB (sm_90: 227 KB)."""
    cfg = LinearConfig(64, 128, num_stages=4, use_dot=True)
    assert _fit_norm_stages(cfg, 48, True, True).num_stages == 3
    assert _fit_norm_stages(cfg, 48, True, False) == cfg  # 192 KB without the residual
    assert _fit_norm_stages(LinearConfig(1, 2048), 1, True, True) == LinearConfig(1, 2048)


# --- GPU: real shapes --------------------------------------------------------------------------

# (name, N, K, bias, silu_mul); for silu_mul N is the gate||up row count
SHAPES = [
    ("1.5b-qkv", 2048, 1536, True, False), ("1.5b-o", 1536, 1536, False, False),
    ("1.5b-gate_up", 17920, 1536, False, True), ("1.5b-down", 1536, 8960, False, False),
    ("7b-qkv", 4608, 3584, True, False), ("7b-o", 3584, 3584, False, False),
    ("7b-gate_up", 37888, 3584, False, True), ("7b-down", 3584, 18944, False, False),
]


def gpu_case(n: int, k: int, m: int, has_bias: bool, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).bfloat16()
    bias = (torch.randn(n, device="cuda", generator=g) * 0.02).bfloat16() if has_bias else None
    return x, w, bias


def float_ref(x, w, bias, silu_mul: bool) -> torch.Tensor:
    """float32 math, rounded like the bf16 reference ops round their intermediates."""
    y = (x.float() @ w.float().T + (bias.float() if bias is not None else 0)).to(x.dtype)
    return silu_and_mul_f32(y) if silu_mul else y


def silu_and_mul_f32(y: torch.Tensor) -> torch.Tensor:
    gate, up = y.float().chunk(2, dim=-1)
    return (F.silu(gate).to(y.dtype).float() * up).to(y.dtype)


def run(x, w, bias, silu_mul: bool, config: LinearConfig | None = None) -> torch.Tensor:
    return linear_silu_mul(x, w, config=config) if silu_mul else linear(x, w, bias, config=config)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 8, 12, 16, 24, 32, 48, 64])  # every M bucket, rows past M in a bucket
@pytest.mark.parametrize("name,n,k,has_bias,silu_mul", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_real_shapes(name, n, k, has_bias, silu_mul, m):
    x, w, bias = gpu_case(n, k, m, has_bias)
    out = run(x, w, bias, silu_mul)
    torch.testing.assert_close(out, float_ref(x, w, bias, silu_mul), atol=2e-2, rtol=2e-2)
    # fixed-order split-K reduction: bitwise the same every run
    assert torch.equal(out, run(x, w, bias, silu_mul))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 8])
def test_gpu_lm_head(m):
    x, w, _ = gpu_case(151936, 1536, m, False)
    torch.testing.assert_close(linear(x, w), float_ref(x, w, None, False), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 4, 16, 48])
@pytest.mark.parametrize("residual", [False, True], ids=["first", "residual"])
@pytest.mark.parametrize("name,n,k,has_bias,silu_mul", [s for s in SHAPES if s[0].endswith(("qkv", "gate_up"))],
                         ids=[s[0] for s in SHAPES if s[0].endswith(("qkv", "gate_up"))])
def test_gpu_rms_norm_linear(name, n, k, has_bias, silu_mul, m, residual):
    """The fused norm at the projections that follow a norm: the new residual bitwise, the output
    as the float32 linear of rms_norm_ref's (bf16) output; deterministic."""
    x, w, bias = gpu_case(n, k, m, has_bias)
    res = torch.randn(m, k, device="cuda", generator=torch.Generator("cuda").manual_seed(1)).bfloat16() if residual else None
    norm_w = (1 + 0.2 * torch.randn(k, device="cuda", generator=torch.Generator("cuda").manual_seed(2))).bfloat16()
    out, new_res = rms_norm_linear(x, res, norm_w, 1e-6, w, bias, silu_mul=silu_mul, fuse=True)
    h, ref_res = rms_norm_ref(x, norm_w, 1e-6, res)
    torch.testing.assert_close(out, float_ref(h, w, bias, silu_mul), atol=2e-2, rtol=2e-2)
    assert new_res is x if res is None else torch.equal(new_res, ref_res)
    again, _ = rms_norm_linear(x, res, norm_w, 1e-6, w, bias, silu_mul=silu_mul, fuse=True)
    assert torch.equal(out, again)


# split-K on both inner products, beside the served configs
SPLIT_CONFIGS = [LinearConfig(2, 1024, split_k=4), LinearConfig(64, 128, 3, 4, 4, use_dot=True)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 8])
def test_gpu_cuda_graph_replay_equals_eager(m):
    """Every 1.5B projection captured in one graph with its served config, plus split-K configs
    (counters and partials), replayed on new inputs: bitwise equal to eager calls."""
    shapes = [(n, k, b, s, None) for _, n, k, b, s in SHAPES[:4]]
    shapes += [(n, k, b, s, c) for _, n, k, b, s in SHAPES[2:4] for c in SPLIT_CONFIGS]
    cases = [(gpu_case(n, k, m, b, seed=i), s, c) for i, (n, k, b, s, c) in enumerate(shapes)]
    static_x = [case[0].clone() for case, _, _ in cases]
    # the fused norm before qkv and gate_up, reading the residual stream static_x[0] (K = 1536)
    residual = static_x[0].clone()
    norm_w = (1 + 0.2 * torch.randn(1536, device="cuda")).bfloat16()

    def fused(x, res):
        return [t for _, n, k, b, s in SHAPES[:3:2] for t in rms_norm_linear(
            x, res, norm_w, 1e-6, cases[0 if b else 2][0][1], cases[0][0][2] if b else None, silu_mul=s, fuse=True)]

    for (case, s, c), x in zip(cases, static_x):  # warm up: compile, allocate the split counters
        run(x, case[1], case[2], s, c)
    fused(static_x[0], residual)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [run(x, case[1], case[2], s, c) for (case, s, c), x in zip(cases, static_x)]
        fused_outs = fused(static_x[0], residual)
    for step in range(3):
        g = torch.Generator("cuda").manual_seed(100 + step)
        fresh = [torch.randn(x.shape, device="cuda", generator=g).to(x.dtype) for x in static_x]
        fresh_res = torch.randn(residual.shape, device="cuda", generator=g).to(residual.dtype)
        for x, f in zip(static_x, fresh):
            x.copy_(f)
        residual.copy_(fresh_res)
        graph.replay()
        torch.cuda.synchronize()
        for out, (case, s, c), f in zip(outs, cases, fresh):
            assert torch.equal(out, run(f, case[1], case[2], s, c))
        for out, want in zip(fused_outs, fused(fresh[0], fresh_res)):
            assert torch.equal(out, want)
