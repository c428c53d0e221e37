"""Where a decode (or prefill) step's GPU time goes: torch.profiler over eager steps.

    python -m litelang.bench.profile_step --shape qwen2-1.5b --batch 1 [--prefill 40x600]
"""

from __future__ import annotations

import argparse
import collections
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
    print_critical_path(prof, steps)


def print_critical_path(prof, steps: int) -> None:
    """What each kernel adds to the chain: its end minus the end of the kernel before it (kernels
    of a step run one after another, so these sum to the GPU time). Under PDL a kernel starts
    before the one before it ends, so its own duration overstates what it costs."""
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    added = collections.defaultdict(list)
    duration = collections.defaultdict(list)
    last_end = None
    for i, e in enumerate(kernels):
        name = e.name[:60]
        if "_linear_kernel" in name and i + 1 < len(kernels):  # which projection: say what follows it
            name += " before " + kernels[i + 1].name[:24]
        end = e.time_range.end
        if last_end is not None and end > last_end:
            gap = e.time_range.start - last_end
            added[name].append(end - last_end if gap < 50 else end - e.time_range.start)  # (a new step: no chain)
        duration[name].append(e.time_range.elapsed_us())
        last_end = max(end, last_end or end)
    rows = sorted(added, key=lambda n: -sum(added[n]))
    print("| kernel | per step | added to the chain, us each | duration, us each | added per step, ms |")
    print("| --- | --- | --- | --- | --- |")
    for name in rows:
        a, d = added[name], duration[name]
        print(f"| {name} | {len(d) / steps:.0f} | {sum(a) / len(a):.2f} | {sum(d) / len(d):.2f} | "
              f"{sum(a) / steps / 1000:.3f} |")


if __name__ == "__main__":
    main()
