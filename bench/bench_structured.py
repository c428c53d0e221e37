"""What structured outputs cost when served: streams with and without a format (a regex of
lowercase words, open-ended so every request runs its full length) at several batch sizes, and a
batch half of each kind. Prints a markdown table: output tok/s and inter-token latency.

    python -m litelang.bench.bench_structured --tokenizer DIR [--new 256] [--batches 1,32]
        [--kinds free,regex,mixed] [--trace DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
from pathlib import Path

from litelang.bench.bench_serving import TOKENIZER_FILES, Server, pct, rand_ids, run_concurrent
from litelang.bench.shapes import random_checkpoint
from litelang.proto import litelang_pb2 as pb

WORDS = pb.StructuredOutput(regex="[a-z ]*")


def row(name: str, batch: int, rec: dict) -> str:
    return (f"| {name} | {batch} | {sum(rec['tokens']) / rec['wall']:,.0f} | {pct(rec['itl'], 0.5) * 1000:.2f} | "
            f"{min(rec['tokens'])} to {max(rec['tokens'])} |")


async def mixed(address: str, prompts: list[list[int]], new: int) -> tuple[dict, dict]:
    half = len(prompts) // 2
    return await asyncio.gather(run_concurrent(address, prompts[:half], new),
                                run_concurrent(address, prompts[half:], new, structured_output=WORDS))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-1.5b")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--kinds", default="free,regex,mixed", help="which of free, regex, mixed to run")
    ap.add_argument("--trace", help="write the server's step traces here (bench/step_trace.py reads them)")
    args = ap.parse_args()
    kinds = set(args.kinds.split(","))
    if args.trace:
        os.environ["LITELANG_STEP_TRACE_DIR"] = args.trace  # the launched processes inherit it
    model = random_checkpoint(args.shape, Path("/tmp/litelang-bench") / args.shape)
    for name in TOKENIZER_FILES:
        if (Path(args.tokenizer) / name).exists():
            shutil.copy(Path(args.tokenizer) / name, model / name)
    Server.device = args.device
    server = Server(model)
    rng = random.Random(3)
    rows = ["| requests | batch | out tok/s | ITL p50, ms | tokens per request |", "| --- | --- | --- | --- | --- |"]
    try:
        asyncio.run(run_concurrent(server.address, [rand_ids(rng, 32)] * 4, 16, structured_output=WORDS))  # warm-up
        for batch in (int(b) for b in args.batches.split(",")):
            prompts = [rand_ids(rng, 32) for _ in range(batch)]
            if "free" in kinds:
                rows.append(row("free", batch, asyncio.run(run_concurrent(server.address, prompts, args.new))))
            if "regex" in kinds:
                rows.append(row("regex", batch, asyncio.run(run_concurrent(server.address, prompts, args.new,
                                                                           structured_output=WORDS))))
            if batch > 1 and "mixed" in kinds:
                free, constrained = asyncio.run(mixed(server.address, prompts, args.new))
                rows.append(row("half free: the free half", batch, free))
                rows.append(row("half free: the regex half", batch, constrained))
            print("\n".join(rows[-4:]), flush=True)
    finally:
        server.stop()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
