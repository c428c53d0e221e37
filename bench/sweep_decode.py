"""In-model A/B of decode-step knobs at 40 x 600 in, 600 out: one process, one model, the batch-48
graph recaptured per variant, variants alternating over rounds (host-to-host spread is as large
as the effects, and isolated kernel timings do not always carry over to the model).

    python -m litelang.bench.sweep_decode --rounds 2 [--only base,greedy_4096]

A variant sets module knobs (kernels/linear.py CONFIGS, kernels/greedy.py) before its capture;
the base is the served code. Each run's tokens are checked against the base's ("TOKENS DIFFER").
"""

from __future__ import annotations

import argparse
import gc
import statistics
from pathlib import Path

import torch

from litelang.bench.bench_model import litelang_runner, prompts
from litelang.bench.driver import run_batch
from litelang.bench.shapes import random_checkpoint
from litelang.kernels import greedy, linear
from litelang.kernels.linear import _dot
from litelang.worker.cuda_graph import DecodeGraphs, batch_buckets

GATE_UP, QKV, LM_HEAD = (8960, 1536, True, 64), (2048, 1536, False, 64), (151936, 1536, False, 64)

VARIANTS: dict[str, dict] = {
    "base": {},
    "greedy_4096": {"greedy": (4096, 2048)},
    "greedy_4096_b1024": {"greedy": (4096, 1024)},
    "gate_up_32x64s4": {"configs": {GATE_UP: _dot(32, 64, stages=4)}},
    "gate_up_32x128s3": {"configs": {GATE_UP: _dot(32, 128, stages=3)}},
    "gate_up_64x128s3": {"configs": {GATE_UP: _dot(64, 128, stages=3)}},
    "gate_up_16x128s4": {"configs": {GATE_UP: _dot(16, 128, stages=4)}},
    "gate_up_64x64s3": {"configs": {GATE_UP: _dot(64, 64, stages=3)}},
    "qkv_32x64s6": {"configs": {QKV: _dot(32, 64, stages=6)}},
    "qkv_16x128s6": {"configs": {QKV: _dot(16, 128, stages=6)}},
    "qkv_32x128s4": {"configs": {QKV: _dot(32, 128, stages=4)}},
    "qkv_64x64s6_split2": {"configs": {QKV: _dot(64, 64, stages=6, split=2)}},
    "lm_64x128s4w4": {"configs": {LM_HEAD: _dot(64, 128, stages=4)}},
    "lm_128x64s6w8": {"configs": {LM_HEAD: _dot(128, 64, stages=6, warps=8)}},
    "lm_256x64s4w8": {"configs": {LM_HEAD: _dot(256, 64, stages=4, warps=8)}},
    "lm_128x128s3w8": {"configs": {LM_HEAD: _dot(128, 128, stages=3, warps=8)}},
    "lm_128x128s4w4": {"configs": {LM_HEAD: _dot(128, 128, stages=4)}},
}


def apply(variant: dict, served: dict) -> None:
    linear.CONFIGS.clear()
    linear.CONFIGS.update(served["configs"])
    linear.CONFIGS.update(variant.get("configs", {}))
    greedy.TARGET_PROGRAMS, greedy.BLOCK = variant.get("greedy", served["greedy"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-1.5b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variant names (base is always run)")
    ap.add_argument("--batch", type=int, default=40)
    args = ap.parse_args()
    names = ["base"] + [n for n in (args.only.split(",") if args.only else VARIANTS) if n and n != "base"]
    served = {"configs": dict(linear.CONFIGS), "greedy": (greedy.TARGET_PROGRAMS, greedy.BLOCK)}
    path = random_checkpoint(args.shape, Path("/tmp/litelang-bench") / args.shape)
    runner = litelang_runner(path, max_batch=64, max_context=2048, cuda_graphs=False)
    vocab = runner.model.spec.vocab_size
    bucket = next(b for b in batch_buckets(64) if b >= args.batch)  # the served graph's bucket
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    base_tokens = None  # every variant must give the base's tokens
    for rnd in range(args.rounds):
        for name in names:
            apply(VARIANTS[name], served)
            runner.graphs = None
            gc.collect()
            torch.cuda.empty_cache()
            graphs = DecodeGraphs(runner)
            graphs.buckets = [bucket]
            graphs.capture()
            runner.graphs = graphs
            run_batch(runner, prompts(args.batch, 600, vocab, 4), 8)
            r = run_batch(runner, prompts(args.batch, 600, vocab, 5), 600)
            tok_s = args.batch * 600 / (r.prefill_s + r.decode_s)
            tokens = [r.tokens[rid] for rid in sorted(r.tokens)]
            base_tokens = base_tokens or tokens
            same = "same tokens" if tokens == base_tokens else "TOKENS DIFFER"
            results[name].append((r.decode_s / 599 * 1000, tok_s))
            print(f"round {rnd} {name}: decode {r.decode_s / 599 * 1000:.4f} ms/step wall, "
                  f"{r.decode_gpu_ms / 599:.4f} GPU, prefill {r.prefill_s * 1000:.1f} ms, {tok_s:,.0f} tok/s, {same}",
                  flush=True)
    print("\n| variant | decode ms/step (wall), each round | tok/s, each round | mean tok/s vs base |")
    print("| --- | --- | --- | --- |")
    base = statistics.mean(t for _, t in results["base"])
    for name in names:
        steps = ", ".join(f"{s:.4f}" for s, _ in results[name])
        toks = ", ".join(f"{t:,.0f}" for _, t in results[name])
        mean = statistics.mean(t for _, t in results[name])
        print(f"| {name} | {steps} | {toks} | {100 * (mean / base - 1):+.2f}% |")


if __name__ == "__main__":
    main()
