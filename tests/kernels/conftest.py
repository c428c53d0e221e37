"""Kernel tests: on a machine without CUDA, Triton runs in its interpreter.

TRITON_INTERPRET must be set before triton is imported (it is read when kernels are decorated),
and this conftest is imported before the test modules. kernels/_triton.py sets it as well, for
imports that happen before pytest gets here.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    """Where the CPU-sized tests run: the GPU when there is one, else the interpreter on CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"
