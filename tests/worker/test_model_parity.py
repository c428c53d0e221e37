"""The worker's model and runner against HF transformers (the oracle) on tiny random Qwen2s."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, RepetitionPenaltyLogitsProcessor

from helpers import make_tiny_qwen2
from parity import SlotPool, assert_teacher_forced, greedy_sampling, hf_greedy, run_greedy
from litelang.configs.schema import LitelangConfig
from litelang.proto import worker_pb2
from litelang.worker.setup import build_runner


@pytest.mark.parametrize("tie", [True, False])
def test_greedy_matches_hf(tmp_path, tie):
    path = make_tiny_qwen2(tmp_path / "m", tie=tie)
    prompts = {1: [5, 17, 99, 3, 250, 8, 1], 2: [42], 3: list(range(100, 140))}
    runner = build_runner(LitelangConfig(model=str(path), device="cpu", kv_slots=1000, max_batch_size=4,
                                         max_input_length=64, max_output_length=64), rank=0)
    got = run_greedy(runner, prompts, n=12)
    for rid, p in prompts.items():
        assert got[rid] == hf_greedy(path, p, 12), f"request {rid}"


def test_triton_kernels_defer_norms_and_match_hf(tiny_qwen2, monkeypatch):
    """The Triton kernels through the whole model (CPU interpreter, tiny blocks): decode steps
    move each RMSNorm into the projections around it (worker/residual.py), prefills keep the norm
    kernels. Teacher-forced logits of batch-3 and batch-1 decode steps against HF float32."""
    pytest.importorskip("triton")
    from litelang.worker import residual

    deferred, make_stream = [], residual.DeferredNormStream.__init__

    def counted(self, *args, **kwargs):
        deferred.append(1)
        make_stream(self, *args, **kwargs)

    monkeypatch.setattr(residual.DeferredNormStream, "__init__", counted)
    monkeypatch.setenv("LITELANG_KERNELS", "triton")
    runner = build_runner(LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=1000, max_batch_size=4,
                                         max_input_length=64, max_output_length=64), rank=0)
    assert runner.model.kernels.name == "triton"
    hf = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    slots, steps = SlotPool(), 3
    for seqs in ({1: [5, 17, 99, 3, 250, 8, 1, 60, 61, 62], 2: [42, 9, 8, 7], 3: list(range(100, 124))},
                 {4: [7, 7, 200, 31, 1, 2, 3]}):
        assert_teacher_forced(runner, hf, seqs, slots, steps, check_prefill=False)
    assert len(deferred) == 2 * steps, "every decode step defers its norms"


def test_split_k_partials_through_the_norm_match_hf(tiny_qwen2, monkeypatch):
    """Where the kernels hand o and down back as float32 split-K partials (worker/residual.py; on
    CUDA, at batch 17 to 64), the next norm sums them: the same greedy tokens as HF, with every
    projection added to the stream taking that path."""
    import dataclasses

    from litelang.kernels import kernel_set as kernels
    from litelang.kernels.linear import linear_partials_ref

    calls = []

    def partials(x, w):
        calls.append(w.shape)
        return linear_partials_ref(x, w, 2)

    monkeypatch.setattr(kernels, "REFERENCE", dataclasses.replace(kernels.REFERENCE, linear_partials=partials))
    runner = build_runner(LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=1000, max_batch_size=4,
                                         max_input_length=64, max_output_length=64), rank=0)
    prompts = {1: [5, 17, 99, 3, 250, 8, 1], 2: [42], 3: list(range(100, 140))}
    got = run_greedy(runner, prompts, n=8)
    for rid, p in prompts.items():
        assert got[rid] == hf_greedy(tiny_qwen2, p, 8), f"request {rid}"
    layers = len(runner.model.layers)
    assert len(calls) == 2 * layers * 8  # o and down of every layer, every step (1 prefill + 7 decode)


def test_chunked_prefill_matches_whole(tiny_qwen2):
    cfg = LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=1000, max_batch_size=4,
                         max_input_length=64, max_output_length=64)
    prompts = {7: list(range(30, 75)), 8: [9, 8, 7, 6, 5]}
    whole = run_greedy(build_runner(cfg, 0), prompts, n=8)
    chunked = run_greedy(build_runner(cfg, 0), prompts, n=8, chunk=6)
    assert whole == chunked
    assert whole[7] == hf_greedy(tiny_qwen2, prompts[7], 8)


def test_min_new_tokens_masks_stop_tokens(tiny_qwen2):
    """Before suppress_until the worker never samples a suppressed (stop) token: the first token is
    HF's best token other than the greedy one; later positions are free again."""
    prompt = [5, 17, 99, 3]
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    greedy, runner_up = logits.topk(2).indices.tolist()
    cfg = LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=100, max_batch_size=2,
                         max_input_length=32, max_output_length=32)
    runner = build_runner(cfg, rank=0)
    sampling = greedy_sampling()
    sampling.suppress_until = len(prompt) + 1
    sampling.suppress_token_ids.extend([greedy])
    req = worker_pb2.StepRequest(step_id=0)
    req.extends.add(rid=1, token_ids=prompt, slots=list(range(4)), sample=True, is_new=True, sampling=sampling)
    first = runner.step(req).token_ids[0]
    assert first == runner_up != greedy
    # without suppression the same request samples the greedy token
    plain = worker_pb2.StepRequest(step_id=1)
    plain.extends.add(rid=2, token_ids=prompt, slots=list(range(10, 14)), sample=True, is_new=True, sampling=greedy_sampling())
    assert runner.step(plain).token_ids[0] == greedy


def test_logprobs_match_hf(tiny_qwen2):
    """The logprob the worker returns with each greedy token is HF's log-softmax at that step."""
    prompt = [11, 22, 33, 44, 55]
    cfg = LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=100, max_batch_size=2,
                         max_input_length=32, max_output_length=32)
    runner = build_runner(cfg, rank=0)
    req = worker_pb2.StepRequest(step_id=0)
    req.extends.add(rid=1, token_ids=prompt, slots=list(range(5)), sample=True, is_new=True, sampling=greedy_sampling())
    reply = runner.step(req)
    got = list(zip(reply.token_ids, reply.logprobs))
    for step in range(1, 6):
        req = worker_pb2.StepRequest(step_id=step)
        req = worker_pb2.StepRequest(step_id=step, decode_rids=[1], decode_slots=[10 + step])
        reply = runner.step(req)
        got += list(zip(reply.token_ids, reply.logprobs))
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    ids = prompt + [tok for tok, _ in got]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    for i, (tok, lp) in enumerate(got):
        assert abs(logp[len(prompt) - 1 + i, tok].item() - lp) < 1e-4


def test_top_logprobs_match_hf(tiny_qwen2):
    """Sampling.top_logprobs: the step returns top_n = the most any request asked for, one row per
    sampled token. A greedy request's row is HF's log-softmax topk, led by its token with its
    logprob; a sampled request's row is the topk of the distribution its logprob is taken from:
    repetition-penalized, stop tokens masked before min_new_tokens (HF's processors as the
    oracle). Steps where nobody asks carry no alternatives."""
    greedy_prompt, sampled_prompt = [11, 22, 33, 44, 55], [7, 8, 9, 7, 8, 9]
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    with torch.no_grad():  # mask the two tokens HF likes best after the sampled prompt
        masked = model(torch.tensor([sampled_prompt])).logits[0, -1].topk(2).indices.tolist()
    cfg = LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=100, max_batch_size=4,
                         max_input_length=32, max_output_length=32)
    runner = build_runner(cfg, rank=0)
    greedy = greedy_sampling()
    greedy.top_logprobs = 5
    sampled = worker_pb2.Sampling(temperature=1.0, top_p=1.0, seed=3, repetition_penalty=1.5, top_logprobs=3,
                                  suppress_until=len(sampled_prompt) + 2, suppress_token_ids=masked)
    req = worker_pb2.StepRequest(step_id=0)
    req.extends.add(rid=1, token_ids=greedy_prompt, slots=list(range(5)), sample=True, is_new=True, sampling=greedy)
    req.extends.add(rid=2, token_ids=sampled_prompt, slots=list(range(5, 11)), sample=True, is_new=True, sampling=sampled,
                    prompt_ids=sampled_prompt)
    replies = [runner.step(req)]
    for step in range(1, 5):
        replies.append(runner.step(worker_pb2.StepRequest(step_id=step, decode_rids=[1, 2], decode_slots=[20 + step, 40 + step])))
    plain = worker_pb2.StepRequest(step_id=9)
    plain.extends.add(rid=3, token_ids=[1, 2, 3], slots=[60, 61, 62], sample=True, is_new=True, sampling=greedy_sampling())
    quiet = runner.step(plain)
    assert quiet.top_n == 0 and not quiet.top_ids and not quiet.top_logprobs

    ids = greedy_prompt + [r.token_ids[0] for r in replies]
    s_ids = sampled_prompt + [r.token_ids[1] for r in replies]
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1).topk(5)
        s_logits = model(torch.tensor([s_ids])).logits[0].float()
    s_end, s_want = len(sampled_prompt), []
    for i in range(len(replies)):
        x = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([s_ids[: s_end + i]]), s_logits[s_end - 1 + i][None].clone())
        if i < 2:
            x[0, masked] = float("-inf")
        s_want.append(torch.log_softmax(x[0], -1).topk(3))
    for i, r in enumerate(replies):
        assert list(r.rids) == [1, 2] and r.top_n == 5
        assert len(r.top_ids) == len(r.top_logprobs) == 2 * 5
        top_ids, top_lps = list(r.top_ids[:5]), list(r.top_logprobs[:5])
        at = len(greedy_prompt) - 1 + i
        assert top_ids == want.indices[at].tolist(), f"step {i}"
        assert top_lps == pytest.approx(want.values[at].tolist(), abs=1e-4)
        assert top_ids[0] == r.token_ids[0] and top_lps[0] == r.logprobs[0]
        # the sampled request: the first 3 entries of its row
        top_ids, top_lps = list(r.top_ids[5:8]), list(r.top_logprobs[5:8])
        assert top_ids == s_want[i].indices.tolist(), f"step {i}"
        assert top_lps == pytest.approx(s_want[i].values.tolist(), abs=1e-4)
        if r.token_ids[1] in top_ids:
            assert top_lps[top_ids.index(r.token_ids[1])] == r.logprobs[1]
