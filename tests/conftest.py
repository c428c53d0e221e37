"""Shared fixtures: tiny random Qwen2 checkpoints (an independent oracle via HF transformers),
the real default checkpoint, and free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from helpers import make_tiny_qwen2

# servers started by the tests check every KV slot whenever they go idle (see Engine.check_invariant)
os.environ.setdefault("LITELANG_CHECK_SLOTS", "1")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = ROOT / "models" / "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return make_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} is missing: run `make model` (make test does it first)")
    return DEFAULT_MODEL_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
