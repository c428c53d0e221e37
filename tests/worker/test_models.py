"""The model seam: the registry picks the family from config.json, refuses what no block
implements before any weight is read, the attention block honours the spec's bias and q/k norm,
and the model type the worker loaded reaches ModelInfo."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import REPO_ROOT, child_env, config_dir, free_ports
from litelang.configs.schema import LitelangConfig
from litelang.kernels.kernel_set import REFERENCE
from litelang.kernels.rope import rope_cos_sin_cache
from litelang.proto import litelang_pb2 as pb
from litelang.proto import worker_pb2
from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.models.attention import Attention, HeadShard, QKNorm
from litelang.worker.models.qwen2 import Qwen2Model
from litelang.worker.models.registry import FAMILIES, family_of, load_spec
from litelang.worker.parallel import TPGroup
from litelang.worker.setup import build_runner


# ---------------------------------------------------------------------------------- registry


def test_registry_picks_qwen2_by_architectures(tiny_qwen2):
    family, spec = load_spec(tiny_qwen2)
    assert family.model_class is Qwen2Model
    config = json.loads((tiny_qwen2 / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (spec.architecture, spec.model_type) == ("Qwen2ForCausalLM", "qwen2")
    assert (spec.vocab_size, spec.hidden_size, spec.intermediate_size, spec.num_layers) == (256, 64, 128, 2)
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim) == (4, 2, 16)
    assert (spec.rms_norm_eps, spec.rope_theta, spec.max_position_embeddings) == (1e-6, 10000.0, 512)
    assert spec.attention_bias and not spec.qk_norm and spec.tie_word_embeddings
    assert spec.rope_scaling is None and spec.sliding_window is None
    # architectures decides, whatever model_type says
    assert family_of({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2_moe"}).model_class is Qwen2Model


def test_model_type_is_the_fallback_without_architectures():
    assert family_of({"model_type": "qwen2"}).model_class is Qwen2Model
    with pytest.raises(ValueError, match=r"model_type 'mistral' \(config.json has no architectures\) is not supported"):
        family_of({"model_type": "mistral"})


def test_unknown_architecture_names_it_and_the_supported_ones():
    with pytest.raises(ValueError) as err:
        family_of({"architectures": ["MistralForCausalLM"], "model_type": "qwen2"}, "ckpt")
    message = str(err.value)
    assert "'MistralForCausalLM' is not supported" in message
    assert all(name in message for name in FAMILIES) and "Qwen2ForCausalLM" in message


def test_worker_refuses_an_unknown_architecture_at_start_up(tmp_path, tiny_qwen2):
    """The real start-up path: build_runner, and litelang-worker exiting with the reason before
    it ever serves (a checkpoint of only config.json: the weights are never reached)."""
    path = config_dir(tmp_path, tiny_qwen2, architectures=["MistralForCausalLM"])
    with pytest.raises(ValueError, match="'MistralForCausalLM' is not supported; litelang serves LlamaForCausalLM, Qwen2ForCausalLM"):
        build_runner(LitelangConfig(model=str(path), device="cpu", kv_slots=100), rank=0)
    port = free_ports(1)[0]
    worker = subprocess.run(
        [sys.executable, "-m", "litelang.worker.main", "--model", str(path), "--device", "cpu",
         "--worker-base-port", str(port)],
        cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert worker.returncode != 0
    assert "'MistralForCausalLM' is not supported; litelang serves LlamaForCausalLM, Qwen2ForCausalLM" in worker.stderr


@pytest.mark.parametrize("changes, words", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling 'yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE scaling 'linear'"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}, "RoPE scaling 'dynamic'"),
    ({"use_sliding_window": True, "sliding_window": 128, "max_window_layers": 0, "layer_types": None},
     "sliding-window attention (window 128)"),
    ({"use_sliding_window": True, "sliding_window": 128, "layer_types": ["full_attention", "sliding_attention"]},
     "sliding-window attention (window 128)"),
], ids=["yarn", "linear-old-key", "rope_parameters", "sliding-from-layer-0", "sliding-layer-types"])
def test_unimplemented_features_are_refused(tmp_path, tiny_qwen2, changes, words):
    path = config_dir(tmp_path, tiny_qwen2, **changes)
    with pytest.raises(ValueError, match="not implemented") as err:
        load_spec(path)
    assert words in str(err.value) and "Qwen2ForCausalLM checkpoint not served" in str(err.value)


@pytest.mark.parametrize("changes", [
    {"rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
    {"rope_scaling": {"type": "default"}},
    {"use_sliding_window": False, "sliding_window": 128},
    # HF's Qwen2 slides only from layer max_window_layers on: here no layer does
    {"use_sliding_window": True, "sliding_window": 128, "max_window_layers": 2, "layer_types": None},
], ids=["default-rope_parameters", "default-rope_scaling", "window-off", "window-past-the-layers"])
def test_plain_rope_and_full_attention_are_served(tmp_path, tiny_qwen2, changes):
    _, spec = load_spec(config_dir(tmp_path, tiny_qwen2, **changes))
    assert spec.rope_scaling is None and spec.sliding_window is None


# ---------------------------------------------------------------------- the attention block


def attention_ref(x, w_qkv, bias, q_norm, k_norm, spec, cos_sin, positions):
    """Plain torch: projection, per-head RMSNorm of q and k (when given), rotate-half RoPE,
    causal GQA attention over all of x's tokens -> [tokens, heads * head_dim]."""
    n, d, hq, hkv = x.shape[0], spec.head_dim, spec.num_heads, spec.num_kv_heads
    qkv = F.linear(x, w_qkv, bias)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.view(n, hq, d), k.view(n, hkv, d), v.view(n, hkv, d)
    if q_norm is not None:
        def rms(t, w):
            return w * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + spec.rms_norm_eps))
        q, k = rms(q, q_norm), rms(k, k_norm)
    cos, sin = cos_sin[positions, : d // 2][:, None], cos_sin[positions, d // 2:][:, None]

    def rotate(t):
        a, b = t[..., : d // 2], t[..., d // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    q, k = rotate(q), rotate(k)
    group = hq // hkv
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                                         scale=1 / math.sqrt(d))
    return out.transpose(0, 1).reshape(n, hq * d)


def one_request_batch(tokens: int, prefill: int, slots: torch.Tensor) -> tuple[ForwardBatch, ForwardBatch]:
    """A prefill of the first `prefill` tokens of a request in row 0, then a decode of the next one."""
    table = torch.zeros((1, 64), dtype=torch.int32)
    table[0, :tokens] = slots.int()
    i32 = dict(dtype=torch.int32)
    prefill_batch = ForwardBatch(
        input_ids=None, positions=torch.arange(prefill), slots=slots[:prefill], req_to_slot=table,
        num_extend_tokens=prefill, extend_rows=torch.zeros(1, **i32), extend_cu_seqlens=torch.tensor([0, prefill], **i32),
        extend_prefix_lens=torch.zeros(1, **i32), extend_max_new_len=prefill,
        decode_rows=torch.zeros(0, **i32), decode_seq_lens=torch.zeros(0, **i32), logits_index=None,
    )
    decode_batch = ForwardBatch(
        input_ids=None, positions=torch.tensor([prefill]), slots=slots[prefill:prefill + 1], req_to_slot=table,
        num_extend_tokens=0, extend_rows=torch.zeros(0, **i32), extend_cu_seqlens=torch.zeros(1, **i32),
        extend_prefix_lens=torch.zeros(0, **i32), extend_max_new_len=0,
        decode_rows=torch.zeros(1, **i32), decode_seq_lens=torch.tensor([prefill + 1], **i32), logits_index=None,
    )
    return prefill_batch, decode_batch


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_attention_block_matches_plain_torch(tiny_qwen2, qk_norm, bias):
    """The block with and without q/k biases and the per-head q/k norm: a 7-token prefill, then a
    decode of the 8th token, against plain torch over all 8."""
    import dataclasses

    _, spec = load_spec(tiny_qwen2)
    spec = dataclasses.replace(spec, attention_bias=bias, qk_norm=qk_norm)
    torch.manual_seed(0)
    d, hq, hkv, n = spec.head_dim, spec.num_heads, spec.num_kv_heads, 8
    x = torch.randn(n, spec.hidden_size)
    w_qkv = torch.randn((hq + 2 * hkv) * d, spec.hidden_size) * 0.2
    b = torch.randn((hq + 2 * hkv) * d) if bias else None
    q_norm, k_norm = (torch.rand(d) + 0.5, torch.rand(d) + 0.5) if qk_norm else (None, None)
    cos_sin = rope_cos_sin_cache(d, spec.max_position_embeddings, spec.rope_theta)
    attention = Attention(REFERENCE, HeadShard.of(spec, TPGroup()), cos_sin, w_qkv, b,
                          o_weight=torch.randn(spec.hidden_size, hq * d),
                          qk_norm=QKNorm(q_norm, k_norm, spec.rms_norm_eps) if qk_norm else None)
    pools = [torch.zeros(40, hkv, d) for _ in range(2)]
    slots = torch.tensor([3, 11, 7, 30, 1, 22, 5, 9])
    prefill, decode = one_request_batch(n, n - 1, slots)
    got = torch.cat([attention.heads_output(x[: n - 1], None, prefill, *pools),
                     attention.heads_output(x[n - 1:], None, decode, *pools)])
    want = attention_ref(x, w_qkv, b, q_norm, k_norm, spec, cos_sin, torch.arange(n))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ the model type reported


def test_worker_init_reports_the_model_it_loaded(tiny_qwen2):
    from litelang.worker.service import WorkerService

    cfg = LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=100, max_batch_size=2)
    service = WorkerService(cfg, rank=0)
    service.runner = build_runner(cfg, rank=0)
    reply = service.Init(worker_pb2.InitRequest(), context=None)
    assert (reply.model_type, reply.architecture) == ("qwen2", "Qwen2ForCausalLM")
    assert reply.vocab_size == 256


def test_model_info_reports_the_workers_model_type():
    """ModelInfo's model_type is what the workers' InitResponse says, not a fixed name."""
    from litelang.scheduler.frontend.service import LitelangService

    info = worker_pb2.InitResponse(model_type="qwen3", architecture="Qwen3ForCausalLM", vocab_size=300,
                                   device="cpu", dtype="float32")
    engine = SimpleNamespace(info=info, capacity=77)
    tokenizer = SimpleNamespace(eos_token_ids=[2])
    service = LitelangService(LitelangConfig(model="some/dir"), engine, tokenizer)
    reply = asyncio.run(service.ModelInfo(pb.ModelInfoRequest(), context=None))
    assert (reply.model_type, reply.model_path, reply.vocab_size, reply.kv_capacity_tokens) == ("qwen3", "some/dir",
                                                                                              300, 77)
