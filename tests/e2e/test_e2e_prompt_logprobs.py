"""SamplingParams.prompt_logprobs end to end (real worker and scheduler processes, a tiny random
Qwen2 with the real tokenizer): each prompt token's log-probability after the tokens before it,
and the N most likely tokens there, against HF transformers' log-softmax over the same prompt
(the oracle). The prompt is prefilled in chunks of 4 tokens, so the scores cross steps; a cached
prompt is computed again; streams and n > 1 carry them once; bad values are refused."""

from __future__ import annotations

import grpc
import pytest
import torch


pytestmark = pytest.mark.slow

PROMPT = [785, 3974, 13876, 38835, 374, 264, 1632, 315, 6195, 11, 1221]
# prefill chunks of 4 tokens: PROMPT's scores come from several steps
SERVER_CONFIG = dict(kv_slots=512, max_batch_size=4, max_input_length=64, max_output_length=64,
                     max_prefill_tokens=4)


@pytest.fixture(scope="module")
def hf_scores(tiny_model) -> torch.Tensor:
    """[len(PROMPT) - 1, vocab]: HF's float32 log-softmax predicting each prompt token after the first."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([PROMPT])).logits[0, :-1].float(), -1)


def ask(group, **kw):
    return group.client.generate(PROMPT, max_new_tokens=2, temperature=0, ignore_eos=True, **kw)


def test_scores_and_alternatives_match_hf(group, hf_scores):
    reply = ask(group, prompt_logprobs=3)
    want = hf_scores.gather(1, torch.tensor(PROMPT[1:])[:, None])[:, 0]
    assert len(reply.prompt_logprobs) == len(PROMPT) - 1 == len(reply.prompt_top_logprobs)
    torch.testing.assert_close(torch.tensor(list(reply.prompt_logprobs)), want, atol=1e-4, rtol=0)
    top_values, top_ids = hf_scores.topk(3, -1)
    for p, top in enumerate(reply.prompt_top_logprobs):
        assert list(top.token_ids) == top_ids[p].tolist(), p
        torch.testing.assert_close(torch.tensor(list(top.logprobs)), top_values[p], atol=1e-4, rtol=0)


def test_without_alternatives_and_only_when_asked(group, hf_scores):
    reply = ask(group, prompt_logprobs=0)
    assert len(reply.prompt_logprobs) == len(PROMPT) - 1 and not reply.prompt_top_logprobs
    assert not ask(group).prompt_logprobs


def test_a_cached_prompt_is_scored_in_full(group, hf_scores):
    ask(group)  # the prompt is now in the prefix cache
    again = ask(group)
    assert again.usage.cached_tokens == len(PROMPT) - 1
    scored = ask(group, prompt_logprobs=0)
    assert scored.usage.cached_tokens == 0, "scoring needs every position's logits: nothing read from the cache"
    want = hf_scores.gather(1, torch.tensor(PROMPT[1:])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(list(scored.prompt_logprobs)), want, atol=1e-4, rtol=0)


def test_stream_carries_them_on_the_first_chunk(group):
    unary = ask(group, prompt_logprobs=2)
    chunks = list(group.client.generate_stream(PROMPT, max_new_tokens=2, temperature=0, ignore_eos=True,
                                               prompt_logprobs=2))
    assert list(chunks[0].prompt_logprobs) == list(unary.prompt_logprobs)
    assert chunks[0].prompt_top_logprobs == unary.prompt_top_logprobs
    assert not any(c.prompt_logprobs for c in chunks[1:])


def test_n_completions_score_the_prompt_once(group):
    reply = group.client.generate(PROMPT, max_new_tokens=2, temperature=1.0, seed=3, n=3, prompt_logprobs=0)
    assert len(reply.completions) == 3
    assert list(reply.prompt_logprobs) == list(ask(group, prompt_logprobs=0).prompt_logprobs)


def test_a_one_token_prompt_has_nothing_to_score(group):
    reply = group.client.generate([PROMPT[0]], max_new_tokens=2, prompt_logprobs=1)
    assert len(reply.token_ids) == 2 and not reply.prompt_logprobs


def test_bad_values_are_invalid_argument(group):
    with pytest.raises(grpc.RpcError) as err:
        ask(group, prompt_logprobs=21)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt_logprobs must be in [0, 20]" in err.value.details()
    session = group.client.chat(prompt_logprobs=0)
    try:
        msgs = list(session.send("hello", max_new_tokens=2))
    finally:
        session.close()
    assert msgs[-1].WhichOneof("msg") == "error" and "prompt_logprobs is for Generate" in msgs[-1].error.message
