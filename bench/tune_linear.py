"""Sweep kernels/linear.py configs at Qwen2 decode shapes; print the best per (shape, M) vs cuBLAS.

Every time is a CUDA-graph replay of back-to-back calls rotating over enough weight copies
(> 256 MB) that no weight is still in L2 (50 MB) when read again, as in the model, where every
layer has its own weights. Kernels compile first in parallel processes (Triton's disk cache),
then the main process checks each config once against the reference and times it.

Usage: python bench/tune_linear.py [--shapes 1.5b|7b|all] [--ms 1,2,4,8,16] [--also 24,48] [--names qkv,o]
       [--csv PATH] [--budget 200]
       python bench/tune_linear.py --verify [--shapes ...] [--ms 1,16,24,32,48,64]: the served path only
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
import triton

from litelang.kernels.activation import silu_and_mul
from litelang.kernels.linear import LinearConfig, _launch, linear, linear_silu_mul, pick_config

BF16 = torch.bfloat16
# name: (N rows of the weight, K, bias, silu_mul)
SHAPES = {
    "1.5b": {"qkv": (2048, 1536, True, False), "o": (1536, 1536, False, False),
             "gate_up": (17920, 1536, False, True), "down": (1536, 8960, False, False),
             "lm_head": (151936, 1536, False, False)},
    "7b": {"qkv": (4608, 3584, True, False), "o": (3584, 3584, False, False),
           "gate_up": (37888, 3584, False, True), "down": (3584, 18944, False, False)},
}


def fma_configs(silu: bool, m: int) -> list[LinearConfig]:
    """FMA kernel: 8 (one 16-byte load) to 64 weight elements per thread per tile, fewer with
    SiLU (two tiles) and with more x rows (an accumulator per row)."""
    out = []
    limit = 64 // (2 if silu else 1) // (1 if m <= 2 else 2 if m <= 4 else 4)
    for bn, bk, warps in itertools.product([1, 2, 4, 8, 16], [256, 512, 1024, 2048, 4096], [2, 4, 8]):
        if 8 <= bn * bk // (32 * warps) <= max(8, limit) and (m == 1 or bn >= warps):
            out.append(LinearConfig(bn, bk, num_warps=warps))
    return out


def dot_configs(silu: bool, m: int = 16) -> list[LinearConfig]:
    """Tensor-core kernel: 16 (M <= 16) or 32 (M > 16, an x tile of up to 64 rows) to 128 weight
    rows per program, 8 warps for 128 rows (256 rows and 4 warps for 128 never won at M = 32, 64)."""
    block_m = max(16, triton.next_power_of_2(m))
    out = []
    for bn, bk, stages, warps in itertools.product([16, 32, 64, 128, 256], [64, 128, 256], [3, 4, 6], [4, 8]):
        if m <= 16:
            keep = bn <= 128 and not (bk == 64 and bn < 64) and (warps == 4) != (bn == 128)
        else:
            keep = 32 <= bn <= 128 and not (bk == 64 and bn < 64) and (warps == 8) == (bn == 128)
        smem = stages * (bn * (2 if silu else 1) + block_m) * bk * 2
        if keep and smem <= 200 * 1024:
            out.append(LinearConfig(bn, bk, num_stages=stages, num_warps=warps, use_dot=True))
    return out


def with_splits(cfg: LinearConfig, n: int, k: int) -> list[LinearConfig]:
    """Split-K variants giving between ~1 and ~16 programs per SM (always split 1)."""
    blocks = -(-n // cfg.block_n)
    out = [cfg]
    for split in (2, 3, 4, 6, 8, 12):
        if k // split >= cfg.block_k and 100 <= blocks * split <= 2200 and blocks < 1000:
            out.append(cfg._replace(split_k=split))
    return out


def tasks_for(shape: tuple, m: int, lm_head: bool) -> list[LinearConfig]:
    n, k, _, silu = shape
    rows = n // 2 if silu else n
    if lm_head:  # one 467 MB weight, rows enough without splits: a shorter list
        fma = [c for c in fma_configs(False, m) if c.block_n >= 2 and c.block_k <= 2048] if m <= 8 else []
        dot = [c for c in dot_configs(False, m) if c.block_n >= 64 and c.num_stages >= 4] if m > 1 else []
        out = fma + dot
    else:
        cfgs = ((fma_configs(silu, m) if m <= 4 else [])  # FMAs never won at M = 8
                + [c for c in dot_configs(silu, m) if m > 1 or (c.block_n == 16 and c.num_stages <= 4)])
        out = [s for c in cfgs for s in with_splits(c, rows, k)]
    default = pick_config(m, rows, k, silu)  # None: cuBLAS, timed anyway
    return out if default is None or default in out else out + [default]


def make(shape: tuple, m: int, copies: int, seed: int = 0, init: bool = True):
    n, k, has_bias, _ = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    if not init:  # compiling only
        ws = [torch.zeros(n, k, device="cuda", dtype=BF16)]
    else:
        ws = [(torch.randn(n, k, device="cuda", generator=g) * 0.02).to(BF16) for _ in range(copies)]
    bias = (torch.randn(n, device="cuda", generator=g) * 0.02).to(BF16) if has_bias else None
    x = torch.randn(m, k, device="cuda", generator=g).to(BF16)
    return ws, bias, x


def call(shape, x, w, bias, cfg: LinearConfig | str | None):
    """cfg None: cuBLAS (+ the Triton silu_and_mul for gate_up); "served": linear /
    linear_silu_mul as the model calls them; else the Triton kernel with that config."""
    n, _, _, silu = shape
    if cfg is None:
        return silu_and_mul(F.linear(x, w)) if silu else F.linear(x, w, bias)
    if cfg == "served":
        return linear_silu_mul(x, w) if silu else linear(x, w, bias)
    return _launch(x, w, bias, n // 2 if silu else n, silu, cfg)


def rotation(shape) -> tuple[int, int]:
    """(weight copies, calls per graph): > 256 MB of weights, so each read comes from HBM."""
    n, k = shape[:2]
    copies = max(1, -(-256 * 2**20 // (n * k * 2)))
    return copies, max(copies, 24 if copies > 1 else 8)


def rotating_us(shape, m: int, cfg) -> float:
    """Per-call time of call(..., cfg) at M = m in a CUDA graph over rotating weight copies."""
    copies, calls = rotation(shape)
    ws, bias, x = make(shape, m, copies)
    return graph_time_us(lambda i: call(shape, x, ws[i % copies], bias, cfg), calls)


def warm(job):
    """Compile in a worker process: one launch per distinct kernel specialization."""
    shape, m, cfg = job
    try:
        ws, bias, x = make(shape, m, 1, init=False)
        call(shape, x, ws[0], bias, cfg)
        torch.cuda.synchronize()
        return None
    except Exception as e:  # noqa: BLE001 - report and skip the config
        return f"{type(e).__name__}: {str(e)[:200]}"


def compile_key(shape, m, cfg):
    n, k, bias, silu = shape
    block_m = max(16, triton.next_power_of_2(m)) if cfg.use_dot else triton.next_power_of_2(m)
    return (bias, silu, cfg.split_k, k % cfg.block_k == 0, cfg.use_dot, block_m,
            cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages)


def replay_us(graph: torch.cuda.CUDAGraph, calls: int, reps: int = 5) -> float:
    """Median over `reps` timed replays of a captured graph of `calls` calls: us per call (for
    the tune scripts, whose graphs rotate their arguments over copies)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def graph_time_us(fn, calls: int, reps: int = 5) -> float:
    """Per-call time of `calls` fn(i) captured in one CUDA graph, median over reps replays."""
    fn(0)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    us = replay_us(graph, calls, reps)
    del graph
    return us


def cfg_str(c: LinearConfig | None) -> str:
    if c is None:
        return "cuBLAS"
    kind = f"dot st{c.num_stages}" if c.use_dot else "fma"
    return f"{kind} BN{c.block_n} BK{c.block_k} s{c.split_k} w{c.num_warps}"


def bucket_of(m: int) -> int:
    return 1 << (m - 1).bit_length()


def row_for(model: str, name: str, m: int, rows: list, top: int, default_cfg) -> str:
    """One markdown row: cuBLAS, the best config and its GB/s, runners-up, the served default."""
    n, k, _, silu = SHAPES[model][name]
    cublas = next((us for us, c, _ in rows if c is None), float("nan"))
    mine = sorted((r for r in rows if r[1] is not None and r[2]), key=lambda r: r[0])
    wrong = [cfg_str(c) for _, c, ok in rows if c is not None and not ok]
    if not mine:
        return f"| {model} | {name} | {m} | {cublas:.2f} | - | | none measured | | |"
    us, c, _ = mine[0]
    dus = cublas if default_cfg is None else next((u for u, cc, _ in mine if cc == default_cfg), float("nan"))
    gbs = n * k * 2 / (us * 1e-6) / 1e9
    ups = ", ".join(f"{cfg_str(cc)} {u:.2f}" for u, cc, _ in mine[1:top])
    return (f"| {model} | {name} [{n}x{k}] | {m} | {cublas:.2f} | {us:.2f} | {gbs:.0f} | {cfg_str(c)} | {ups} "
            f"| {dus:.2f} |" + (f" WRONG: {wrong}" if wrong else ""))


def measure(shape, m: int, cfgs: list, ws, bias, deadline: float, bad=frozenset()) -> list:
    """[(us, cfg, ok)] for cuBLAS (cfg None) and each config, checked once against float32."""
    copies, calls = rotation(shape)
    x = torch.randn(m, shape[1], device="cuda", generator=torch.Generator("cuda").manual_seed(m)).to(BF16)
    ref = call(shape, x.float(), ws[0].float(), None if bias is None else bias.float(), None).to(BF16)
    rows = []
    for c in [None] + cfgs:
        if c is not None and compile_key(shape, m, c) in bad:
            continue
        if time.time() > deadline:
            break
        out = call(shape, x, ws[0], bias, c)
        ok = torch.allclose(out.float(), ref.float(), atol=3e-2, rtol=3e-2)
        us = graph_time_us(lambda i: call(shape, x, ws[i % copies], bias, c), calls)
        rows.append((us, c, ok))
    return rows


def sweep(args, models: list[str], ms: list[int]) -> None:
    """Every candidate config per (shape, M), then (--also) the top few at other M of the same
    bucket, each beside cuBLAS."""
    t0 = time.time()
    also = [int(v) for v in args.also.split(",")] if args.also else []
    jobs = []  # (model, name, m, cfg)
    for model in models:
        for name, shape in SHAPES[model].items():
            if args.names and name not in args.names.split(","):
                continue
            for m in ms:
                jobs += [(model, name, m, c) for c in tasks_for(shape, m, name == "lm_head")]
    reps = {}
    for model, name, m, c in jobs:
        reps.setdefault(compile_key(SHAPES[model][name], m, c), (SHAPES[model][name], m, c))
    print(f"{len(jobs)} timings, {len(reps)} kernel variants to compile", flush=True)
    with mp.get_context("spawn").Pool(args.workers) as pool:
        errors = dict(zip(reps, pool.map(warm, list(reps.values()), chunksize=1)))
    bad = {k for k, e in errors.items() if e}
    for k in bad:
        print("compile/launch failed:", reps[k][2], errors[k])
    print(f"compiled in {time.time() - t0:.0f} s", flush=True)

    by_shape = defaultdict(list)
    for model, name, m, c in jobs:
        by_shape[(model, name, m)].append(c)
    deadline = t0 + args.budget
    best = {}
    csv = open(args.csv, "w") if args.csv else None
    if csv:
        csv.write("model,shape,m,us,ok,config\n")
    print("\n| model | shape | M | cuBLAS us | best us | GB/s | best config | runners-up | default |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for (model, name, m), cfgs in by_shape.items():
        if time.time() > deadline:
            print(f"budget reached: stopped before {model} {name} M={m}", flush=True)
            break
        shape = SHAPES[model][name]
        n, k, _, silu = shape
        ws, bias, _ = make(shape, m, rotation(shape)[0])
        rows = measure(shape, m, cfgs, ws, bias, deadline, bad)
        default = pick_config(m, n // 2 if silu else n, k, silu)
        print(row_for(model, name, m, rows, args.top, default), flush=True)
        mine = sorted((r for r in rows if r[1] is not None and r[2]), key=lambda r: r[0])
        if mine:
            best[(model, name, m)] = mine[0][1]
        for m2 in [v for v in also if bucket_of(v) == m and mine]:
            rows2 = measure(shape, m2, [c for _, c, _ in mine[: args.top]], ws, bias, deadline + 30)
            print(row_for(model, name, m2, rows2, args.top, default), flush=True)
            rows += [(u, c, ok) for u, c, ok in rows2]  # csv only
        if csv:
            for us, c, ok in rows:
                csv.write(f"{model},{name},{m},{us:.3f},{int(ok)},{cfg_str(c)}\n")
            csv.flush()
        del ws
        torch.cuda.empty_cache()
    print("\nrows for kernels/tuned_configs.json's linear table (add \"commit\": the commit measured):")
    for (model, name, m), c in best.items():
        n, k, _, silu = SHAPES[model][name]
        row = {"layer": f"Qwen2-{model.upper()} {name}", "n": n // 2 if silu else n, "k": k, "silu_mul": silu, "m": m,
               "config": c._asdict()}
        print(f"  {json.dumps(row)},")
    print(f"total {time.time() - t0:.0f} s")


def verify(models: list[str], ms: list[int], names: str | None) -> None:
    """The served path (linear / linear_silu_mul as the model calls them) beside cuBLAS at each M."""
    from litelang.kernels.linear import M_MAX

    print(f"M_MAX = {M_MAX}")
    print("| model | shape | M | cuBLAS us | served us | served GB/s |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    for model in models:
        for name, shape in SHAPES[model].items():
            if names and name not in names.split(","):
                continue
            n, k, _, silu = shape
            copies, calls = rotation(shape)
            ws, bias, _ = make(shape, 1, copies)
            for m in ms:
                x = torch.randn(m, k, device="cuda").to(BF16)
                cublas = graph_time_us(lambda i: call(shape, x, ws[i % copies], bias, None), calls)
                served = graph_time_us(lambda i: call(shape, x, ws[i % copies], bias, "served"), calls)
                gbs = n * k * 2 / (served * 1e-6) / 1e9
                print(f"| {model} | {name} [{n}x{k}] | {m} | {cublas:.2f} | {served:.2f} | {gbs:.0f} |", flush=True)
            del ws
            torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1.5b", choices=["1.5b", "7b", "all"])
    p.add_argument("--ms", default="1,2,4,8,16")
    p.add_argument("--also", help="after each bucket's sweep, time its top configs at these M too (e.g. 24,48)")
    p.add_argument("--budget", type=float, default=200.0, help="seconds; stops measuring after this")
    p.add_argument("--workers", type=int, default=15)
    p.add_argument("--top", type=int, default=4)
    p.add_argument("--csv", help="write every timing here")
    p.add_argument("--names", help="only these shapes, e.g. qkv,o")
    p.add_argument("--verify", action="store_true", help="served path vs cuBLAS only, no sweep")
    args = p.parse_args()
    ms = [int(v) for v in args.ms.split(",")]
    models = ["1.5b", "7b"] if args.shapes == "all" else [args.shapes]
    if args.verify:
        verify(models, ms, args.names)
    else:
        sweep(args, models, ms)


if __name__ == "__main__":
    main()
