"""Programmatic dependent launch into the cuBLAS GEMMs of a captured CUDA graph.

Our Triton kernels are launched with PDL (kernels/_triton.py), so a captured graph already
has programmatic edges into them: each starts while the kernel before it drains, and waits
on the GPU. cuBLAS launches its GEMMs without PDL, so o and down start only after attention
and gate_up have formally ended (a full drain, then the launch). Its GEMMs do not wait on the
GPU either (bench/probe_graph_pdl.py catches them reading their input early), so a programmatic
edge into one is safe only from a kernel that lets its dependents launch after its last store,
fenced: attention and gate_up do that where cuBLAS follows them (release_at_end). The edges
from them into the GEMMs become programmatic after capture, the form a PDL launch takes in a
graph (CUDA driver API, through ctypes: torch exposes the graph but not its edges).
"""

from __future__ import annotations

import ctypes
import re

# cuBLAS's GEMM kernels (not its split-K reduce)
CUBLAS_GEMMS = re.compile(r"^(?!.*reduce).*(gemm|nvjet|xmma|cutlass)", re.IGNORECASE)
# our kernels that, wherever a cuBLAS GEMM follows them, let it launch only after their last
# store (release_at_end: kernels/_triton.py pdl_release_after_stores)
RELEASING_KERNELS = re.compile(r"^(_decode_split_kernel|_linear_kernel)$")
_KERNEL_NODE = 0  # CU_GRAPH_NODE_TYPE_KERNEL
_PORT_PROGRAMMATIC = 1  # CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC
_DEPENDENCY_PROGRAMMATIC = 1  # CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC


class _EdgeData(ctypes.Structure):  # CUgraphEdgeData
    _fields_ = [("from_port", ctypes.c_ubyte), ("to_port", ctypes.c_ubyte), ("type", ctypes.c_ubyte),
                ("reserved", ctypes.c_ubyte * 5)]


class _KernelParams(ctypes.Structure):  # CUDA_KERNEL_NODE_PARAMS_v2
    _fields_ = [("func", ctypes.c_void_p), ("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_mem", ctypes.c_uint), ("params", ctypes.c_void_p), ("extra", ctypes.c_void_p),
                ("kern", ctypes.c_void_p), ("ctx", ctypes.c_void_p)]


class _Driver:
    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")

    def __call__(self, name: str, *args) -> None:
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise RuntimeError(f"{name} failed with CUresult {status}")

    def kernel_name(self, node: ctypes.c_void_p) -> str | None:
        params = _KernelParams()
        self("cuGraphKernelNodeGetParams_v2", node, ctypes.byref(params))
        name = ctypes.c_char_p()
        if params.func:
            self("cuFuncGetName", ctypes.byref(name), ctypes.c_void_p(params.func))
        elif params.kern:
            self("cuKernelGetName", ctypes.byref(name), ctypes.c_void_p(params.kern))
        return name.value.decode() if name.value else None

    def kernel_names(self, graph: int) -> dict[int, str]:
        """{node handle: kernel name} of the graph's kernel nodes."""
        count = ctypes.c_size_t()
        self("cuGraphGetNodes", ctypes.c_void_p(graph), None, ctypes.byref(count))
        nodes = (ctypes.c_void_p * count.value)()
        self("cuGraphGetNodes", ctypes.c_void_p(graph), nodes, ctypes.byref(count))
        names = {}
        for node in nodes:
            kind = ctypes.c_int()
            self("cuGraphNodeGetType", ctypes.c_void_p(node), ctypes.byref(kind))
            if kind.value == _KERNEL_NODE:
                names[node] = self.kernel_name(ctypes.c_void_p(node)) or "?"
        return names

    def edges(self, graph: int) -> list[tuple[int, int, _EdgeData]]:
        count = ctypes.c_size_t()
        self("cuGraphGetEdges_v2", ctypes.c_void_p(graph), None, None, None, ctypes.byref(count))
        n = count.value
        src, dst, data = (ctypes.c_void_p * n)(), (ctypes.c_void_p * n)(), (_EdgeData * n)()
        self("cuGraphGetEdges_v2", ctypes.c_void_p(graph), src, dst, data, ctypes.byref(count))
        return [(src[i], dst[i], data[i]) for i in range(n)]


def programmatic_edges_into_gemms(graph: int, sources: re.Pattern = RELEASING_KERNELS,
                                  targets: re.Pattern = CUBLAS_GEMMS) -> list[str]:
    """Make the plain edges from a `sources` kernel into a `targets` kernel of graph programmatic
    (graph: a cudaGraph_t, from torch.cuda.CUDAGraph(keep_graph=True).raw_cuda_graph()). Then
    instantiate it. The targets read without waiting on the GPU, so each source must let them
    launch only once its stores are visible. Returns the names of the targets whose edges changed."""
    driver = _Driver()
    names = driver.kernel_names(graph)
    changed = []
    for src, dst, data in driver.edges(graph):
        if (data.type != 0 or src not in names or dst not in names or not sources.search(names[src])
                or not targets.search(names[dst])):
            continue
        one_src, one_dst = (ctypes.c_void_p * 1)(src), (ctypes.c_void_p * 1)(dst)
        driver("cuGraphRemoveDependencies_v2", ctypes.c_void_p(graph), one_src, one_dst, ctypes.byref(data), 1)
        new = _EdgeData(from_port=_PORT_PROGRAMMATIC, to_port=0, type=_DEPENDENCY_PROGRAMMATIC)
        driver("cuGraphAddDependencies_v2", ctypes.c_void_p(graph), one_src, one_dst, ctypes.byref(new), 1)
        changed.append(names[dst])
    return changed


def describe(graph: int) -> list[tuple[str, str, int, int]]:
    """(from kernel, to kernel, from port, edge type) of every kernel-to-kernel edge, for probes."""
    driver = _Driver()
    names = driver.kernel_names(graph)
    return [(names[s], names[d], e.from_port, e.type) for s, d, e in driver.edges(graph) if s in names and d in names]
