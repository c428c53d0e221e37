"""Structured outputs end to end (real worker and scheduler processes, a tiny random Qwen2 with
the real tokenizer). Random weights would never produce a format by chance, so every output that
matches one shows the mask at work; the oracles are Python's own `re`, `json` and the choice
list. Also: a request without a format gets the same tokens beside constrained ones, n and
streams keep the format, and bad formats are refused with INVALID_ARGUMENT."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from litelang.proto import litelang_pb2 as pb

from helpers import wait_idle

pytestmark = pytest.mark.slow

PROMPT = "Answer in the requested format:"
PHONE = r"[0-9]{3}-[a-z]{2}"
# room for constrained and plain requests in the same steps; no prefix cache, so an idle pool is
# all free (kv_free == kv_capacity)
SERVER_CONFIG = dict(kv_slots=2048, max_batch_size=8, max_input_length=64, max_output_length=64,
                     use_radix_cache=False)


def fmt(**kind) -> pb.StructuredOutput:
    return pb.StructuredOutput(**kind)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_regex_output_matches(group, temperature):
    reply = group.client.generate(PROMPT, max_new_tokens=32, temperature=temperature, seed=7,
                                  structured_output=fmt(regex=PHONE))
    assert re.fullmatch(PHONE, reply.text), reply.text
    assert reply.finish_reason == pb.FINISH_REASON_EOS  # ended by the format, not the length limit


def test_choice_output_is_one_of_them(group):
    choices = ["yes", "no", "maybe \"so\""]
    for seed in range(4):
        reply = group.client.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=seed,
                                      structured_output=fmt(choice=pb.ChoiceList(choices=choices)))
        assert reply.text in choices


def test_json_schema_output_validates(group):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    reply = group.client.generate(PROMPT, max_new_tokens=48, temperature=1.0, seed=3,
                                  structured_output=fmt(json_schema=json.dumps(schema)))
    value = json.loads(reply.text)
    assert set(value) == {"answer", "sure"} and value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)


def test_json_object_keeps_a_forced_token_out_until_it_fits(group):
    """'}' pushed up by +100 wins every draw it is allowed in, and '{}' by +50 the rest: the
    format forbids '}' first (an object must open), so '{}' comes, and then only the end can.
    Without the format the reply starts with '}'."""
    [close], [empty] = group.client.tokenize("}").token_ids, group.client.tokenize("{}").token_ids
    bias = {close: 100.0, empty: 50.0}
    reply = group.client.generate(PROMPT, max_new_tokens=16, temperature=0, logit_bias=bias,
                                  structured_output=fmt(json_object=True))
    assert reply.text == "{}" and reply.finish_reason == pb.FINISH_REASON_EOS
    plain = group.client.generate(PROMPT, max_new_tokens=2, temperature=0, logit_bias=bias)
    assert plain.text.startswith("}")


def test_a_request_without_a_format_is_unchanged_beside_constrained_ones(group):
    alone = group.client.generate(PROMPT, max_new_tokens=24, temperature=0, ignore_eos=True)
    with ThreadPoolExecutor(4) as pool:
        constrained = [pool.submit(group.client.generate, PROMPT, max_new_tokens=32, temperature=1.0, seed=s,
                                   structured_output=fmt(regex=PHONE)) for s in range(3)]
        beside = pool.submit(group.client.generate, PROMPT, max_new_tokens=24, temperature=0, ignore_eos=True)
        assert list(beside.result().token_ids) == list(alone.token_ids)
        assert all(re.fullmatch(PHONE, c.result().text) for c in constrained)
    stats = wait_idle(group.client)
    assert stats.kv_free == stats.kv_capacity


def test_n_completions_and_streams_keep_the_format(group):
    reply = group.client.generate(PROMPT, max_new_tokens=32, temperature=1.0, seed=11, n=3,
                                  structured_output=fmt(regex=PHONE))
    assert len(reply.completions) == 3 and all(re.fullmatch(PHONE, c.text) for c in reply.completions)
    text = "".join(chunk.text for chunk in group.client.generate_stream(
        PROMPT, max_new_tokens=32, temperature=1.0, seed=5, structured_output=fmt(regex=PHONE)))
    assert re.fullmatch(PHONE, text)


@pytest.mark.parametrize("kind, words", [
    (dict(regex="[a-"), "regex does not parse"),
    (dict(json_schema="{not json"), "not JSON"),
    (dict(json_schema='{"type": "nonsense"}'), "json schema does not parse"),
    (dict(grammar="root ::= "), "grammar does not parse"),
    (dict(choice=pb.ChoiceList()), "choice needs"),
    (dict(), "structured_output is empty"),
])
def test_bad_formats_are_invalid_argument(group, kind, words):
    with pytest.raises(grpc.RpcError) as e:
        group.client.generate(PROMPT, max_new_tokens=8, structured_output=fmt(**kind))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()


def test_min_new_tokens_with_a_format_is_refused(group):
    with pytest.raises(grpc.RpcError) as e:
        group.client.generate(PROMPT, max_new_tokens=8, min_new_tokens=2, structured_output=fmt(regex=PHONE))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "min_new_tokens" in e.value.details()
