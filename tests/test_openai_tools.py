"""Tool calling through the OpenAI gateway on the real default checkpoint (Qwen2.5-Coder-0.5B-
Instruct, greedy): offered a weather tool and asked about Paris, the model answers with a call.
The oracle for what it said is the gRPC Generate reply to the same conversation, read with
json.loads here; the gateway must return that call as OpenAI's `tool_calls`, unary and streamed,
and take the tool's answer back in the next turn."""

from __future__ import annotations

import json

import pytest

# the device's GPU runs collect every module but deselect these CPU tests; CI installs the SDK
# (test_units checks that it does, so a missing install cannot pass as skips)
openai = pytest.importorskip("openai")

from helpers import openai_gateway, server_group  # noqa: E402
from litelang.client.api import chat_messages  # noqa: E402
from litelang.proto import litelang_pb2 as pb  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "coder"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def group(default_model_dir, tmp_path_factory):
    with server_group(default_model_dir, tmp_path_factory.mktemp("tools_logs"), kv_slots=4096, max_batch_size=2,
                      max_input_length=1024, max_output_length=128) as g:
        yield g


@pytest.fixture(scope="module")
def api(group, tmp_path_factory):
    with openai_gateway(group, tmp_path_factory.mktemp("tools_gateway"), "--served-model-name", MODEL) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def said(group) -> dict:
    """What the model says over gRPC, given the tools: the call object it wrote."""
    chat = chat_messages(ASK, TOOLS)
    reply = group.client.stub.Generate(pb.GenerateRequest(
        messages=chat, sampling=pb.SamplingParams(temperature=0, max_new_tokens=60)))
    text = reply.text.strip()
    if text.startswith("<tool_call>"):
        text = text.removeprefix("<tool_call>").removesuffix("</tool_call>").strip()
    call = json.loads(text)  # the premise of this file: the model calls the tool
    assert call["name"] == "get_weather", reply.text
    return call


def test_the_call_comes_back_as_tool_calls(api, said):
    got = api.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60)
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == said["name"]
    assert json.loads(call.function.arguments) == said["arguments"]


def test_the_streamed_call_equals_the_unary_one(api, said):
    chunks = list(api.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60,
                                              stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert content == ""
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        (0, said["name"], said["arguments"])]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_the_tools_answer_goes_back_to_the_model(api, group, said):
    """The assistant's call and the tool's result, as OpenAI clients send them back: the reply is
    the gRPC reply to the same conversation (which the Tokenize tests check against HF's template)."""
    first = api.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60)
    call = first.choices[0].message.tool_calls[0]
    turns = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "name": call.function.name, "content": '{"celsius": 21, "sky": "clear"}'},
    ]
    got = api.chat.completions.create(model=MODEL, messages=turns, tools=TOOLS, temperature=0, max_tokens=40)
    chat = chat_messages(turns, TOOLS)
    want = group.client.stub.Generate(pb.GenerateRequest(messages=chat, sampling=pb.SamplingParams(
        temperature=0, max_new_tokens=40, skip_special_tokens=True)))
    assert got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
