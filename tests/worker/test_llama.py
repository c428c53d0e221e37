"""The Llama family through the model seam, against HF transformers (the oracle): tiny random
LlamaForCausalLMs, tied and untied, with plain RoPE and with Llama 3.1's "llama3" scaling."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import config_dir
from parity import SlotPool, greedy_sampling, hf_greedy, run_greedy
from litelang.configs.schema import LitelangConfig
from litelang.proto import worker_pb2
from litelang.worker.models import rope
from litelang.worker.models.llama import LlamaModel
from litelang.worker.models.registry import family_of, load_spec
from litelang.worker.setup import build_runner

# a small original context, so that prompts reach past it: at head_dim 16 the highest frequency is
# blended, the others divided by factor
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
PROMPTS = {1: [5, 17, 99, 3, 250, 8, 1], 2: [42], 3: list(range(100, 140))}


def make_tiny_llama(path: Path, tie: bool, scaling: dict | None = None, seed: int = 0, **overrides) -> Path:
    """Save a random Llama (2 layers, hidden 64, 4 heads / 2 kv heads, vocab 300) with HF transformers.
    Weights drawn 5x wider than HF's default, so that attention, and so RoPE, sways the tokens.
    (HF's Llama is imported here, not at the top: it imports triton, which must come after
    litelang's kernels have chosen the CPU interpreter.)"""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                  initializer_range=0.1,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, **(scaling or {})})
    kwargs.update(overrides)
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**kwargs)).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tie=False)


@pytest.fixture(scope="module")
def tiny_llama3(tmp_path_factory) -> Path:
    """Tied, as Llama 3.2 1B/3B are, with the llama3 scaling."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama3"), tie=True, scaling=LLAMA3)


def runner_for(path: Path):
    return build_runner(LitelangConfig(model=str(path), device="cpu", kv_slots=1000, max_batch_size=4,
                                       max_input_length=64, max_output_length=64), rank=0)


# ------------------------------------------------------------------------------- registry, spec


def test_registry_picks_llama(tiny_llama, tiny_llama3):
    family, spec = load_spec(tiny_llama)
    assert family.model_class is LlamaModel
    assert (spec.architecture, spec.model_type) == ("LlamaForCausalLM", "llama")
    assert (spec.vocab_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (300, 2, 4, 2, 16)
    assert not spec.attention_bias and not spec.mlp_bias and not spec.qk_norm and not spec.tie_word_embeddings
    assert spec.rope_scaling is None and spec.sliding_window is None and spec.rope_theta == 10000.0
    _, spec3 = load_spec(tiny_llama3)
    assert spec3.tie_word_embeddings and spec3.rope_scaling["rope_type"] == "llama3"
    assert spec3.rope_scaling["original_max_position_embeddings"] == 16
    assert family_of({"model_type": "llama"}).model_class is LlamaModel


def test_older_configs_rope_scaling_key_is_read(tmp_path, tiny_llama):
    """Llama 3.1's own config.json: rope_theta at the top level, the scaling under rope_scaling."""
    path = config_dir(tmp_path, tiny_llama, rope_parameters=None, rope_theta=500000.0, rope_scaling=LLAMA3)
    _, spec = load_spec(path)
    assert spec.rope_theta == 500000.0 and spec.rope_scaling == LLAMA3


@pytest.mark.parametrize("changes, words", [
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0}},
     "RoPE scaling 'longrope' (config.json rope_scaling / rope_parameters rope_type"),
    ({"rope_parameters": None, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling 'yarn'"),
    ({"rope_parameters": {k: v for k, v in LLAMA3.items() if k != "low_freq_factor"}},
     "RoPE scaling 'llama3' lacks low_freq_factor"),
], ids=["mlp_bias", "unknown-rope-type", "yarn-old-key", "llama3-incomplete"])
def test_unserved_llama_configs_are_refused(tmp_path, tiny_llama, changes, words):
    path = config_dir(tmp_path, tiny_llama, **changes)
    with pytest.raises(ValueError) as err:
        load_spec(path)
    assert words in str(err.value) and "LlamaForCausalLM checkpoint not served" in str(err.value)


def test_attention_bias_is_read(tmp_path, tiny_llama):
    _, spec = load_spec(config_dir(tmp_path, tiny_llama, attention_bias=True))
    assert spec.attention_bias


# ------------------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("head_dim, theta, scaling", [
    (16, 10000.0, LLAMA3),
    # Llama 3.1 8B's own values
    (128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}),
    (64, 10000.0, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                   "original_max_position_embeddings": 64}),
], ids=["tiny", "llama3.1", "strong"])
def test_llama3_inverse_frequencies_match_transformers(head_dim, theta, scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=131072, rope_parameters={**scaling, "rope_theta": theta})
    want, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    assert attention_factor == 1.0  # llama3 scales only the frequencies, never cos / sin
    got = rope.llama3_inv_freq(rope.plain_inv_freq(head_dim, theta), scaling)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    plain = rope.plain_inv_freq(head_dim, theta)
    assert got[-1] == plain[-1] / scaling["factor"]  # the lowest frequency is divided by factor


def test_rope_table_uses_the_scaled_frequencies(tiny_llama, tiny_llama3):
    _, plain_spec = load_spec(tiny_llama)
    _, spec = load_spec(tiny_llama3)
    table = rope.rope_cos_sin(spec)
    assert table.shape == (256, 16)
    angles = torch.arange(256, dtype=torch.float32)[:, None] * rope.rope_inv_freq(spec)
    torch.testing.assert_close(table, torch.cat([angles.cos(), angles.sin()], dim=-1))
    assert not torch.allclose(table, rope.rope_cos_sin(plain_spec))
    # without scaling, the same spec's table is the plain one
    torch.testing.assert_close(rope.rope_cos_sin(dataclasses.replace(spec, rope_scaling=None)),
                               rope.rope_cos_sin(plain_spec))


# --------------------------------------------------------------------------- against HF's model


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_llama3"])
def test_greedy_matches_hf(request, model):
    path = request.getfixturevalue(model)
    got = run_greedy(runner_for(path), PROMPTS, n=12)
    for rid, p in PROMPTS.items():
        assert got[rid] == hf_greedy(path, p, 12), f"request {rid}"


def test_the_scaling_changes_hfs_tokens(tmp_path, tiny_llama3):
    """The llama3 checkpoint's greedy tokens hang on its scaling (so the parity above can fail):
    the same weights with plain RoPE generate others."""
    plain = config_dir(tmp_path, tiny_llama3, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    for name in ("model.safetensors", "generation_config.json"):
        (plain / name).symlink_to(tiny_llama3 / name)
    assert load_spec(plain)[1].rope_scaling is None
    for rid, p in PROMPTS.items():
        assert hf_greedy(plain, p, 12) != hf_greedy(tiny_llama3, p, 12), f"request {rid}"


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_llama3"])
def test_teacher_forced_logits_match_hf(request, model):
    """A 30-token prefill (past the llama3 checkpoint's original 16 positions), then decode steps
    fed HF's sequence: every step's logits within 1e-4 of HF float32's."""
    path = request.getfixturevalue(model)
    runner = runner_for(path)
    assert isinstance(runner.model, LlamaModel)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    seq = [(7 * i + 3) % 300 for i in range(36)]
    prefill, slots = 30, SlotPool()
    with torch.no_grad():
        want = hf(torch.tensor([seq])).logits[0]
    req = worker_pb2.StepRequest(step_id=0)
    req.extends.add(rid=1, token_ids=seq[:prefill], slots=slots.take(prefill), sample=True, is_new=True,
                    sampling=greedy_sampling())
    torch.testing.assert_close(runner.forward_logits(req)[0], want[prefill - 1], atol=1e-4, rtol=1e-4)
    for at in range(prefill, len(seq)):
        req = worker_pb2.StepRequest(step_id=at, decode_rids=[1], decode_slots=slots.take(1))
        runner.last_tokens[runner.row_of(1)] = seq[at]
        torch.testing.assert_close(runner.forward_logits(req)[0], want[at], atol=1e-4, rtol=1e-4,
                                   msg=f"position {at}")
