"""Where the first 128-stream run after start-up loses ~1.3 s (seen in `bench_serving --only
openai`, on the gRPC path and on the gateway's alike): one server with step traces on, a
16-token warm-up at 128 streams, then three 256-token runs; prints each run's wall time and
TTFT, then the longest pauses in the worker's and the engine's step traces inside each run.

    python -m litelang.bench.probe_first_burst --tokenizer DIR [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import time
from pathlib import Path

from litelang.bench.bench_serving import TOKENIZER_FILES, Server, pct, rand_ids, run_concurrent
from litelang.bench.shapes import random_checkpoint
from litelang.bench.step_trace import load


def longest_pauses(steps: dict, start: float, end: float, first: str, then: str, top: int = 5,
                   same: bool = False) -> list[str]:
    """The longest intervals from one step's `first` event to the next step's (or, `same`, its
    own) `then` event."""
    marks = sorted((ev[first][0], s) for s, ev in steps.items() if first in ev and start <= ev[first][0] <= end)
    pairs = [(t, s, s) for t, s in marks] if same else [(t, s, nxt) for (t, s), (_, nxt) in zip(marks, marks[1:])]
    out = []
    for t, s, nxt in pairs:
        if then in steps[nxt]:
            out.append((steps[nxt][then][0] - t, s, nxt))
    out.sort(reverse=True)
    return [f"{1000 * gap:8.1f} ms  step {s} {first} -> step {n} {then}  (t = {steps[s][first][0] - start:.3f} s)"
            for gap, s, n in out[:top]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-1.5b")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", default="/tmp/litelang-first-burst")
    ap.add_argument("--streams", type=int, default=128)
    ap.add_argument("--model", help="this checkpoint instead of a random one at --shape")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    trace = Path(args.out)
    shutil.rmtree(trace, ignore_errors=True)
    os.environ["LITELANG_STEP_TRACE_DIR"] = str(trace)  # the launched processes inherit it
    model = Path(args.model) if args.model else random_checkpoint(args.shape, Path("/tmp/litelang-bench") / args.shape)
    Server.device = args.device
    for name in TOKENIZER_FILES:
        if (Path(args.tokenizer) / name).exists():
            shutil.copy(Path(args.tokenizer) / name, model / name)
    server = Server(model)
    rng = random.Random(5)
    prompts = [rand_ids(rng, 32) for _ in range(args.streams)]
    windows = []
    try:
        for name, new in (("warm-up", 16), ("run 1", 256), ("run 2", 256), ("run 3", 256)):
            t0 = time.monotonic()
            rec = asyncio.run(run_concurrent(server.address, prompts, new))
            windows.append((name, t0, time.monotonic()))
            print(f"{name}: {sum(rec['tokens']) / rec['wall']:,.0f} tok/s, wall {rec['wall']:.3f} s, "
                  f"TTFT p50 {pct(rec['ttft'], 0.5) * 1000:.1f} ms max {max(rec['ttft']) * 1000:.1f} ms", flush=True)
    finally:
        server.stop()
    time.sleep(2)
    worker, worker_gc = load(trace / "worker0.csv")
    engine, engine_gc = load(trace / "engine.csv")
    for name, start, end in windows:
        print(f"== {name}")
        print("  worker, gpu_done -> next gpu_done:")
        print("\n".join("    " + line for line in longest_pauses(worker, start, end, "gpu_done", "gpu_done")))
        print("  worker, gpu_done -> next launched (positive: the GPU waited for the launch):")
        print("\n".join("    " + line for line in longest_pauses(worker, start, end, "gpu_done", "launched")))
        print("  worker, taken -> launched (the step's host work):")
        print("\n".join("    " + line for line in longest_pauses(worker, start, end, "taken", "launched", same=True)))
        print("  engine, sent -> next sent:")
        print("\n".join("    " + line for line in longest_pauses(engine, start, end, "sent", "sent")))
        for who, gcs in (("engine", engine_gc), ("worker", worker_gc)):
            slow = [f"{g} {v:.1f} ms" for g, v in gcs if v > 5]
            if slow:
                print(f"  {who} GC passes over 5 ms (whole session): {', '.join(slow[:8])}")


if __name__ == "__main__":
    main()
