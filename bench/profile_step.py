"""Where a decode (or prefill) step's GPU time goes: torch.profiler over eager steps.

    python -m litelang.bench.profile_step --shape qwen2-1.5b --batch 1 [--prefill 40x600]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from litelang.bench.bench_model import litelang_runner, prompts
from litelang.bench.driver import run_batch
from litelang.bench.shapes import random_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-1.5b")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prefill", default="", help="NxL: profile one prefill of N prompts of L tokens instead")
    ap.add_argument("--graphs", action="store_true", help="profile CUDA-graph replays (decode)")
    ap.add_argument("--prompt-len", type=int, default=32, help="decode: prompt tokens per request (context size)")
    args = ap.parse_args()
    path = random_checkpoint(args.shape, Path("/tmp/litelang-bench") / args.shape)
    runner = litelang_runner(path, max_batch=max(64, args.batch), max_context=max(2048, args.prompt_len + 64), cuda_graphs=args.graphs)
    vocab = runner.model.spec.vocab_size
    if args.prefill:
        n, length = map(int, args.prefill.split("x"))
        run_batch(runner, prompts(n, length, vocab, 0), 1)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run_batch(runner, prompts(n, length, vocab, 1), 1)
        steps = 1
    else:
        run_batch(runner, prompts(args.batch, args.prompt_len, vocab, 0), 8)
        steps = 20
        prof = profile(activities=[ProfilerActivity.CUDA])
        run_batch(runner, prompts(args.batch, args.prompt_len, vocab, 1), steps + 1, decode_context=prof)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    print(table)
    total = sum(e.device_time_total for e in prof.key_averages()) / 1000
    print(f"kernel time per step: {total / steps:.3f} ms over {steps} steps")


if __name__ == "__main__":
    main()
