"""Tokenize and Detokenize end to end (real worker and scheduler processes, the real tokenizer
on a tiny random Qwen2): the oracle is HF transformers' AutoTokenizer over the same files; a
prompt's ids equal what Generate counts and what prompt_logprobs reports; bad input is refused."""

from __future__ import annotations

import json

import grpc
import pytest
from transformers import AutoTokenizer

from litelang.client.api import chat_messages
from litelang.client.cli import main
from litelang.proto import litelang_pb2 as pb

pytestmark = pytest.mark.slow

TEXT = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)  # 你好"
# these tests tokenize more than they generate: prompts up to 128 tokens, short replies
SERVER_CONFIG = dict(kv_slots=512, max_batch_size=2, max_input_length=128, max_output_length=16)
MESSAGES = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is a radix tree?"}]


@pytest.fixture(scope="module")
def hf(tiny_model):
    return AutoTokenizer.from_pretrained(str(tiny_model))


def test_text_and_messages_match_hf(group, hf):
    reply = group.client.tokenize(TEXT)
    assert list(reply.token_ids) == hf.encode(TEXT, add_special_tokens=False)
    assert list(reply.tokens) == hf.convert_ids_to_tokens(list(reply.token_ids))
    rendered = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert list(group.client.tokenize(MESSAGES).token_ids) == hf.encode(rendered, add_special_tokens=False)


def test_detokenize_matches_hf(group, hf):
    ids = hf.encode(TEXT, add_special_tokens=False) + [hf.convert_tokens_to_ids("<|im_end|>")]
    assert group.client.detokenize(ids) == hf.decode(ids)
    assert group.client.detokenize(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True) == TEXT
    assert group.client.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    reply = group.client.stub.Detokenize(pb.DetokenizeRequest(token_ids=ids))
    assert b"".join(reply.token_bytes) == hf.decode(ids).encode("utf-8"), "the bytes of the ids, in order"
    assert [hf.decode([i]) for i in ids] == [b.decode("utf-8", errors="replace") for b in reply.token_bytes]


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"celsius": 21}'},
]


def test_tools_and_tool_turns_render_as_hf_renders_them(group, hf):
    """Offered tools, an assistant turn that called one (OpenAI's string arguments) and the tool's
    answer: the ids equal HF's template over the same conversation (arguments as an object)."""
    chat = chat_messages(TOOL_TURNS, TOOLS)
    got = list(group.client.stub.Tokenize(pb.TokenizeRequest(messages=chat)).token_ids)
    hf_turns = json.loads(json.dumps(TOOL_TURNS))
    hf_turns[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    text = hf.apply_chat_template(hf_turns, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "<tools>" in text and "<tool_response>" in text and '"arguments": {"city": "Paris"}' in text
    assert got == hf.encode(text, add_special_tokens=False)
    no_kind = pb.JsonObject(members=[pb.JsonMember(key="type", value=pb.JsonValue())])
    with pytest.raises(grpc.RpcError) as err:
        group.client.stub.Tokenize(pb.TokenizeRequest(messages=pb.ChatMessages(
            messages=chat.messages, tools=[chat.tools[0], no_kind])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "tools[1].type" in err.value.details()


def test_tools_keep_their_key_order_and_integers(group, hf):
    """The template renders a tool as it comes: keys in the client's order (not sorted), whole
    numbers as integers and fractions as floats, as HF renders the same dicts."""
    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "required": ["n"], "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 10, "multipleOf": 0.5, "default": None},
            "a": {"type": "array", "maxItems": 3, "items": {"enum": [True, False, "x"]}}}}}}
    turns = [{"role": "user", "content": "Pick one."}]
    got = list(group.client.stub.Tokenize(pb.TokenizeRequest(messages=chat_messages(turns, [tool]))).token_ids)
    text = hf.apply_chat_template(turns, tools=[tool], tokenize=False, add_generation_prompt=True)
    assert '"required": ["n"], "properties": {"n": {"type": "integer", "minimum": 1,' in text
    assert got == hf.encode(text, add_special_tokens=False)


def test_continue_final_message_leaves_the_reply_open(group, hf):
    """A prefilled start of the assistant's reply: HF's continue_final_message rendering (no end
    of turn after it, no new assistant turn); a last message that is not the assistant's is
    refused."""
    turns = [{"role": "user", "content": "Write fibonacci."}, {"role": "assistant", "content": "def fibonacci(n):"}]
    chat = chat_messages(turns, continue_final_message=True)
    got = list(group.client.stub.Tokenize(pb.TokenizeRequest(messages=chat)).token_ids)
    text = hf.apply_chat_template(turns, tokenize=False, continue_final_message=True, add_generation_prompt=False)
    assert text.endswith("def fibonacci(n):")
    assert got == hf.encode(text, add_special_tokens=False)
    with pytest.raises(grpc.RpcError) as err:
        group.client.stub.Tokenize(pb.TokenizeRequest(messages=pb.ChatMessages(
            continue_final_message=True, messages=chat.messages[:1])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "assistant" in err.value.details()


def test_generate_sees_the_same_ids(group):
    ids = list(group.client.tokenize(TEXT).token_ids)
    reply = group.client.generate(TEXT, max_new_tokens=2, prompt_logprobs=0)
    assert reply.usage.prompt_tokens == len(ids)
    assert list(reply.prompt_token_ids) == ids and len(reply.prompt_logprobs) == len(ids) - 1
    first = next(iter(group.client.generate_stream(TEXT, max_new_tokens=2, prompt_logprobs=0)))
    assert list(first.prompt_token_ids) == ids
    assert not group.client.generate(TEXT, max_new_tokens=2).prompt_token_ids  # only with prompt_logprobs


def test_bad_input_is_invalid_argument(group):
    with pytest.raises(grpc.RpcError) as err:
        group.client.stub.Tokenize(pb.TokenizeRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no input" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        group.client.detokenize([5, 10**7])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside the vocabulary" in err.value.details()


def test_cli_tokenize(group, hf, capsys):
    capsys.readouterr()
    assert main(["--address", group.address, "tokenize", TEXT]) == 0
    rows = [line.split("\t", 1) for line in capsys.readouterr().out.splitlines()]
    ids = hf.encode(TEXT, add_special_tokens=False)
    assert rows == [[str(i), t] for i, t in zip(ids, hf.convert_ids_to_tokens(ids))]
