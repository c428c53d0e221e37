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
    M_MAX, LinearConfig, linear, linear_ref, linear_silu_mul, linear_silu_mul_ref,
)

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
    for (case, s, c), x in zip(cases, static_x):  # warm up: compile, allocate the split counters
        run(x, case[1], case[2], s, c)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [run(x, case[1], case[2], s, c) for (case, s, c), x in zip(cases, static_x)]
    for step in range(3):
        g = torch.Generator("cuda").manual_seed(100 + step)
        fresh = [torch.randn(x.shape, device="cuda", generator=g).to(x.dtype) for x in static_x]
        for x, f in zip(static_x, fresh):
            x.copy_(f)
        graph.replay()
        torch.cuda.synchronize()
        for out, (case, s, c), f in zip(outs, cases, fresh):
            assert torch.equal(out, run(f, case[1], case[2], s, c))
