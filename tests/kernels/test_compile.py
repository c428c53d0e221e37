"""Every kernel compiles for an H100 (sm_90), checked on machines without a GPU.

The interpreter runs kernels as Python, so code the GPU compiler rejects (type mismatches in
loops, unsupported ops) would pass the CPU tests. Triton can compile ahead of time for a target
with no device present; this does that in a subprocess with TRITON_INTERPRET=0, with the block
sizes the wrappers pick on a GPU. Run directly (`python tests/kernels/test_compile.py`) to also see
shared memory per kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
          torch.int64: "i64", torch.uint8: "u8"}


def _compile(kernel, args: dict, num_warps: int = 4, num_stages: int = 2):
    """Compile `kernel` for sm_90 with args given as dtypes (pointers), ints, floats or constexprs,
    specializing like the launcher: 16-byte aligned pointers, ints divisible by 16 marked so."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = args[name]
        if kernel.params[i].is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.dtype):
            signature[name] = "*" + _TYPES[value]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, int):
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    src = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages))


def _cases():
    """(kernel, args, launch options) for the configurations the wrappers use on a GPU."""
    from litelang.kernels import activation, attention, batch_invariant, decode_inputs, greedy, kv_store, linear, rmsnorm, \
        rope, rope_store, sampling
    from litelang.kernels._triton import triton

    bf, f32, i32, i64 = torch.bfloat16, torch.float32, torch.int32, torch.int64
    for x, splits in ((bf, 0), (f32, 2)):  # rms_norm, and rms_norm_sum over a projection's split-K partials
        yield rmsnorm._rms_norm_kernel, dict(PDL=True, X=x, Residual=bf, Weight=bf, Out=bf, NewResidual=bf,
                                             stride_x=1536, stride_r=1536, stride_o=1536, stride_nr=1536,
                                             stride_xs=48 * 1536 if splits else 0, hidden=1536, eps=1e-6,
                                             HAS_RESIDUAL=True, BLOCK=2048, SPLITS=splits), dict(num_warps=4)
    yield rope._rope_kernel, dict(Q=bf, K=bf, Positions=i64, CosSin=f32, stride_qt=2048, stride_qh=128, stride_kt=2048,
                                  stride_kh=128, stride_cs=128, q_heads=12, k_heads=2, HALF=64, Q_HEADS_PAD=16,
                                  K_HEADS_PAD=2), {}
    yield rope_store._rope_store_kernel, dict(PDL=True, Q=bf, K=bf, V=bf, Positions=i64, CosSin=f32, KPool=bf, VPool=bf,
                                              Slots=i64, stride_qt=2048, stride_qh=128, stride_kt=2048, stride_kh=128,
                                              stride_vt=2048, stride_vh=128, stride_cs=128, stride_pk=256,
                                              stride_ph=128, stride_pvk=256, stride_pvh=128, q_heads=12, kv_heads=2,
                                              HALF=64, Q_HEADS_PAD=16, KV_HEADS_PAD=2), {}
    yield activation._silu_and_mul_kernel, dict(X=bf, Out=bf, stride_x=17920, stride_o=8960, inter=8960, BLOCK=1024), {}
    yield kv_store._store_kv_kernel, dict(KPool=bf, VPool=bf, K=bf, V=bf, Slots=i64, stride_pk=256, stride_ph=128,
                                          stride_pvk=256, stride_pvh=128, stride_kt=2048, stride_kh=128,
                                          stride_vt=2048, stride_vh=128, kv_heads=2, HEAD_DIM=128,
                                          HEADS_PAD=2), dict(num_warps=1)
    for dtype in (bf, f32):
        for head_dim, group in ((128, 6), (64, 7)):
            cfg = attention._extend_config(dtype)
            strides = dict(stride_kt=2 * head_dim, stride_kh=head_dim, stride_vt=2 * head_dim, stride_vh=head_dim,
                           stride_r=32768)
            blocks = dict(BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"])
            yield attention._extend_kernel, dict(
                Q=dtype, K=dtype, V=dtype, Out=dtype, ReqToSlot=i32, ReqRows=i32, CuSeqlens=i32, PrefixLens=i32,
                qk_scale=0.1, stride_qt=2 * group * head_dim, stride_qh=head_dim, stride_ot=2 * group * head_dim,
                stride_oh=head_dim, GROUP=group, HEAD_DIM=head_dim, DOT_F32=dtype == f32, **strides, **blocks,
                HEAD_ROWS=head_dim == 128,  # and the batch-invariant decode's variant
            ), dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
            cfg = attention._decode_config(dtype)
            for num_splits in (64, 6):  # the fused merge in chunks of 8 splits; in one chunk
                fused = 1 < num_splits <= cfg.fused_merge_max
                yield attention._decode_split_kernel, dict(PDL=True, 
                    Q=dtype, K=dtype, V=dtype, Out=dtype, ReqToSlot=i32, ReqRows=i32, SeqLens=i32, PartAcc=f32,
                    PartMax=f32, PartSum=f32, Counters=i32, qk_scale=0.1, num_splits=num_splits,
                    stride_qb=2 * group * head_dim, stride_qh=head_dim, stride_ob=group * head_dim, stride_oh=head_dim,
                    GROUP=group, GROUP_PAD=16, HEAD_DIM=head_dim, BLOCK_N=cfg.block_n, DOT_F32=dtype == f32,
                    PREFETCH=cfg.prefetch, FUSED_MERGE=fused, MERGE_G=triton.next_power_of_2(group),
                    MERGE_CHUNK=min(8, triton.next_power_of_2(num_splits)) if fused else 1, LATE_RELEASE=True, **strides,
                ), dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        yield attention._decode_merge_kernel, dict(PDL=True, PartAcc=f32, PartMax=f32, PartSum=f32, Out=dtype, SeqLens=i32,
                                                   stride_ob=1536, stride_oh=128, num_splits=51, HEAD_DIM=128,
                                                   BLOCK_N=64, SPLITS_PAD=64), dict(num_warps=4)
    for filtered in (True, False):
        yield sampling._gumbel_candidates_kernel, dict(X=f32, TokenIds=i64, Temperature=f32, Keys=i64, Cand=i32,
                                                       vocab=151936, stride_x=151936, stride_t=151936,
                                                       SCALE=not filtered, SORTED=filtered,
                                                       BLOCK=sampling._sample_block(151936)), dict(num_warps=8)
    # linear: the M = 1 FMA stream (with and without the weight prefetch; 1.5B down and o), tensor
    # cores with split K and the fused SiLU, a 64-row x tile
    for m, n, k, silu, prefetch, cfg in ((1, 2048, 1536, False, True, linear.pick_config(1, 2048, 1536)._replace(block_n=2)),
                                         (1, 8960, 1536, True, True, linear.pick_config(1, 8960, 1536, True)),
                                         (1, 1536, 8960, False, True, linear.pick_config(1, 1536, 8960)),
                                         (1, 1536, 1536, False, False, linear.pick_config(1, 1536, 1536)),
                                         (8, 1536, 8960, False, True, linear.pick_config(8, 1536, 8960)),
                                         (8, 8960, 1536, True, True, linear.pick_config(8, 8960, 1536, True)),
                                         (64, 1536, 8960, False, True, linear.LinearConfig(32, 128, 8, 4, 3, use_dot=True)),
                                         (64, 8960, 1536, True, True, linear.pick_config(64, 8960, 1536, True))):
        block_m = max(16, m) if cfg.use_dot else m
        rope = n == 2048 or (m == 8 and not silu)  # 1.5B qkv with RoPE + store; and on split-K tensor cores
        # the deferred RMSNorm: applied by qkv and gate_up, accumulated by o and down (M <= 16)
        norm, add_residual = m <= 8 and (rope or silu), m <= 8 and n == 1536
        yield linear._linear_kernel, dict(
            PDL=True, X=bf, W=bf, Bias=bf, Out=bf, Partial=f32, Counters=i32, Positions=i64, CosSin=f32, KPool=bf,
            VPool=bf, Slots=i64, SumSq=i64, Residual=bf, NormW=bf, Weighted=bf, stride_rm=n, eps=1e-6, NORM=norm,
            ADD_RESIDUAL=add_residual, SUMSQ_UNIT=rmsnorm.SUMSQ_ONE, M=m, N=n, K=k, stride_xm=k, stride_om=n, up_row=n,
            k_per_split=triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k,
            stride_cs=128, stride_pk=256, stride_ph=128, stride_pvk=256, stride_pvh=128, q_size=1536, kv_size=256,
            HAS_BIAS=not silu, SILU_MUL=silu, SPLITS=cfg.split_k, EVEN_K=k % cfg.block_k == 0, USE_DOT=cfg.use_dot,
            DOT_F32=False, BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, VEC=8, PREFETCH=prefetch,
            ROPE=rope, HALF=64 if rope else 1, LATE_RELEASE=True,
        ), dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    # the batch-invariant projection: narrow and wide bf16 tiles with a bias, float32 (M is never specialized)
    for dtype, n, k, bias in ((bf, 2048, 1536, True), (bf, 17920, 1536, False), (f32, 1536, 8960, False)):
        cfg = batch_invariant.tile_config(n, k, dtype)
        yield batch_invariant._linear_kernel, dict(
            X=dtype, W=dtype, Bias=dtype, Out=dtype, M=37, N=n, K=k, stride_xm=k, stride_om=n, HAS_BIAS=bias,
            DOT_F32=dtype == f32, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        ), dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    yield greedy._greedy_chunk_kernel, dict(PDL=True, Logits=bf, PartMax=f32, PartIdx=i32, PartSum=f32, vocab=151936,
                                            stride_b=151936, chunk=4096, num_chunks=38, BLOCK=2048), dict(num_warps=8)
    for store_last in (False, True):
        yield greedy._greedy_merge_kernel, dict(PDL=True, PartMax=f32, PartIdx=i32, PartSum=f32, Tokens=i64, Logprobs=f32,
                                                LastTokens=i64, Rows=i64, num_chunks=38, CHUNKS_PAD=64,
                                                STORE_LAST=store_last), dict(num_warps=1)
    yield decode_inputs._decode_inputs_kernel, dict(PDL=True, Embed=bf, LastTokens=i64, ReqToSlot=i32, Rows=i64, Slots=i64,
                                                    SeqLens=i64, Out=bf, hidden=1536, stride_r=32768, BLOCK=1024), {}
    yield sampling._penalties_kernel, dict(Logits=f32, Counts=i32, PromptMask=torch.uint8, Repetition=f32,
                                           Frequency=f32, Presence=f32, Out=f32, vocab=151936, stride_l=151936,
                                           stride_c=151936, stride_m=151936, stride_o=151936, BLOCK=2048), {}


def main() -> None:
    for kernel, args, options in _cases():
        compiled = _compile(kernel, args, **options)
        consts = {k: args[k] for i, k in enumerate(kernel.arg_names) if kernel.params[i].is_constexpr}
        print(f"{kernel.__name__} {consts}: shared {compiled.metadata.shared} B", flush=True)


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]


if __name__ == "__main__":
    main()
