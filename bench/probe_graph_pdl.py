"""What edges does a captured decode step have, before and after worker/graph_pdl.py makes the
ones into cuBLAS GEMMs programmatic?

    python -m litelang.bench.probe_graph_pdl

tests/test_graph_pdl.py checks the edge against a producer that writes late (and prints that
cuBLAS reads early behind one from a producer that releases at its start).
"""

from __future__ import annotations

import collections
from pathlib import Path

import torch

from litelang.worker.graph_pdl import describe, programmatic_edges_into_gemms


def graph_edges() -> None:
    from litelang.bench.bench_model import litelang_runner
    from litelang.bench.shapes import random_checkpoint
    from litelang.worker import cuda_graph

    path = random_checkpoint("qwen2-1.5b", Path("/tmp/litelang-bench") / "qwen2-1.5b")
    runner = litelang_runner(path, max_batch=64, max_context=2048, cuda_graphs=False)
    graphs = cuda_graph.DecodeGraphs(runner)  # for its static inputs; the graph is captured here
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        graphs._body(48, cuda_graph.GREEDY)  # compile
    torch.cuda.synchronize()
    with torch.cuda.graph(graph, stream=stream):
        graphs._body(48, cuda_graph.GREEDY)
    before = collections.Counter((d[:48], p, t) for _, d, p, t in describe(graph.raw_cuda_graph()))
    programmatic_edges_into_gemms(graph.raw_cuda_graph())
    after = collections.Counter((d[:48], p, t) for _, d, p, t in describe(graph.raw_cuda_graph()))
    print("\nedges into each kernel of the batch-48 greedy step: (kernel, from port, type): before -> after")
    for key in sorted(set(before) | set(after)):
        print(f"  {key}: {before.get(key, 0)} -> {after.get(key, 0)}")


if __name__ == "__main__":
    graph_edges()
