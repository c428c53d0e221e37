"""Sweep decode attention configs (kernels/attention.py: DecodeConfig and the split policy) at
serving shapes; print per-shape winners and a ranking of configs over all shapes, beside a
baseline kernels/attention.py timed in the same run.

Times are per call from replaying a CUDA graph of back-to-back calls. "cold": the calls rotate
over enough K/V pool copies (> 200 MB, as layers have their own pools) that K/V come from HBM,
not L2; the req->slot table is shared, as it is by the layers. "hot": one pool, as
bench/bench_kernels.py times it (K/V of a small batch stay in L2 across calls). Every config's
output is checked against the float32 reference, eager and after the replays (the fused merge's
counters must be back at zero between launches).

Kernels compile first in parallel processes (Triton's disk cache); the main process then times.
Winners go into kernels/tuned_configs.json (decode_attention).

Usage: python bench/tune_decode.py [--baseline PATH] [--budget 200] [--out DIR] [--workers 15] [--narrow]
       python bench/tune_decode.py --check: the served config vs the baseline only (cold and hot)
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import multiprocessing as mp
import os
import random
import sys
import time
from collections import defaultdict

import torch

from litelang.bench.tune_linear import replay_us
from litelang.kernels import attention
from litelang.kernels.attention import DecodeConfig, _decode_launch, decode_attention, decode_attention_ref, \
    decode_num_splits

BF16 = torch.bfloat16
DEV = "cuda"
Q_HEADS, KV_HEADS, HEAD_DIM = 12, 2, 128  # Qwen2-1.5B
ATTN_TOL = dict(atol=1.5e-2, rtol=2e-2)  # bf16 probabilities vs a float32 reference


def _lens(batch: int, lo: int, hi: int, seed: int) -> list[int]:
    return torch.randint(lo, hi + 1, (batch,), generator=torch.Generator().manual_seed(seed)).tolist()


# name: (context lengths, req_to_slot width)
SHAPES = {
    "b1x64": ([64], 2048),
    "b1x300": ([300], 32768),
    "b1x32k": ([32768], 32768),
    "b16x600-3k": (_lens(16, 600, 3000, 1), 32768),
    "b40x600-1200": (_lens(40, 600, 1200, 0), 2048),
    "b64x4096": ([4096] * 64, 4096),
    "b128x250-350": (_lens(128, 250, 350, 2), 32768),
    "b128x1800-2400": (_lens(128, 1800, 2400, 3), 32768),
    "b160x300-1500": (_lens(160, 300, 1500, 4), 32768),
}
BATCH1 = [name for name, (lens, _) in SHAPES.items() if len(lens) == 1]


def kernel_configs() -> list[DecodeConfig]:
    out = []
    for bn, warps, stages, prefetch in itertools.product([32, 64, 128], [4, 8], [1, 2, 3], [False, True]):
        if (bn == 32 and (warps == 8 or stages == 3)) or (bn == 128 and (warps == 4 or stages == 3)):
            continue
        out.append(DecodeConfig(bn, warps, stages, prefetch, 0))
    return out


FUSE = (0, 16)  # fused_merge_max: never, or up to 16 splits
POLICIES = [(512, 64), (256, 64), (768, 64), (1024, 64), (2048, 64), (512, 32), (512, 128)]  # (target, max splits)


def cfg_str(cfg: DecodeConfig, policy=None) -> str:
    s = (f"BN{cfg.block_n} w{cfg.num_warps} st{cfg.num_stages}{' pf' if cfg.prefetch else ''}"
         f"{' fuse' + str(cfg.fused_merge_max) if cfg.fused_merge_max else ''}")
    return s + (f" T{policy[0]}/{policy[1]}" if policy else "")


class Case:
    """One shape's inputs: `copies` K/V pools (cold rotation), one req->slot table, and q as a
    strided view of a fused qkv output (as the worker passes it)."""

    def __init__(self, lens: list[int], width: int, cold: bool, seed: int = 0):
        g = torch.Generator(device=DEV).manual_seed(seed)
        self.lens, self.batch = lens, len(lens)
        slots = sum(lens) + 64
        pool_bytes = 2 * slots * KV_HEADS * HEAD_DIM * 2
        self.copies = min(16, max(1, math.ceil(200e6 / pool_bytes))) if cold else 1
        self.k = [torch.randn(slots, KV_HEADS, HEAD_DIM, device=DEV, generator=g).to(BF16) for _ in range(self.copies)]
        self.v = [torch.randn(slots, KV_HEADS, HEAD_DIM, device=DEV, generator=g).to(BF16) for _ in range(self.copies)]
        perm = torch.randperm(slots, device=DEV, generator=g).to(torch.int32)  # shuffled slots
        rows = self.batch + 4
        self.r2s = torch.randint(0, slots, (rows, width), device=DEV, generator=g, dtype=torch.int32)
        self.rows = torch.randperm(rows, device=DEV, generator=g)[: self.batch].to(torch.int32)
        start = 0
        for row, n in zip(self.rows.tolist(), lens):
            self.r2s[row, :n] = perm[start : start + n]
            start += n
        self.seq_lens = torch.tensor(lens, device=DEV, dtype=torch.int32)
        qkv = torch.randn(self.batch, (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM, device=DEV, generator=g).to(BF16)
        self.q = qkv[:, : Q_HEADS * HEAD_DIM].view(self.batch, Q_HEADS, HEAD_DIM)
        self.scale = HEAD_DIM**-0.5
        self.ref = decode_attention_ref(self.q, self.k[0], self.v[0], self.r2s, self.rows, self.seq_lens, self.scale)

    def args(self, i: int):
        j = i % self.copies
        return self.q, self.k[j], self.v[j], self.r2s, self.rows, self.seq_lens, self.scale


def num_splits_for(cfg: DecodeConfig, policy, lens: list[int], width: int) -> int:
    return decode_num_splits(len(lens), KV_HEADS, width, cfg.block_n, *policy)


def ok(out: torch.Tensor, ref: torch.Tensor) -> bool:
    return bool(torch.isfinite(out).all()) and torch.allclose(out.float(), ref.float(), **ATTN_TOL)


def graph_us(case: Case, fn, target_us: float = 3000.0, reps: int = 5) -> tuple[float, bool]:
    """(per-call us, output right after the replays) for fn(*case.args(i)) captured in a graph."""
    eager = fn(*case.args(0))  # compiles (from the disk cache) and allocates the counters
    right = ok(eager, case.ref)
    torch.cuda.synchronize()
    # enough calls per replay that the replay's own start is small next to them
    t0 = time.perf_counter()
    for i in range(3):
        fn(*case.args(i))
    torch.cuda.synchronize()
    est = max((time.perf_counter() - t0) / 3 * 1e6, 5.0)  # host-bound upper bound for small kernels
    calls = max(20, min(200, math.ceil(target_us / est)))
    calls = math.ceil(calls / case.copies) * case.copies
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [fn(*case.args(i)) for i in range(calls)]
    graph.replay()
    us = replay_us(graph, calls, reps)
    right = right and ok(outs[0], case.ref)  # the first call of the last replay: counters were reset
    del graph, outs
    return us, right


def launcher(cfg: DecodeConfig, num_splits: int):
    return lambda *a: _decode_launch(*a, cfg, num_splits)


def load_baseline(path: str):
    spec = importlib.util.spec_from_file_location("decode_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decode_attention


def warm(job) -> str | None:
    """Compile in a worker process: one launch of (cfg, num_splits) on a tiny context."""
    cfg, num_splits, width = job
    try:
        q = torch.randn(2, Q_HEADS, HEAD_DIM, device=DEV).to(BF16)
        kv = torch.randn(16, KV_HEADS, HEAD_DIM, device=DEV).to(BF16)
        r2s = torch.zeros(2, width, device=DEV, dtype=torch.int32)
        rows = torch.arange(2, device=DEV, dtype=torch.int32)
        _decode_launch(q, kv, kv, r2s, rows, torch.ones(2, device=DEV, dtype=torch.int32), 0.1, cfg, num_splits)
        if DEV == "cuda":
            torch.cuda.synchronize()
        return None
    except Exception as e:  # noqa: BLE001 - report and skip the config
        return f"{type(e).__name__}: {str(e)[:300]}"


def _warm_indexed(item):
    i, job = item
    return i, warm(job)


def compile_key(cfg: DecodeConfig, num_splits: int):
    """What the launches specialize on: constexprs, and num_splits == 1 / divisible by 16."""
    fused = 1 < num_splits <= cfg.fused_merge_max
    pad = 1 << (num_splits - 1).bit_length()
    return (cfg._replace(fused_merge_max=0), fused, pad if fused or num_splits > 1 else 0, num_splits == 1,
            num_splits % 16 == 0)


def sweep(args) -> None:
    t0 = time.time()
    log = open(os.path.join(args.out, "tune_decode.txt"), "w") if args.out else None

    def say(line: str = "") -> None:
        print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()

    served = attention._decode_config(BF16)
    served_policy = (attention.DECODE_TARGET_PROGRAMS, attention.DECODE_MAX_SPLITS)
    if args.narrow:  # the served kernel config: its split policy and merge, a few neighbours
        jobs = [(served._replace(fused_merge_max=f), (t, served_policy[1])) for f in (0, 8, 16)
                for t in (128, 192, 256, 320, 384, 512)]
        jobs += [(served._replace(num_stages=4), served_policy), (served._replace(prefetch=False), served_policy)]
    else:
        jobs = [(c._replace(fused_merge_max=f), p) for c in kernel_configs() for f in FUSE for p in POLICIES]
        random.Random(0).shuffle(jobs)
    jobs = [(served, served_policy)] + [j for j in jobs if j != (served, served_policy)]
    # compile: one launch per distinct specialization
    reps = {}
    for cfg, policy in jobs:
        for lens, width in SHAPES.values():
            ns = num_splits_for(cfg, policy, lens, width)
            reps.setdefault(compile_key(cfg, ns), (cfg, ns, width))
    say(f"{len(jobs)} configs x {len(SHAPES)} shapes; {len(reps)} kernel variants to compile")
    # variants not compiled by the compile deadline are skipped (compiling them serially later
    # would eat the measuring budget)
    keys = list(reps)
    errors = {k: "not compiled by the deadline" for k in keys}
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for i, err in pool.imap_unordered(_warm_indexed, [(i, reps[k]) for i, k in enumerate(keys)]):
            errors[keys[i]] = err
            if time.time() > t0 + args.compile_budget:
                break
        pool.terminate()
    bad = {k for k, e in errors.items() if e}
    for k in list(bad)[:10]:
        say(f"compile/launch failed: {cfg_str(reps[k][0])} splits {reps[k][1]}: {errors[k]}")
    say(f"compiled in {time.time() - t0:.0f} s ({len(bad)} of {len(keys)} variants failed or skipped)")

    cases = {name: Case(lens, width, cold=True, seed=i) for i, (name, (lens, width)) in enumerate(SHAPES.items())}
    baseline = load_baseline(args.baseline) if args.baseline else None
    base = {}
    if baseline:
        for name, case in cases.items():
            base[name] = graph_us(case, baseline)
        say("baseline (cold): " + ", ".join(f"{n} {t:.2f}{'' if r else ' WRONG'}" for n, (t, r) in base.items()))

    # results[(cfg, policy)][shape] = (us, ok, num_splits); equal launches are timed once per shape
    results = defaultdict(dict)
    timed = {}
    deadline = t0 + args.budget
    csv = open(os.path.join(args.out, "tune_decode.csv"), "w") if args.out else None
    if csv:
        csv.write("shape,config,num_splits,us,ok\n")
    for cfg, policy in jobs:
        if time.time() > deadline:
            say(f"budget reached after {len(results)} of {len(jobs)} configs")
            break
        for name, case in cases.items():
            lens, width = SHAPES[name]
            ns = num_splits_for(cfg, policy, lens, width)
            if compile_key(cfg, ns) in bad:
                continue
            key = (name, compile_key(cfg, ns), ns)  # fuse16 past 16 splits is fuse0
            if key not in timed:
                timed[key] = graph_us(case, launcher(cfg, ns))
                if csv:
                    csv.write(f"{name},{cfg_str(cfg)},{ns},{timed[key][0]:.3f},{int(timed[key][1])}\n")
            results[(cfg, policy)][name] = (*timed[key], ns)
    if csv:
        csv.close()
    say(f"measured in {time.time() - t0:.0f} s")

    names = list(SHAPES)
    ref_time = {n: base[n][0] for n in names} if base else {n: results[jobs[0]][n][0] for n in names}
    wrong = sorted({cfg_str(c, p) for (c, p), r in results.items() for n, (_, right, _) in r.items() if not right})
    if wrong:
        say(f"WRONG results: {wrong[:20]}")

    say("\nper shape, cold (us): baseline | served now | best 4 (config, splits)")
    for n in names:
        rows = sorted({(t, cfg_str(c, p), r[n][2]) for (c, p), r in results.items() if n in r
                       for t, right in [r[n][:2]] if right})
        now = results[jobs[0]].get(n, (math.nan,))[0]
        say(f"{n}: {ref_time[n]:.2f} | {now:.2f} | " + "; ".join(f"{t:.2f} {c} s{ns}" for t, c, ns in rows[:4]))

    # one config for every shape: mean ratio to the baseline over the batch > 1 shapes, and the
    # largest slowdown at batch 1 (up to ~0.3 us is accepted for a faster large batch)
    complete = [(k, r) for k, r in results.items() if len(r) == len(names) and all(x[1] for x in r.values())]

    def score(r):
        big = [r[n][0] / ref_time[n] for n in names if n not in BATCH1]
        return sum(big) / len(big), max(r[n][0] - ref_time[n] for n in BATCH1)

    ranked = sorted(complete, key=lambda kr: score(kr[1])[0])
    say("\nranking (batch > 1: mean time / baseline; batch 1: worst us over baseline), us per shape:")
    say("| config | mean ratio | b1 worst +us | " + " | ".join(names) + " |")
    say("| --- " * (len(names) + 3) + "|")
    shown = ranked[: args.top] + [kr for kr in ranked if kr[0] == jobs[0]]
    for (c, p), r in shown:
        mean, b1 = score(r)
        cells = " | ".join(f"{r[n][0]:.2f}/{r[n][2]}" for n in names)
        say(f"| {cfg_str(c, p)} | {mean:.3f} | {b1:+.2f} | {cells} |")
    say("| baseline | 1 | 0 | " + " | ".join(f"{ref_time[n]:.2f}" for n in names) + " |")
    ok_b1 = [kr for kr in ranked if score(kr[1])[1] <= 0.3]
    if ok_b1:
        say(f"\nbest with batch 1 within +0.3 us: {cfg_str(*ok_b1[0][0])}")

    # hot (as bench_kernels.py) for the baseline, the served config and the top few
    say("\nhot (one pool, K/V may stay in L2), us:")
    hot = {name: Case(lens, width, cold=False, seed=i) for i, (name, (lens, width)) in enumerate(SHAPES.items())}
    chosen = ranked if args.narrow else shown[:3] + [kr for kr in ranked if kr[0] == jobs[0]]
    rows = ([("baseline", baseline, None)] if baseline else []) + [(cfg_str(c, p), c, p) for (c, p), _ in chosen]
    say("| config | " + " | ".join(names) + " |")
    for label, c, p in rows:
        ts = []
        for n in names:
            fn = c if label == "baseline" else launcher(c, num_splits_for(c, p, *SHAPES[n]))
            t, right = graph_us(hot[n], fn)
            ts.append(f"{t:.2f}{'' if right else ' WRONG'}")
        say(f"| {label} | " + " | ".join(ts) + " |")
    if baseline:  # drift: the baseline again, cold
        say("baseline again (cold): " + ", ".join(f"{n} {graph_us(cases[n], baseline)[0]:.2f}" for n in names))
    say(f"total {time.time() - t0:.0f} s")


def check(args) -> None:
    """The served decode_attention (policy and config as committed) vs the baseline, cold and hot."""
    baseline = load_baseline(args.baseline) if args.baseline else None
    print("| shape | cold now | cold before | hot now | hot before |")
    print("| --- | --- | --- | --- | --- |")
    for i, (name, (lens, width)) in enumerate(SHAPES.items()):
        cells = []
        for cold in (True, False):
            case = Case(lens, width, cold=cold, seed=i)
            for fn in (decode_attention, baseline):
                if fn is None:
                    cells.append("")
                    continue
                t, right = graph_us(case, fn)
                cells.append(f"{t:.2f}{'' if right else ' WRONG'}")
            del case
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help="an older kernels/attention.py to time beside")
    p.add_argument("--budget", type=float, default=200.0, help="seconds; stops measuring configs after this")
    p.add_argument("--compile-budget", type=float, default=100.0, help="seconds for the compile phase")
    p.add_argument("--workers", type=int, default=15)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", help="a folder for tune_decode.txt and tune_decode.csv")
    p.add_argument("--check", action="store_true", help="the served config vs the baseline only")
    p.add_argument("--narrow", action="store_true", help="only the served kernel config's split policy and merge, "
                   "and a few neighbours; every config timed hot too")
    args = p.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", file=sys.stderr)
    check(args) if args.check else sweep(args)


if __name__ == "__main__":
    main()
