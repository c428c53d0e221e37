"""Sweep kernels/attention.py's extend (prefill) attention configs at Qwen2-1.5B heads.

Cases: the benchmark's prefill (40 prompts x 600 tokens) and one 8k causal prompt. Each config
is checked once against the served config's output, then timed (CUDA events, median of 5 runs of
10 calls). The winner goes into kernels/tuned_configs.json (extend_attention).
Usage: python bench/tune_extend.py [--cases 40x600,1x8192]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from litelang.kernels import attention

Q_HEADS, KV_HEADS, HEAD_DIM = 12, 2, 128


def make_case(n: int, length: int):
    g = torch.Generator(device="cuda").manual_seed(n * length)
    tokens = n * length
    q = torch.randn(tokens, Q_HEADS, HEAD_DIM, device="cuda", generator=g).bfloat16()
    k = torch.randn(tokens + 1, KV_HEADS, HEAD_DIM, device="cuda", generator=g).bfloat16()
    v = torch.randn(tokens + 1, KV_HEADS, HEAD_DIM, device="cuda", generator=g).bfloat16()
    width = max(2048, length)
    req_to_slot = torch.zeros(n, width, dtype=torch.int32, device="cuda")
    req_to_slot[:, :length] = torch.randperm(tokens, device="cuda", generator=g).view(n, length).int()
    rows = torch.arange(n, dtype=torch.int32, device="cuda")
    cu = torch.arange(0, tokens + 1, length, dtype=torch.int32, device="cuda")
    prefix = torch.zeros(n, dtype=torch.int32, device="cuda")
    return (q, k, v, req_to_slot, rows, cu, prefix, HEAD_DIM**-0.5), length


def run(args, max_new_len: int, cfg: dict | None) -> torch.Tensor:
    served = attention._extend_config
    if cfg is not None:
        attention._extend_config = lambda dtype: cfg
    try:
        return attention.extend_attention(*args, max_new_len=max_new_len)
    finally:
        attention._extend_config = served


def time_us(args, max_new_len: int, cfg: dict | None) -> float:
    run(args, max_new_len, cfg)
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            run(args, max_new_len, cfg)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 100)  # us per call
    return sorted(times)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="40x600,1x8192")
    opts = ap.parse_args()
    configs = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
               for bm, bn, w, s in itertools.product([64, 128], [32, 64, 128], [4, 8], [2, 3, 4])
               if not (bm == 128 and bn == 128 and s == 4)]
    print("| case | config | us | TFLOP/s |")
    print("| --- | --- | --- | --- |", flush=True)
    for case in opts.cases.split(","):
        n, length = map(int, case.split("x"))
        args, max_new_len = make_case(n, length)
        flops = 4 * n * Q_HEADS * HEAD_DIM * length * (length + 1) / 2
        want = run(args, max_new_len, None)
        rows = [("served", time_us(args, max_new_len, None))]
        for cfg in configs:
            try:
                out = run(args, max_new_len, cfg)
                if not torch.allclose(out.float(), want.float(), atol=2e-2, rtol=2e-2):
                    print(f"| {case} | {cfg} | WRONG | |", flush=True)
                    continue
                rows.append((cfg, time_us(args, max_new_len, cfg)))
            except Exception as e:  # noqa: BLE001 - out of shared memory etc.
                print(f"| {case} | {cfg} | {type(e).__name__} | |", flush=True)
        for cfg, us in sorted(rows, key=lambda r: r[1])[:8]:
            print(f"| {case} | {cfg} | {us:.1f} | {flops / us / 1e6:.0f} |", flush=True)
        print(f"| {case} | served {attention._extend_config(torch.bfloat16)} | {rows[0][1]:.1f} | "
              f"{flops / rows[0][1] / 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
