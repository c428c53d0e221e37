"""NCCL against the one-shot symmetric-memory all-reduce, by message size, as CUDA-graph replays.

    python -m litelang.bench.probe_all_reduce [--gpus 2]

One process per GPU. Each graph holds 20 back-to-back all-reduces of one bf16 message; the time is
a replay's over 20. Sizes: decode residual rows of the 1.5B (1,536) and 7B (3,584) widths at
batch 1 to 64, and larger messages to find where NCCL catches up.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from litelang.bench.bench_kernels import graph_us
from litelang.bench.bench_serving import free_port

ROWS = [(1, 1536), (48, 1536), (64, 1536), (1, 3584), (64, 3584), (256, 3584), (512, 3584), (1024, 3584)]
REPEAT = 20


def _rank(rank: int, world: int, port: int, queue) -> None:
    from litelang.worker.parallel import SymmetricAllReduce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    max_numel = max(r * c for r, c in ROWS)
    small = SymmetricAllReduce.create(max_numel * 2, torch.bfloat16, device)
    assert small is not None, "symmetric memory did not come up"
    rows = []
    for m, n in ROWS:
        x = torch.randn(m, n, device=device, dtype=torch.bfloat16)
        ref = x.float().clone()
        dist.all_reduce(ref)
        got = small(x)
        err = (got.float() - ref).abs().max().item()
        nccl_us = graph_us(lambda: dist.all_reduce(x), calls=REPEAT, replays=50)
        one_us = graph_us(lambda: small(x), calls=REPEAT, replays=50)
        rows.append((m, n, m * n * 2, nccl_us, one_us, err))
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, args.gpus, port, queue)) for r in range(args.gpus)]
    for p in procs:
        p.start()
    rows = queue.get(timeout=600)
    for p in procs:
        p.join()
    print("| rows × width | bytes | NCCL, µs | one-shot, µs | max error against NCCL's float32 sum |")
    print("| --- | --- | --- | --- | --- |")
    for m, n, nbytes, nccl_us, one_us, err in rows:
        print(f"| {m} × {n} | {nbytes:,} | {nccl_us:.2f} | {one_us:.2f} | {err:.3g} |")


if __name__ == "__main__":
    main()
