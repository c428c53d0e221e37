"""The Qwen3 family against HF transformers (the oracle) on tiny random Qwen3s: head_dim unlike
hidden / heads, q/k norm weights far from one so that skipping the norm changes the logits, tied
and untied embeddings, TP=2 over gloo."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import free_ports
from litelang.configs.schema import LitelangConfig
from litelang.worker.models.qwen3 import Qwen3Model
from litelang.worker.models.registry import family_of, load_spec
from litelang.worker.setup import build_runner
from parity import SlotPool, assert_teacher_forced, greedy_on_rank, hf_greedy, run_greedy

PROMPTS = {1: [5, 17, 99, 3, 250, 8, 1], 2: [42], 3: list(range(100, 140))}


def make_tiny_qwen3(path: Path, tie: bool = True, seed: int = 0, **overrides) -> Path:
    """Save a random Qwen3 (2 layers, hidden 64, 4 heads / 2 kv heads of head_dim 32) with HF
    transformers; every RMSNorm weight is random (HF inits them to one)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    kwargs = dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rope_theta=10000.0,
        tie_word_embeddings=tie, rms_norm_eps=1e-6,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**kwargs)).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.uniform_(0.2, 2.0)
    model.save_pretrained(path)
    return path


def runner_config(path: Path, **changes) -> LitelangConfig:
    return LitelangConfig(model=str(path), device="cpu", kv_slots=1000, max_batch_size=4, max_input_length=64,
                          max_output_length=64, **changes)


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory) -> Path:
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


def test_registry_picks_qwen3(tiny_qwen3):
    family, spec = load_spec(tiny_qwen3)
    assert family.model_class is Qwen3Model
    assert json.loads((tiny_qwen3 / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    assert (spec.architecture, spec.model_type) == ("Qwen3ForCausalLM", "qwen3")
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.hidden_size) == (4, 2, 32, 64)
    assert spec.qk_norm and not spec.attention_bias and spec.tie_word_embeddings
    assert spec.rope_scaling is None and spec.sliding_window is None
    assert family_of({"model_type": "qwen3"}).model_class is Qwen3Model


@pytest.mark.parametrize("tie", [True, False])
def test_greedy_matches_hf(tmp_path, tie):
    path = make_tiny_qwen3(tmp_path / "m", tie=tie)
    got = run_greedy(build_runner(runner_config(path), rank=0), PROMPTS, n=12)
    for rid, p in PROMPTS.items():
        assert got[rid] == hf_greedy(path, p, 12), f"request {rid}"


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_teacher_forced_logits_match_hf(tmp_path, monkeypatch, kernels):
    """Prefill, then three decode steps fed HF's context: the logits of every row within 1e-4 of
    HF float32 (untied embeddings); with the Triton kernels too (CPU interpreter), whose norm,
    RoPE and KV-store kernels run separately on the q/k-norm path."""
    if kernels == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("LITELANG_KERNELS", "triton")
    path = make_tiny_qwen3(tmp_path / "m", tie=False)
    runner = build_runner(runner_config(path), rank=0)
    assert runner.model.kernels.name == kernels
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    seqs, slots, steps = {1: [5, 17, 99, 3, 250, 8, 1, 60, 61, 62], 2: [42, 9, 8, 7], 3: list(range(100, 124))}, SlotPool(), 3
    assert_teacher_forced(runner, hf, seqs, slots, steps)


def test_attention_bias_is_refused_before_the_weights(tmp_path, tiny_qwen3):
    """HF's Qwen3 with attention_bias biases o_proj too, which the blocks do not: refused from
    config.json alone rather than served wrong."""
    config = json.loads((tiny_qwen3 / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    with pytest.raises(ValueError, match="Qwen3ForCausalLM checkpoint not served: attention_bias"):
        load_spec(tmp_path)
    with pytest.raises(ValueError, match="attention_bias"):
        build_runner(runner_config(tmp_path), rank=0)


def test_tp2_over_gloo_matches_tp1(tiny_qwen3):
    """Two ranks in two processes (gloo): each holds half the q heads, one kv head and the whole
    q/k norm weights; rank 0's greedy tokens are TP=1's, and HF's."""
    want = run_greedy(build_runner(runner_config(tiny_qwen3), rank=0), PROMPTS, n=8)
    cfg = runner_config(tiny_qwen3, tp=2, dist_port=free_ports(1)[0])
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    ranks = [ctx.Process(target=greedy_on_rank, args=(rank, cfg, PROMPTS, 8, results)) for rank in range(2)]
    for p in ranks:
        p.start()
    try:
        got = results.get(timeout=300)
    finally:
        for p in ranks:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in ranks] == [0, 0]
    assert got == want
    assert want[1] == hf_greedy(tiny_qwen3, PROMPTS[1], 8)
