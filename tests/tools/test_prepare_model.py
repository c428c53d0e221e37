"""Tests for tools/prepare_model.py: the checkpoint checks and the "already prepared" marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from litelang.tools.prepare_model import (
    DEFAULT_OUT,
    check_checkpoint,
    check_tokenizer,
    is_prepared,
    main,
    write_marker,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_checkpoint(path: Path, *, tied: bool) -> Path:
    """A random-weight Qwen2 checkpoint at toy shapes, saved the way HF saves real ones."""
    config = Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_tiny_checkpoint_passes(tmp_path: Path, tied: bool) -> None:
    path = tiny_checkpoint(tmp_path / "ckpt", tied=tied)
    stored = load_file(path / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not tied)  # both layouts really are exercised
    assert check_checkpoint(path) == []


def test_wrong_shape_is_reported(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "ckpt", tied=False)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(64, 64)  # should be [32, 64]
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    problems = check_checkpoint(path)
    assert len(problems) == 1
    assert "model.layers.1.self_attn.k_proj.weight" in problems[0]
    assert "[64, 64]" in problems[0] and "[32, 64]" in problems[0]


def test_missing_head_and_layer_mismatch_are_reported(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "ckpt", tied=False)
    tensors = load_file(path / "model.safetensors")
    del tensors["lm_head.weight"]  # untied config, so the head must be stored
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["num_hidden_layers"] = 1  # layer 1's tensors are now unexpected
    (path / "config.json").write_text(json.dumps(config))
    problems = check_checkpoint(path)
    assert any("missing tensor lm_head.weight" in p for p in problems)
    assert any("unexpected tensor model.layers.1." in p for p in problems)


def test_unreadable_directory_is_reported(tmp_path: Path) -> None:
    assert check_checkpoint(tmp_path)[0].startswith("config.json unreadable")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "expected 'qwen2'" in check_checkpoint(tmp_path)[0]


def test_marker_makes_rerun_a_no_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_checkpoint(tmp_path / "ckpt", tied=True)
    assert not is_prepared(path)
    write_marker(path, {"dtype": "float32", "tie_word_embeddings": True})
    assert is_prepared(path)
    # Nothing to download or convert: main returns at once.
    assert main(["--out", str(path), "--cache", str(tmp_path / "no-cache")]) == 0
    assert "model ready at" in capsys.readouterr().out
    assert not (tmp_path / "no-cache").exists()
    # A file whose size no longer matches the marker means the directory must be rebuilt.
    with open(path / "config.json", "a") as f:
        f.write("\n")
    assert not is_prepared(path)


@pytest.fixture
def default_model() -> Path:
    """The checkpoint `make model` prepares; the test run is expected to come after it."""
    path = REPO_ROOT / DEFAULT_OUT
    assert path.is_dir(), f"{path} is missing: run `make model` first"
    return path


@pytest.mark.slow
def test_default_model_checks_out(default_model: Path) -> None:
    assert check_checkpoint(default_model) == []
    assert check_tokenizer(default_model) == []
    assert is_prepared(default_model)
