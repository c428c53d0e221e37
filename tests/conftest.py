"""Shared fixtures: tiny random Qwen2 checkpoints (an independent oracle via HF transformers),
the real default checkpoint, a module's server (and its OpenAI gateway), and free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from helpers import make_tiny_qwen2, make_tiny_qwen2_with_tokenizer, openai_gateway, server_group

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model_dir) -> Path:
    """A tiny random Qwen2 with the real vocabulary and tokenizer, which the server loads in about
    a second. Shared by every module: the servers and HF only read it."""
    return make_tiny_qwen2_with_tokenizer(tmp_path_factory.mktemp("tiny_model"), default_model_dir)


@pytest.fixture(scope="module")
def served_model(tiny_model) -> Path:
    """The checkpoint `group` serves; a module that serves another overrides this fixture."""
    return tiny_model


def module_setting(request: pytest.FixtureRequest, name: str):
    """A module-level constant the shared server fixtures are configured by."""
    if not hasattr(request.module, name):
        pytest.fail(f"{request.module.__name__} uses the `{request.fixturename}` fixture but sets no {name}")
    return getattr(request.module, name)


def module_short_name(request: pytest.FixtureRequest) -> str:
    return request.module.__name__.rpartition(".")[2]


@pytest.fixture(scope="module")
def group(request, served_model, tmp_path_factory):
    """One worker and one scheduler for the whole module, configured by the module's
    SERVER_CONFIG (LitelangConfig fields, as `ServerGroup` takes them)."""
    config = module_setting(request, "SERVER_CONFIG")
    logs = tmp_path_factory.mktemp(f"{module_short_name(request)}_logs")
    with server_group(served_model, logs, **config) as g:
        yield g


@pytest.fixture(scope="module")
def gateway_url(request, group, tmp_path_factory) -> str:
    """`litelang-openai` in front of the module's group, started with the module's GATEWAY_FLAGS:
    its base URL (ending in /v1)."""
    flags = module_setting(request, "GATEWAY_FLAGS")
    logs = tmp_path_factory.mktemp(f"{module_short_name(request)}_gateway")
    with openai_gateway(group, logs, *flags) as url:
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
