"""The one place kernel modules import Triton from.

Two reasons for a shared import:
- Triton is optional on CPU machines, and the torch references live in the same files as the
  kernels, so those files must import without it. When it is missing, kernels become a stand-in
  whose launch raises ImportError.
- With a CPU-only torch, Triton can only run in its interpreter, and triton reads
  TRITON_INTERPRET when a kernel is *decorated* (at module import). Setting it here, before
  triton is imported, makes the kernels usable on CPU whichever module (a test, the worker)
  happens to import them first. (A CUDA build of torch on a machine without a GPU is left alone:
  asking torch.cuda.is_available() at import time could initialize CUDA before a fork;
  tests/kernels/conftest.py covers that case for the tests.)
"""

from __future__ import annotations

import os

import torch

if torch.version.cuda is None and torch.version.hip is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent

    class _NoTriton:
        """Stands in for `triton`, `triton.language` and every kernel: definitions import,
        launching a kernel or calling a triton helper raises ImportError."""

        def jit(self, fn=None, **_kwargs):
            return self

        def __getitem__(self, grid):
            raise ImportError("triton is not installed: use the torch reference kernels")

        def __getattr__(self, name: str):
            raise ImportError("triton is not installed: use the torch reference kernels")

    triton = tl = _NoTriton()
    _HAVE_TRITON = False

# True when kernels run in the CPU interpreter: tests use small blocks, and dots run in float32
# (the interpreter multiplies bfloat16 tiles as raw uint16 bits).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


ROW_EXACT_DOT = tl.constexpr(INTERPRET) if _HAVE_TRITON else INTERPRET


@triton.jit
def dot_f32(a, b, acc):
    """acc + a @ b with exact float32 products. On the GPU, tl.dot in IEEE mode. The interpreter
    runs tl.dot as numpy's matmul, whose BLAS may round a row differently by its place in the tile
    (OpenBLAS under a forced core type does), so there a broadcast sum keeps each row's bits its
    own, as the GPU's dot does: the batch-invariance tests hold on any CPU."""
    if ROW_EXACT_DOT:
        return acc + tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")


# Programmatic dependent launch (Hopper and later): a decode step is a chain of a few hundred
# microsecond kernels, and each launch waits for the previous kernel to drain. With PDL the next
# kernel is launched while the previous one runs and waits on the GPU instead (`pdl_start`).
# Every kernel launched with `pdl_launch()` must call pdl_start before reading anything the kernel
# just before it may write, and before writing anything. Before it, a kernel may read what is
# never written during a step (weights, the RoPE table) and what was written two or more kernels
# earlier: kernel N can only start once every program of kernel N-1 has passed its own pdl_start,
# that is, once kernel N-2 has finished (a kernel without PDL finishes before the next starts).
# The step's inputs (positions, slots, lengths) are copied before its first kernel, and the
# req->slot table is written by that first kernel (kernels/decode_inputs.py, with the embedding)
# or before it, so layer kernels may read them early too: the earliest such read is layer 0's
# attention, the step's fourth kernel. LITELANG_PDL=0 turns it off.
_pdl: bool | None = None


def pdl_enabled() -> bool:
    """Asked at launch time, not import time: asking for the GPU at import could initialize
    CUDA before a fork."""
    global _pdl
    if _pdl is None:
        _pdl = (not INTERPRET and os.environ.get("LITELANG_PDL", "1") == "1" and torch.cuda.is_available()
                and torch.cuda.get_device_capability()[0] >= 9)
    return _pdl


def pdl_launch() -> dict:
    """Launch options (and the kernel's PDL constexpr) for a PDL-aware kernel."""
    return dict(PDL=True, launch_pdl=True) if pdl_enabled() else dict(PDL=False)


try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - no triton, or one without grid dependency control
    gdc_launch_dependents = gdc_wait = None


# Kernels with much shared memory per program release their dependents after their main loop
# (pdl_start's RELEASE). LITELANG_LATE_RELEASE=0: right after the wait, for comparisons.
LATE_RELEASE: bool = os.environ.get("LITELANG_LATE_RELEASE", "1") == "1"


@triton.jit
def pdl_start(PDL: tl.constexpr, RELEASE: tl.constexpr = True):
    """Wait until the previous kernel's writes are visible, then (RELEASE) let the next kernel
    launch (it too waits here before it reads anything). A no-op without PDL. Kernels holding
    much shared memory per program pass RELEASE=False and call pdl_release after their main
    loop: the next kernel's programs occupy SM slots while they wait, and would take them from
    this kernel's later programs."""
    if PDL:
        gdc_wait()
        if RELEASE:
            gdc_launch_dependents()


@triton.jit
def pdl_release(PDL: tl.constexpr):
    """Let the next kernel launch (after pdl_start(PDL, RELEASE=False))."""
    if PDL:
        gdc_launch_dependents()


class LaunchCounters:
    """Per-device int32 counters for kernels whose last program to finish does the final step (the
    split-K reduction in linear, the split merge in decode attention). They are zero between
    launches (that program resets its own), so launches sharing them must not run concurrently
    on two streams. Allocated on an eager call: a buffer made while capturing a CUDA graph would
    live in the graph's pool. An outgrown buffer stays alive for the graphs captured on it."""

    def __init__(self, kernel: str):
        self.kernel = kernel
        self._buffers: dict[torch.device, torch.Tensor] = {}
        self._outgrown: list[torch.Tensor] = []

    def __getitem__(self, device: torch.device) -> torch.Tensor:
        return self._buffers[device]

    def get(self, device: torch.device, n: int) -> torch.Tensor:
        """A zeroed buffer of at least n counters on device."""
        buf = self._buffers.get(device)
        if buf is None or buf.numel() < n:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"{self.kernel}: run this shape once eagerly before CUDA graph capture")
            if buf is not None:
                self._outgrown.append(buf)
            buf = self._buffers[device] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        return buf


__all__ = ["INTERPRET", "LATE_RELEASE", "dot_f32", "LaunchCounters", "pdl_enabled", "pdl_launch", "pdl_release", "pdl_start", "tl", "triton"]
