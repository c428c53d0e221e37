"""Model-level benchmarks on one GPU: litelang's worker vs HF transformers, same weights, same run.

    python -m litelang.bench.bench_model --shape qwen2-1.5b [--skip-hf]

Random weights at real shapes, bf16, EOS ignored (every request produces all its tokens).
Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from litelang.bench.driver import run_batch
from litelang.bench.shapes import random_checkpoint
from litelang.configs.schema import LitelangConfig
from litelang.worker.setup import build_runner


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist()


def litelang_runner(path: Path, max_batch: int, max_context: int, cuda_graphs: bool = True,
                    deterministic: bool = False):
    cfg = LitelangConfig(
        model=str(path), device="cuda", max_batch_size=max_batch, max_input_length=max_context // 2,
        max_output_length=max_context // 2, mem_usage=0.5, cuda_graphs=cuda_graphs, deterministic=deterministic,
    )
    return build_runner(cfg, rank=0)


def hf_generate_time(model, batch: list[list[int]], new_tokens: int) -> float:
    ids = torch.tensor(batch, device="cuda")
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    model.generate(ids[:, :8], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)  # warm up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, **kw)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-1.5b")
    ap.add_argument("--dir", default="/tmp/litelang-bench")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--workloads", default="decode1,batch40,prefill40")
    ap.add_argument("--decode-batch", type=int, default=64, help="batch for the decode-batch workload")
    ap.add_argument("--deterministic", action="store_true", help="the batch-invariant kernels (config deterministic)")
    args = ap.parse_args()
    path = random_checkpoint(args.shape, Path(args.dir) / args.shape)
    spec_vocab = 151936 if args.shape == "qwen2-1.5b" else 152064
    work = args.workloads.split(",")
    rows = []

    runner = litelang_runner(path, max_batch=max(64, args.decode_batch), max_context=2048,
                             deterministic=args.deterministic)
    results = {}
    if "decode1" in work:
        run_batch(runner, prompts(1, 32, spec_vocab, 1), 16)  # warm up
        r = run_batch(runner, prompts(1, 32, spec_vocab, 2), 256)
        results["decode1"] = r.decode_s / 255 * 1000
        print(f"decode1: GPU {r.decode_gpu_ms / 255:.3f} ms/step, idle share {100 * r.decode_idle_share:.1f}%")
    if "decodeB" in work:
        b = args.decode_batch
        run_batch(runner, prompts(b, 32, spec_vocab, 1), 8)
        r = run_batch(runner, prompts(b, 32, spec_vocab, 3), 256)
        results["decodeB"] = (r.decode_s / 255 * 1000, b * 255 / r.decode_s)
        print(f"decode{b}: GPU {r.decode_gpu_ms / 255:.3f} ms/step, idle share {100 * r.decode_idle_share:.1f}%")
    if "batch40" in work:
        run_batch(runner, prompts(40, 600, spec_vocab, 4), 8)
        r = run_batch(runner, prompts(40, 600, spec_vocab, 5), 600)
        results["batch40"] = 40 * 600 / (r.prefill_s + r.decode_s)
        print(f"batch40: prefill {r.prefill_s * 1000:.1f} ms, decode GPU {r.decode_gpu_ms / 599:.3f} ms/step, "
              f"idle share {100 * r.decode_idle_share:.1f}%")
    if "prefill40" in work:
        r = run_batch(runner, prompts(40, 600, spec_vocab, 6), 1)
        r = run_batch(runner, prompts(40, 600, spec_vocab, 7), 1)
        results["prefill40"] = r.prefill_s
    if "score40" in work:  # the same prefill with every prompt token scored (prompt_logprobs=0, then 5)
        run_batch(runner, prompts(40, 600, spec_vocab, 6), 1, score_top_n=0)
        results["score40"] = tuple(run_batch(runner, prompts(40, 600, spec_vocab, 7), 1, score_top_n=n).prefill_s
                                   for n in (0, 5))
    del runner
    gc.collect()
    torch.cuda.empty_cache()

    hf = {}
    if not args.skip_hf:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
        with torch.no_grad():
            if "decode1" in work:
                hf["decode1"] = hf_generate_time(model, prompts(1, 32, spec_vocab, 2), 64) / 64 * 1000
            if "decodeB" in work:
                b = args.decode_batch
                t = hf_generate_time(model, prompts(b, 32, spec_vocab, 3), 64)
                hf["decodeB"] = (t / 64 * 1000, b * 64 / t)
            if "batch40" in work:
                hf["batch40"] = 40 * 600 / hf_generate_time(model, prompts(40, 600, spec_vocab, 5), 600)
            if "prefill40" in work:
                hf["prefill40"] = hf_generate_time(model, prompts(40, 600, spec_vocab, 7), 1)

    def fmt(key: str, v) -> str:
        if v is None:
            return "—"
        if key == "decode1":
            return f"{v:.2f} ms/token"
        if key == "decodeB":
            return f"{v[0]:.2f} ms/step, {v[1]:,.0f} tok/s"
        if key == "batch40":
            return f"{v:,.0f} out tok/s"
        if key == "score40":
            return f"{v[0]:.3f} s (with top 5: {v[1]:.3f} s)"
        return f"{v:.3f} s"

    names = {
        "decode1": "decode, batch 1, 32-token prompt, 256 new",
        "decodeB": f"decode, batch {args.decode_batch}, 32-token prompts, 256 new",
        "batch40": "40 prompts × 600 in, 600 out",
        "prefill40": "prefill 40 × 600, 1 new token",
        "score40": "prefill 40 × 600 with prompt_logprobs, 1 new token",
    }
    print(f"\n| {args.shape} workload | litelang | HF eager (sdpa), same run |")
    print("| --- | --- | --- |")
    for key in work:
        rows.append(f"| {names[key]} | {fmt(key, results.get(key))} | {fmt(key, hf.get(key))} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
