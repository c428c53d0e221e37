"""Where batch-40 decode attention's time goes: the served kernel against read-only kernels
over the same K/V bytes (gathered through the slot table, and contiguous), cold and hot, and
the served kernel's time against context length.

    python -m litelang.bench.probe_attention            # read-only kernels, configs, context sweep
    python -m litelang.bench.probe_attention --merge    # the fused merge's cost; whole-row reads
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from litelang.bench.probes import stream_read_kernel
from litelang.bench.tune_decode import KV_HEADS, Case, graph_us, launcher
from litelang.bench.tune_linear import graph_time_us
from litelang.kernels.attention import DecodeConfig, decode_attention, decode_num_splits


@triton.jit
def _gather_read_kernel(K, V, Out, ReqToSlot, ReqRows, SeqLens, num_splits, stride_kt, stride_kh, stride_r,
                        HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Reads what decode attention reads (same grid, slots, tiles) and sums it: no softmax, no dots.
    With stride_kh 0, HEAD_DIM the whole row and one kv-head program: whole token rows."""
    b, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(SeqLens + b)
    row = ReqToSlot + tl.load(ReqRows + b).to(tl.int64) * stride_r
    per = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * per
    end = tl.minimum(start + per, seq_len)
    d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = n < end
        slot = tl.load(row + n, mask=mask, other=0).to(tl.int64)[:, None]
        k = tl.load(K + slot * stride_kt + kvh * stride_kh + d[None, :], mask=mask[:, None], other=0.0)
        v = tl.load(V + slot * stride_kt + kvh * stride_kh + d[None, :], mask=mask[:, None], other=0.0)
        acc += k.to(tl.float32) + v.to(tl.float32)
    tl.store(Out + ((b * tl.num_programs(1) + kvh) * tl.num_programs(2) + split) * HEAD_DIM + d, tl.sum(acc, 0))


def gather_reader(num_splits: int, block_n: int, warps: int, stages: int):
    def run(q, k, v, r2s, rows, lens, scale):
        out = torch.empty(len(lens) * KV_HEADS * num_splits * 128, device=q.device)
        _gather_read_kernel[(len(lens), KV_HEADS, num_splits)](
            k, v, out, r2s, rows, lens, num_splits, k.stride(0), k.stride(1), r2s.stride(0),
            HEAD_DIM=128, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
        return q  # (not checked)
    return run


def main() -> None:
    lens = torch.randint(600, 1201, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    for cold in (True, False):
        case = Case(lens, 2048, cold=cold)
        label = "cold" if cold else "hot"
        mb = sum(lens) * KV_HEADS * 128 * 2 * 2 / 1e6
        t, right = graph_us(case, decode_attention)
        print(f"{label}: served decode_attention, batch 40 x 600-1200 ({mb:.1f} MB): {t:.2f} us "
              f"({mb / t:.2f} TB/s){'' if right else ' WRONG'}", flush=True)
        for splits in (2, 3, 4, 8):
            for bn, w, st in ((64, 4, 3), (64, 2, 3), (128, 4, 2), (32, 4, 4)):
                t, _ = graph_us(case, gather_reader(splits, bn, w, st))
                print(f"{label}: gather-read splits {splits} BN{bn} w{w} st{st}: {t:.2f} us ({mb / t:.2f} TB/s)",
                      flush=True)
        for cfg in (DecodeConfig(64, 2, 3), DecodeConfig(64, 4, 4), DecodeConfig(128, 4, 2), DecodeConfig(32, 4, 4),
                    DecodeConfig(32, 2, 4), DecodeConfig(64, 2, 4)):
            for splits in (2, 4):
                try:
                    t, right = graph_us(case, launcher(cfg, splits))
                    print(f"{label}: attention {cfg} splits {splits}: {t:.2f} us{'' if right else ' WRONG'}", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"{label}: attention {cfg}: failed {type(e).__name__} {str(e)[:120]}")
        del case
    # contiguous streaming of the same bytes: 160 or 320 programs
    total = int(sum(lens) * KV_HEADS * 128 * 2)  # bf16 elements of K and V
    copies = [torch.randn(total, device="cuda").to(torch.bfloat16) for _ in range(6)]
    for progs in (160, 320, 640):
        per = total // progs // 1024 * 1024
        out = torch.empty(progs, device="cuda")
        t = graph_time_us(lambda i: stream_read_kernel[(progs,)](copies[i % 6], out, per, BLOCK=1024, num_warps=4),
                          60)
        print(f"cold: contiguous read {progs} programs ({per * progs * 2 / 1e6:.1f} MB): {t:.2f} us", flush=True)
    # served kernel against context length, batch 40 uniform
    for ctx in (150, 300, 600, 900, 1800, 3600):
        case = Case([ctx] * 40, 4096, cold=True)
        t, _ = graph_us(case, decode_attention)
        ns = decode_num_splits(40, KV_HEADS, 4096, 64)
        print(f"cold: served, batch 40 x {ctx} ({40 * ctx * 1024 / 1e6:.1f} MB, {ns} splits): {t:.2f} us", flush=True)
        del case



def both_reader(num_splits: int, block_n: int, warps: int, stages: int):
    def run(q, k, v, r2s, rows, lens, scale):
        out = torch.empty(len(lens) * num_splits * 256, device=q.device)
        # one program per (request, split) over whole token rows: both kv heads, 256 elements
        _gather_read_kernel[(len(lens), 1, num_splits)](
            k, v, out, r2s, rows, lens, num_splits, k.stride(0), 0, r2s.stride(0),
            HEAD_DIM=256, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
        return q
    return run


def no_merge(num_splits: int):
    """The served split kernel without its merge (wrong output past one split; timing only)."""
    from litelang.kernels import attention as a
    from litelang.kernels._triton import pdl_launch
    cfg = a._decode_config(torch.bfloat16)

    def run(q, k, v, r2s, rows, lens, scale):
        batch, heads, d = q.shape
        out = torch.empty_like(q)
        part_acc = torch.empty((batch, heads, num_splits, d), dtype=torch.float32, device=q.device)
        part_max = torch.empty((batch, heads, num_splits), dtype=torch.float32, device=q.device)
        a._decode_split_kernel[(batch, 2, num_splits)](
            q, k, v, out, r2s, rows, lens, part_acc, part_max, part_max, part_max, scale, num_splits,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
            r2s.stride(0), GROUP=6, GROUP_PAD=16, HEAD_DIM=128, BLOCK_N=cfg.block_n, DOT_F32=False,
            PREFETCH=True, FUSED_MERGE=False, MERGE_G=8, MERGE_CHUNK=1, LATE_RELEASE=a.LATE_RELEASE,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch())
        return out
    return run


def merge_probe() -> None:
    lens = torch.randint(600, 1201, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    mb = sum(lens) * KV_HEADS * 128 * 2 * 2 / 1e6
    for cold in (True, False):
        label = "cold" if cold else "hot"
        case = Case(lens, 2048, cold=cold)
        for splits in (1, 2, 3, 4, 6):
            t1, _ = graph_us(case, launcher(DecodeConfig(64, 4, 3), splits))
            t2, _ = graph_us(case, no_merge(splits))
            print(f"{label}: attention splits {splits}: {t1:.2f} us with merge, {t2:.2f} without", flush=True)
        for splits in (2, 4, 8):
            for bn, w, st in ((32, 4, 3), (64, 4, 2), (32, 8, 4), (64, 8, 3)):
                t, _ = graph_us(case, both_reader(splits, bn, w, st))
                print(f"{label}: gather-read both heads, splits {splits} BN{bn} w{w} st{st}: {t:.2f} us "
                      f"({mb / t:.2f} TB/s)", flush=True)
        del case


if __name__ == "__main__":
    import sys
    merge_probe() if "--merge" in sys.argv[1:] else main()
