"""GPU: programmatic graph edges into cuBLAS GEMMs (worker/graph_pdl.py) against a producer that
writes late. Run with -m gpu."""

from __future__ import annotations

import re

import pytest
import torch

from litelang.kernels._triton import pdl_release_after_stores, tl, triton
from litelang.kernels.linear import linear_partials
from litelang.worker.graph_pdl import CUBLAS_GEMMS, programmatic_edges_into_gemms

pytestmark = pytest.mark.gpu


@triton.jit
def _late_writer(X, n, spins, BLOCK: tl.constexpr, AT_END: tl.constexpr):
    """x = 1 after a ~50 us spin; dependents may launch at the start or only after the stores."""
    if not AT_END:
        tl.extra.cuda.gdc_launch_dependents()
    acc = tl.program_id(0).to(tl.float32)
    for _ in range(spins):
        acc = acc * 0.999 + 0.001
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    one = tl.where(acc > -1.0, 1.0, 0.0)  # 1, but only once the spin is done
    tl.store(X + offs, tl.zeros([BLOCK], tl.float32) + one, mask=offs < n)
    if AT_END:
        pdl_release_after_stores(True)


def late_write_then(consumer, x: torch.Tensor, at_end: bool) -> tuple[torch.Tensor, list[str]]:
    """Replay a graph of [late writer of x -> consumer(x)] whose edges from the writer into cuBLAS
    GEMMs were made programmatic; x holds zeros before the replay."""
    stream = torch.cuda.Stream()
    grid = (triton.cdiv(x.numel(), 1024),)

    def body():
        _late_writer[grid](x, x.numel(), 20000, BLOCK=1024, AT_END=at_end, launch_pdl=True)
        return consumer(x)

    with torch.cuda.stream(stream):
        body()  # compile, and let cuBLAS pick its kernel
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(graph, stream=stream):
        out = body()
    changed = programmatic_edges_into_gemms(graph.raw_cuda_graph(), re.compile("_late_writer"), CUBLAS_GEMMS)
    graph.instantiate()
    x.zero_()
    torch.cuda.synchronize()
    graph.replay()
    torch.cuda.synchronize()
    return out.clone(), changed


@pytest.mark.parametrize("k", [1536, 8960], ids=["o", "down"])
@pytest.mark.parametrize("gemm", ["linear", "partials"])
def test_gemm_behind_programmatic_edge_reads_the_stores(k, gemm):
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        pytest.fail("needs a Hopper GPU (programmatic dependent launch)")
    w = torch.randn(1536, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    x = torch.zeros(48, k, device="cuda", dtype=torch.bfloat16)
    consumer = (lambda t: torch.nn.functional.linear(t, w)) if gemm == "linear" else (lambda t: linear_partials(t, w).sum(0))
    expect = consumer(torch.ones_like(x)).float()
    out, changed = late_write_then(consumer, x, at_end=True)
    assert changed, "no edge into a cuBLAS GEMM was found"
    torch.testing.assert_close(out.float(), expect, atol=0.05, rtol=0.02)
    # the same edge behind a writer that lets dependents launch at its start: cuBLAS reads x
    # before the stores (it does not wait on the GPU), which is why the producers must release late
    early, _ = late_write_then(consumer, x, at_end=False)
    print(f"{gemm} k={k}: released at the writer's start, the GEMM read {'zeros' if (early == 0).all() else 'ones'}")
