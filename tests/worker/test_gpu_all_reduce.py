"""The symmetric-memory all-reduce on two GPUs against a sum computed from both ranks' inputs:
eager, inside a CUDA graph, and past the buffer (NCCL)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from litelang.worker.parallel import init_tp_group

pytestmark = pytest.mark.gpu

BUFFER_BYTES = 1 << 20
SHAPES = [(1, 1536), (48, 1536), (64, 3584), (1024, 3584)]  # the last is over 1 MiB: NCCL


def _message(rank: int, shape: tuple[int, int], round_: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * round_ + 10 * rank + shape[0])
    return torch.randn(shape, generator=g).to(torch.bfloat16)


def _expected(shape: tuple[int, int], round_: int) -> torch.Tensor:
    """The oracle: both ranks' messages summed in float32 on the CPU, rounded to bf16 once."""
    return (_message(0, shape, round_).float() + _message(1, shape, round_).float()).to(torch.bfloat16)


def _rank(rank: int, port: int, queue) -> None:
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    tp = init_tp_group(rank, 2, "127.0.0.1", port, device, BUFFER_BYTES, torch.bfloat16)
    report = {"small": tp.small is not None}
    for shape in SHAPES:
        x = _message(rank, shape, 0).to(device)
        report[("eager", shape)] = (tp.all_reduce(x).cpu(), tp.small.fits(x))
    # captured once, replayed on new inputs: the graph holds the copy into the shared buffer
    static = torch.zeros((48, 1536), dtype=torch.bfloat16, device=device)
    tp.all_reduce(static)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = tp.all_reduce(static)
    for round_ in (1, 2):
        static.copy_(_message(rank, (48, 1536), round_))
        graph.replay()
        report[("graph", round_)] = out.cpu()
    torch.distributed.barrier()
    if rank == 0:
        queue.put(report)
    torch.distributed.destroy_process_group()


def test_symmetric_all_reduce_on_two_gpus_sums_like_the_oracle():
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs (this machine has {torch.cuda.device_count()}): run on nvidia-h200-x2")
    from conftest import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    report = queue.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert report["small"], "symmetric memory did not come up on two GPUs"
    for shape in SHAPES:
        got, fits = report[("eager", shape)]
        assert fits == (shape[0] * shape[1] * 2 <= BUFFER_BYTES)
        assert torch.equal(got, _expected(shape, 0)), shape
    for round_ in (1, 2):
        assert torch.equal(report[("graph", round_)], _expected((48, 1536), round_)), round_
