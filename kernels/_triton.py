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
  kernels/conftest.py covers that case for the tests.)
"""

from __future__ import annotations

import os

import torch

if torch.version.cuda is None and torch.version.hip is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
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

# True when kernels run in the CPU interpreter: tests use small blocks, and dots run in float32
# (the interpreter multiplies bfloat16 tiles as raw uint16 bits).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

__all__ = ["INTERPRET", "tl", "triton"]
