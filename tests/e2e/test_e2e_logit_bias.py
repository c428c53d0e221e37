"""SamplingParams.logit_bias end to end (real worker and scheduler processes, a tiny random Qwen2
with the real tokenizer): greedy tokens and logprobs against HF transformers' logits plus the same
bias (a plain-torch greedy loop), forcing and banning on the sampling path, no bias left behind
on a reused row, and bad values refused."""

from __future__ import annotations

import grpc
import pytest
import torch


pytestmark = pytest.mark.slow

PROMPT = [785, 3974, 13876, 38835, 374]
NEW = 8
# one running request at a time: every request reuses the same sampler row
SERVER_CONFIG = dict(kv_slots=512, max_batch_size=1, max_input_length=64, max_output_length=64)


def hf_biased_greedy(model_dir, prompt: list[int], bias: dict[int, float], n: int) -> tuple[list[int], list[float]]:
    """The oracle: HF's float32 logits, plus the bias, argmax; and the biased log-softmax there."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1].clone()
            for token, value in bias.items():
                logits[token] += value
            token = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            ids.append(token)
    return ids[len(prompt):], logprobs


def greedy(group, **kw):
    return group.client.generate(PROMPT, max_new_tokens=NEW, temperature=0, ignore_eos=True, logprobs=True, **kw)


def test_greedy_with_bias_matches_hf(group, tiny_model):
    plain = greedy(group)
    # ban the unbiased path's first two tokens, nudge two others: the result depends on the logits
    bias = {plain.token_ids[0]: -100.0, plain.token_ids[1]: -100.0, 100: 0.05, 200: -0.05}
    want_tokens, want_logprobs = hf_biased_greedy(tiny_model, PROMPT, bias, NEW)
    got = greedy(group, logit_bias=bias)
    assert list(got.token_ids) == want_tokens
    assert not {plain.token_ids[0], plain.token_ids[1]} & set(got.token_ids)
    torch.testing.assert_close(torch.tensor(list(got.logprobs)), torch.tensor(want_logprobs), atol=1e-4, rtol=0)


def test_forced_token_on_the_sampling_path(group):
    got = group.client.generate(PROMPT, max_new_tokens=NEW, temperature=1.0, seed=4, ignore_eos=True, logprobs=True,
                                logit_bias={4242: 100.0})
    assert list(got.token_ids) == [4242] * NEW
    assert all(lp > -1e-3 for lp in got.logprobs), "the biased distribution puts all its mass there"


def test_a_reused_row_forgets_the_bias(group):
    """max_batch_size 1: the next request runs on the same row. top_k 1 on the full sampling
    path (where biases apply) must give the unbiased greedy tokens again."""
    plain = greedy(group)
    greedy(group, logit_bias={plain.token_ids[0]: -100.0})
    again = group.client.generate(PROMPT, max_new_tokens=NEW, temperature=1.0, top_k=1, ignore_eos=True)
    assert list(again.token_ids) == list(plain.token_ids)


@pytest.mark.parametrize("bias, message", [
    ({5: 100.5}, "outside [-100, 100]"),
    ({5: float("nan")}, "finite"),
    ({-1: 1.0}, "negative"),
    ({10**7: 1.0}, "outside the vocabulary"),
    ({i: 1.0 for i in range(301)}, "at most 300"),
])
def test_bad_bias_is_invalid_argument(group, bias, message):
    with pytest.raises(grpc.RpcError) as err:
        group.client.generate(PROMPT, max_new_tokens=2, logit_bias=bias)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
