"""Triton small-M linear and linear+SiLU*mul vs their references.

CPU-sized cases run in the interpreter with tiny blocks (kernels/linear.py pick_config), so N and K
cross several blocks with ragged tails, and K splits into two. `-m gpu` cases run at Qwen2 1.5B / 7B
shapes with the configs the served path picks, plus determinism and CUDA-graph replay.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from litelang.kernels import linear as linear_module  # noqa: E402
from litelang.kernels.linear import (  # noqa: E402
    M_MAX, LinearConfig, linear, linear_partials, linear_partials_ref, linear_ref, linear_residual,
    linear_residual_ref, linear_rope_store, linear_rope_store_ref, linear_silu_mul, linear_silu_mul_ref,
    partial_splits, split_qkv,
)
from litelang.kernels.rmsnorm import (  # noqa: E402
    SUMSQ_ONE, DeferredNorm, rms_norm, rms_norm_ref, rms_norm_sum, sumsq_ref,
)
from litelang.kernels.rope import rope_cos_sin_cache  # noqa: E402

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


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_linear_partials_ref_sums_to_the_projection(splits):
    """The split-K partials cover K once: split s holds columns [s K / splits, (s + 1) K / splits)."""
    x = rand(5, 72, seed=3, device="cpu", dtype=torch.float32)
    w = rand(37, 72, seed=4, device="cpu", dtype=torch.float32)
    parts = linear_partials_ref(x, w, splits)
    assert parts.shape == (splits, 5, 37) and parts.dtype == torch.float32
    torch.testing.assert_close(parts.sum(0), linear_ref(x, w), atol=1e-5, rtol=1e-5)
    c = 72 // splits
    torch.testing.assert_close(parts[-1], x[:, -c:] @ w[:, -c:].T)


def test_partial_splits_policy(monkeypatch):
    """Partials only where cuBLAS runs the projection at 16 < M <= M_MAX and the stream is narrow
    (the 1.5B's o and down), never at M <= 16 (Triton defers the norm there) or the 7B's width."""
    monkeypatch.setattr(linear_module, "INTERPRET", False)  # the GPU policy, not the CPU test blocks
    o, down = torch.empty(1536, 1536), torch.empty(1536, 8960)
    for m in (17, 24, 48, M_MAX):
        assert partial_splits(m, o) == partial_splits(m, down) == linear_module.PARTIAL_SPLITS
    for m in (1, 16, M_MAX + 1):
        assert partial_splits(m, o) == partial_splits(m, down) == 0
    assert partial_splits(48, torch.empty(3584, 3584)) == 0  # 7B o: measured slower
    assert partial_splits(48, torch.empty(3584, 18944)) == 0  # 7B down: on Triton at this M


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


# --- linear_rope_store ---------------------------------------------------------------------------


def rope_case(m: int, q_heads: int, kv_heads: int, head_dim: int, k: int, dtype, device, bias: bool, seed: int = 0):
    n = (q_heads + 2 * kv_heads) * head_dim
    x = rand(m, k, seed=seed, device=device, dtype=dtype)
    w = rand(n, k, seed=seed + 1, device=device, dtype=dtype, scale=k**-0.5)
    b = rand(n, seed=seed + 2, device=device, dtype=dtype) if bias else None
    g = torch.Generator().manual_seed(seed + 3)
    positions = torch.randint(0, 50, (m,), generator=g).to(device)
    slots = torch.randperm(3 * m + 2, generator=g)[:m].to(device)  # distinct, scattered
    cos_sin = rope_cos_sin_cache(head_dim, 64, 10000.0, device)
    pools = [rand(3 * m + 2, kv_heads, head_dim, seed=seed + 4 + i, device=device, dtype=dtype) for i in range(2)]
    return x, w, b, positions, cos_sin, pools, slots


def check_rope_store(args, q_heads: int, kv_heads: int, config: LinearConfig | None = None) -> None:
    x, w, b, positions, cos_sin, pools, slots = args
    head_dim = pools[0].shape[-1]
    ref_pools = [p.clone() for p in pools]
    want = linear_rope_store_ref(x, w, b, positions, cos_sin, *ref_pools, slots, q_heads, kv_heads)
    got = linear_rope_store(x, w, b, positions, cos_sin, *pools, slots, q_heads, kv_heads, config=config)
    check(split_qkv(got, q_heads, kv_heads, head_dim)[0], split_qkv(want, q_heads, kv_heads, head_dim)[0])
    for p, ref in zip(pools, ref_pools):  # slots written, and no other
        check(p, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3, 5])
@pytest.mark.parametrize("heads", [(3, 1), (4, 2)], ids=["gqa3", "gqa2-2kv"])
def test_linear_rope_store_matches_reference(device, dtype, m, heads):
    """RoPE and the KV store in the projection's epilogue (split K in the interpreter's config,
    so the last split to arrive runs it) against the projection then apply_rope_and_store_kv."""
    check_rope_store(rope_case(m, *heads, 8, 40, dtype, device, bias=True, seed=m), *heads)


@pytest.mark.parametrize("config", [
    LinearConfig(block_n=16, block_k=16, split_k=1, use_dot=True),   # tensor cores, pairs of 2 heads
    LinearConfig(block_n=2, block_k=32),                             # one pair per program, no split
    LinearConfig(block_n=8, block_k=16, split_k=3),                  # 4 pairs of head_dim 4: two heads a program
], ids=["dot", "one-pair", "heads-per-program"])
@pytest.mark.parametrize("m", [1, 4])
def test_linear_rope_store_explicit_configs(device, config, m):
    head_dim = 4 if config.block_n == 8 else 8
    check_rope_store(rope_case(m, 3, 1, head_dim, 48, torch.float32, device, bias=m == 1, seed=10 + m), 3, 1, config)


def test_linear_rope_store_large_m_falls_back(device):
    """Past M_MAX: cuBLAS, then the separate RoPE + store kernel; qkv's q equal all the same."""
    check_rope_store(rope_case(M_MAX + 3, 3, 1, 8, 24, torch.float32, device, bias=True, seed=30), 3, 1)


# --- the RMSNorm deferred into the projections (kernels/rmsnorm.py DeferredNorm) -------------------

NORM_CONFIGS = [
    None,  # the interpreter's default: FMAs, split K
    LinearConfig(block_n=16, block_k=32, split_k=3, use_dot=True),  # tensor cores, split K
    LinearConfig(block_n=8, block_k=16),  # FMAs, one split
]
NORM_IDS = ["default", "dot-split", "fma"]


@pytest.mark.parametrize("config", NORM_CONFIGS, ids=NORM_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3])
def test_linear_residual_matches_reference(device, dtype, m, config):
    """h = x @ w.T + residual and h * norm_weight, and each row's sum of squares added into sumsq
    (exactly the total of the programs' rounded parts: within one unit per program of sumsq_ref)."""
    n, k = 37, 72
    x = rand(m, k, seed=m, device=device, dtype=dtype)
    w = rand(n, k, seed=1, device=device, dtype=dtype, scale=k**-0.5)
    residual = rand(m, n, seed=2, device=device, dtype=dtype)
    norm_weight = rand(n, seed=3, device=device, dtype=dtype)
    start = torch.arange(m, device=device) * 1000  # added to, not overwritten
    sumsq, ref_sumsq = start.clone(), start.clone()
    h, weighted = linear_residual(x, w, residual, sumsq, norm_weight, config=config)
    want, want_weighted = linear_residual_ref(x, w, residual, ref_sumsq, norm_weight)
    check(h, want)
    check(weighted, want_weighted)
    programs = triton.cdiv(n, (config or LinearConfig(4, 16)).block_n)
    assert (sumsq - start > 0).all()
    assert ((sumsq - ref_sumsq).abs() <= programs + (h - want).abs().max().item() * 4 * n * SUMSQ_ONE).all()
    # the oracle's units: the sum of squares of the rows themselves
    torch.testing.assert_close((ref_sumsq - start).double() / SUMSQ_ONE, want.double().pow(2).sum(-1),
                               rtol=1e-5, atol=1e-5)


def deferred_case(m: int, k: int, dtype, device, seed: int):
    """(h * weight, norm, normed): un-normed rows h of varied scale times a norm weight, their
    sums of squares, and the independent oracle: the norm kernel's reference on h."""
    h = rand(m, k, seed=seed, device=device, dtype=dtype) * torch.arange(1, m + 1, device=device)[:, None].to(dtype)
    weight = rand(k, seed=seed + 1, device=device, dtype=dtype, scale=0.5) + 1
    return weight * h, DeferredNorm(sumsq_ref(h), 1e-6), rms_norm_ref(h, weight, 1e-6)[0]


@pytest.mark.parametrize("config", NORM_CONFIGS, ids=NORM_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3])
def test_deferred_norm_in_projections(device, dtype, m, config):
    """linear, linear_silu_mul and linear_rope_store given h * weight and a DeferredNorm equal
    the projections of RMSNorm(h) * weight computed apart."""
    x, norm, normed = deferred_case(m, 72, dtype, device, seed=20 + m)
    w = rand(2 * 19, 72, seed=7, device=device, dtype=dtype, scale=72**-0.5)
    bias = rand(2 * 19, seed=8, device=device, dtype=dtype)
    check(linear(x, w, bias, config=config, norm=norm), linear_ref(normed, w, bias))
    check(linear_silu_mul(x, w, config=config, norm=norm), linear_silu_mul_ref(normed, w))
    rope_cfg = config._replace(block_n=max(2, config.block_n)) if config else None
    args = rope_case(m, 3, 1, 8, 72, dtype, device, bias=True, seed=m)
    x, norm, normed = deferred_case(m, 72, dtype, device, seed=30 + m)
    ref_pools = [p.clone() for p in args[5]]
    want = linear_rope_store_ref(normed, *args[1:5], *ref_pools, args[6], 3, 1)
    got = linear_rope_store(x, *args[1:5], *args[5], args[6], 3, 1, config=rope_cfg, norm=norm)
    check(got[:, :24], want[:, :24])
    for p, ref in zip(args[5], ref_pools):
        check(p, ref)


def test_deferred_norm_past_m_max_falls_back(device):
    """cuBLAS sizes: the norm applied in torch first, the residual added in torch."""
    x, norm, normed = deferred_case(M_MAX + 2, 40, torch.float32, device, seed=40)
    w = rand(24, 40, seed=41, device=device, dtype=torch.float32)
    check(linear(x, w, norm=norm), linear_ref(normed, w))
    check(linear_silu_mul(x, w, norm=norm), linear_silu_mul_ref(normed, w))
    sumsq = torch.zeros(M_MAX + 2, dtype=torch.int64, device=device)
    norm_weight = rand(24, seed=43, device=device, dtype=torch.float32)
    h, weighted = linear_residual(x, w, rand(M_MAX + 2, 24, seed=42, device=device, dtype=torch.float32), sumsq,
                                  norm_weight)
    assert torch.equal(sumsq, sumsq_ref(h)) and torch.equal(weighted, h * norm_weight)


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


def run(x, w, bias, silu_mul: bool, config: LinearConfig | None = None,
        norm: DeferredNorm | None = None) -> torch.Tensor:
    return linear_silu_mul(x, w, config=config, norm=norm) if silu_mul else linear(x, w, bias, config=config, norm=norm)


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


@pytest.mark.parametrize("m", [1, 2, 3, 4, 8, 16])  # the sizes where the model defers its norms
@pytest.mark.parametrize("name,n,k,has_bias,silu_mul", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_deferred_norm(name, n, k, has_bias, silu_mul, m):
    """The served configs at real shapes: o and down add the residual, the rows' sums of squares
    and the next norm's weight (bitwise the same every run); qkv and gate_up finish a
    DeferredNorm, against the projection of the norm kernel's reference. (The two round
    differently: normed rows to bf16 before the projection, or its sums scaled after.)"""
    x, w, bias = gpu_case(n, k, m, has_bias, seed=m)
    g = torch.Generator(device="cuda").manual_seed(m)
    if name.endswith(("-o", "-down")):
        residual = torch.randn(m, n, device="cuda", generator=g).bfloat16()
        norm_weight = (torch.randn(n, device="cuda", generator=g) * 0.2 + 1).bfloat16()
        sums = [torch.zeros(m, dtype=torch.int64, device="cuda") for _ in range(2)]
        outs = [linear_residual(x, w, residual, s, norm_weight) for s in sums]
        want = (float_ref(x, w, None, False).float() + residual.float()).bfloat16()
        torch.testing.assert_close(outs[0][0], want, atol=2e-2, rtol=2e-2)
        assert torch.equal(outs[0][1], outs[0][0] * norm_weight)
        torch.testing.assert_close(sums[0].double() / SUMSQ_ONE, outs[0][0].double().pow(2).sum(-1),
                                   rtol=1e-6, atol=1e-3)
        assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1])) and torch.equal(sums[0], sums[1])
    else:
        h = x * 3
        weight = (torch.randn(k, device="cuda", generator=g) * 0.2 + 1).bfloat16()
        out = run(weight * h, w, bias, silu_mul, norm=DeferredNorm(sumsq_ref(h), 1e-6))
        want = float_ref(rms_norm_ref(h, weight, 1e-6)[0], w, bias, silu_mul)
        torch.testing.assert_close(out, want, atol=5e-2, rtol=3e-2)


@pytest.mark.parametrize("m", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("name,k,q_heads,kv_heads", [("1.5b", 1536, 12, 2), ("7b", 3584, 28, 4)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_linear_rope_store(name, k, q_heads, kv_heads, m):
    """The served qkv projection with RoPE + KV store (fused at small M) against the bf16
    reference ops at real shapes: q, and the pool slots written."""
    n = (q_heads + 2 * kv_heads) * 128
    x, w, bias = gpu_case(n, k, m, True, seed=m)
    g = torch.Generator(device="cuda").manual_seed(m)
    positions = torch.randint(0, 4000, (m,), device="cuda", generator=g)
    slots = torch.randperm(4 * m, device="cuda", generator=g)[:m]
    cos_sin = rope_cos_sin_cache(128, 4096, 1e6, "cuda")
    pools = [torch.randn(4 * m, kv_heads, 128, device="cuda", generator=g).bfloat16() for _ in range(2)]
    ref_pools = [p.clone() for p in pools]
    want = linear_rope_store_ref(x, w, bias, positions, cos_sin, *ref_pools, slots, q_heads, kv_heads)
    got = linear_rope_store(x, w, bias, positions, cos_sin, *pools, slots, q_heads, kv_heads)
    q_size = q_heads * 128
    torch.testing.assert_close(got[:, :q_size], want[:, :q_size], atol=3e-2, rtol=3e-2)
    for p, ref in zip(pools, ref_pools):
        torch.testing.assert_close(p, ref, atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 8])
def test_gpu_lm_head(m):
    x, w, _ = gpu_case(151936, 1536, m, False)
    torch.testing.assert_close(linear(x, w), float_ref(x, w, None, False), atol=2e-2, rtol=2e-2)
    weight = (torch.rand(1536, device="cuda") + 0.5).bfloat16()  # the final norm, deferred
    torch.testing.assert_close(linear(weight * x, w, norm=DeferredNorm(sumsq_ref(x), 1e-6)),
                               float_ref(rms_norm_ref(x, weight, 1e-6)[0], w, None, False), atol=2e-2, rtol=2e-2)


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


@pytest.mark.parametrize("m", [17, 24, 48, 64])
@pytest.mark.parametrize("name,n,k", [("1.5b-o", 1536, 1536), ("1.5b-down", 1536, 8960)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_linear_partials_then_norm_sum(name, n, k, m):
    """o and down as float32 split-K partials (one batched cuBLAS GEMM), summed by the norm kernel:
    the partials against the float32 reference, and the norm of their sum against the norm of
    the plain bf16 projection (bitwise the same every run)."""
    x, w, _ = gpu_case(n, k, m, False, seed=m)
    parts = linear_partials(x, w)
    assert parts is not None and parts.shape == (linear_module.PARTIAL_SPLITS, m, n)
    torch.testing.assert_close(parts, linear_partials_ref(x, w, parts.shape[0]), atol=1e-3, rtol=1e-3)
    g = torch.Generator(device="cuda").manual_seed(m)
    residual = torch.randn(m, n, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(n, device="cuda", generator=g) * 0.2 + 1).bfloat16()
    out, new_res = rms_norm_sum(parts, weight, 1e-6, residual)
    want_out, want_res = rms_norm_ref(float_ref(x, w, None, False), weight, 1e-6, residual)
    torch.testing.assert_close(new_res, want_res, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, want_out, atol=3e-2, rtol=3e-2)
    again = rms_norm_sum(linear_partials(x, w), weight, 1e-6, residual)
    assert torch.equal(again[0], out) and torch.equal(again[1], new_res)
    assert torch.equal(rms_norm(parts.sum(0).bfloat16(), weight, 1e-6, residual)[1], new_res)
