"""SamplingParams.n end to end (real worker and scheduler processes, a tiny random Qwen2): n
completions of one prompt, each equal to a single request with seed + index (the oracle: the
one-completion path, bit for bit under `deterministic: true`), streamed and unary alike, the
prompt computed once, aborted together, and bad values refused."""

from __future__ import annotations

import threading
from collections import defaultdict

import grpc
import pytest

from helpers import wait_idle
from litelang.proto import litelang_pb2 as pb

pytestmark = pytest.mark.slow

NEW = 8
# deterministic: a completion's tokens and logprobs do not depend on what shares its steps,
# so a single request is an exact oracle for each of the n
SERVER_CONFIG = dict(kv_slots=1024, max_batch_size=4, max_reqs=8, max_input_length=64, max_output_length=64,
                     deterministic=True)
SAMPLE = dict(max_new_tokens=NEW, temperature=1.0, ignore_eos=True, logprobs=True)


def test_seeded_completions_equal_single_requests_with_seed_plus_index(group):
    prompt = [785, 3974, 13876, 38835, 374, 264]
    reply = group.client.generate(prompt, n=3, seed=11, **SAMPLE)
    assert [c.index for c in reply.completions] == [0, 1, 2]
    for i, c in enumerate(reply.completions):
        alone = group.client.generate(prompt, seed=11 + i, **SAMPLE)
        assert list(c.token_ids) == list(alone.token_ids), i
        assert list(c.logprobs) == list(alone.logprobs), i
        assert c.text == alone.text and c.finish_reason == alone.finish_reason
    first = reply.completions[0]
    assert (list(reply.token_ids), reply.text, list(reply.logprobs)) == (list(first.token_ids), first.text,
                                                                         list(first.logprobs))
    assert len({tuple(c.token_ids) for c in reply.completions}) > 1, "the seeds must differ between completions"
    assert reply.usage.completion_tokens == 3 * NEW and reply.usage.prompt_tokens == len(prompt)
    assert reply.timings.total_ms >= reply.timings.ttft_ms > 0


def test_stream_carries_what_unary_returns(group):
    prompt = [9707, 11, 1879, 0, 220, 17, 18]
    unary = group.client.generate(prompt, n=3, seed=5, **SAMPLE)
    ids, text, finals = defaultdict(list), defaultdict(str), defaultdict(list)
    for chunk in group.client.generate_stream(prompt, n=3, seed=5, **SAMPLE):
        ids[chunk.index] += chunk.token_ids
        text[chunk.index] += chunk.text
        if chunk.finish_reason:
            finals[chunk.index].append(chunk.usage.completion_tokens)
    assert sorted(ids) == [0, 1, 2]
    for c in unary.completions:
        assert ids[c.index] == list(c.token_ids) and text[c.index] == c.text
        assert finals[c.index] == [NEW], "each completion ends once, with its own usage"


def test_unseeded_completions_differ(group):
    reply = group.client.generate([100, 200, 300, 400], n=4, **SAMPLE)
    assert len(reply.completions) == 4
    assert len({tuple(c.token_ids) for c in reply.completions}) > 1


def test_prompt_is_computed_once(group):
    """The siblings reuse completion 0's prompt KV: each of the other n - 1 finds all but the
    prompt's last token in the prefix cache."""
    prompt = [11, 22, 33, 44, 55, 66, 77, 88, 99, 111, 122]
    before = group.client.stats().cached_prompt_tokens
    group.client.generate(prompt, n=4, seed=1, **SAMPLE)
    assert group.client.stats().cached_prompt_tokens - before == 3 * (len(prompt) - 1)


def test_abort_by_request_id_ends_every_completion(group):
    finals, started = {}, threading.Event()

    def consume():
        for chunk in group.client.generate_stream([7, 8, 9], request_id="family", n=3, seed=2, temperature=1.0,
                                                  ignore_eos=True, max_new_tokens=60):
            started.set()
            if chunk.finish_reason:
                finals[chunk.index] = chunk.finish_reason

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(60)
    assert group.client.abort("family") == ["family"]
    t.join(60)
    assert finals == {i: pb.FINISH_REASON_ABORTED for i in range(3)}
    wait_idle(group.client)


def test_more_completions_than_the_queue_holds_is_resource_exhausted(group):
    with pytest.raises(grpc.RpcError) as err:
        group.client.generate([5, 6, 7], n=40, seed=3, **SAMPLE)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert "queue" in err.value.details()
    wait_idle(group.client)  # the completions already queued were aborted: no KV held


@pytest.mark.parametrize("n", [0, -1, 65])
def test_bad_n_is_invalid_argument(group, n):
    with pytest.raises(grpc.RpcError) as err:
        group.client.generate([5, 6, 7], n=n, max_new_tokens=2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "n must be in [1, 64]" in err.value.details()


def test_chat_turn_with_n_is_invalid_argument(group):
    session = group.client.chat(n=2)
    try:
        msgs = list(session.send("hello", max_new_tokens=2))
    finally:
        session.close()
    assert msgs[-1].WhichOneof("msg") == "error"
    assert msgs[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "n must be 1 in a chat" in msgs[-1].error.message
