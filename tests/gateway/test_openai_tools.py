"""Tool calling through the OpenAI gateway on the real default checkpoint (Qwen2.5-Coder-0.5B-
Instruct, greedy): offered a weather tool and asked about Paris, the model answers with a call.
The oracle for what it said is the gRPC Generate reply to the same conversation, read with
json.loads here; the gateway must return that call as OpenAI's `tool_calls`, unary and streamed,
and take the tool's answer back in the next turn. Forced calls (tool_choice "required" or a named
function) are checked against the tools' own parameters: the call named, its arguments' types."""

from __future__ import annotations

import json

import pytest

# the device's GPU runs collect every module but deselect these CPU tests; CI installs the SDK
# (test_units checks that it does, so a missing install cannot pass as skips)
openai = pytest.importorskip("openai")

from litelang.client.api import chat_messages  # noqa: E402
from litelang.proto import litelang_pb2 as pb  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "coder"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
# room for the chat template with the tools (the prompt) and a call or two (the reply)
SERVER_CONFIG = dict(kv_slots=4096, max_batch_size=2, max_input_length=1024, max_output_length=128)
GATEWAY_FLAGS = ("--served-model-name", MODEL)


@pytest.fixture(scope="module")
def served_model(default_model_dir):
    """For `group`: the real checkpoint, which calls the tool when asked (random weights would not)."""
    return default_model_dir


@pytest.fixture(scope="module")
def api(gateway_url):
    return openai.OpenAI(base_url=gateway_url, api_key="unused", max_retries=0, timeout=300)


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


# ---- forced calls: tool_choice "required" or a named function (structured outputs under the hood)

ALARM = {"type": "function", "function": {
    "name": "set_alarm", "description": "Set the alarm clock",
    "parameters": {"type": "object", "properties": {"hour": {"type": "string", "enum": ["six", "seven", "eight"]},
                                                    "loud": {"type": "boolean"}},
                   "required": ["hour", "loud"]}}}
BOTH = TOOLS + [ALARM]


def fits(name: str, arguments: str) -> bool:
    """The arguments are a JSON object with the tool's required keys, of the right types."""
    args = json.loads(arguments)
    if name == "get_weather":
        return isinstance(args, dict) and isinstance(args.get("city"), str)
    return isinstance(args, dict) and args.get("hour") in ("six", "seven", "eight") and isinstance(args.get("loud"), bool)


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


@pytest.mark.parametrize("name", ["get_weather", "set_alarm"])
def test_a_named_tool_choice_forces_that_call(api, name):
    """Even the tool the question does not call for (set_alarm, asked about the weather)."""
    got = api.chat.completions.create(model=MODEL, messages=ASK, tools=BOTH, tool_choice=named(name), temperature=0,
                                      max_tokens=60)
    choice = got.choices[0]
    assert choice.finish_reason == "stop", "OpenAI's finish reason for a forced named call"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == name
    assert fits(name, call.function.arguments), call.function.arguments


def test_a_streamed_named_call_per_choice(api):
    """n = 2, streamed: no content, and each choice ends with one set_alarm call that fits."""
    chunks = list(api.chat.completions.create(model=MODEL, messages=ASK, tools=BOTH, tool_choice=named("set_alarm"),
                                              temperature=0, max_tokens=60, n=2, stream=True))
    for j in range(2):
        deltas = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == j]
        assert "".join(d.delta.content or "" for d in deltas) == ""
        calls: dict[int, dict] = {}
        for d in deltas:
            for tc in d.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
        assert list(calls) == [0] and calls[0]["name"] == "set_alarm"
        assert fits("set_alarm", calls[0]["arguments"]), calls[0]
        assert deltas[-1].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_required_forces_one_call_or_more(api, stream):
    """Streamed, each call opens (id and name) and its arguments follow as they are written; the
    calls add up to the unary reply's."""
    kwargs = dict(model=MODEL, messages=ASK, tools=BOTH, tool_choice="required", temperature=0, max_tokens=100)
    if stream:
        chunks = list(api.chat.completions.create(**kwargs, stream=True))
        deltas = [c.choices[0] for c in chunks if c.choices]
        assert "".join(d.delta.content or "" for d in deltas) == ""
        pieces = [tc for d in deltas for tc in d.delta.tool_calls or []]
        opened = [tc for tc in pieces if tc.id]
        assert [tc.index for tc in opened] == list(range(len(opened))) and len(pieces) > 2 * len(opened)
        streamed = {tc.index: [tc.function.name, ""] for tc in opened}
        for tc in pieces:
            streamed[tc.index][1] += tc.function.arguments or ""
        calls = [tuple(c) for c in streamed.values()]
        unary = api.chat.completions.create(**kwargs).choices[0].message.tool_calls
        assert calls == [(tc.function.name, tc.function.arguments) for tc in unary]
        reason = deltas[-1].finish_reason
    else:
        choice = api.chat.completions.create(**kwargs).choices[0]
        assert choice.message.content is None
        calls = [(tc.function.name, tc.function.arguments) for tc in choice.message.tool_calls or []]
        reason = choice.finish_reason
    assert reason == "tool_calls" and calls
    for name, arguments in calls:
        assert name in ("get_weather", "set_alarm") and fits(name, arguments), (name, arguments)


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_false_forces_exactly_one_call(api, stream):
    """A "required" reply with parallel_tool_calls false is exactly one call, fitting its tool,
    unary and streamed, where the same request without it writes several (random weights)."""
    ask = [{"role": "user", "content": "What is the weather in Paris, and in Rome? Then set the alarm for seven."}]
    kwargs = dict(model=MODEL, messages=ask, tools=BOTH, tool_choice="required", temperature=0, max_tokens=128,
                  parallel_tool_calls=False)
    several = api.chat.completions.create(**{**kwargs, "parallel_tool_calls": True}).choices[0].message.tool_calls
    assert len(several or []) > 1, "the test needs a reply that would make several calls"
    if stream:
        deltas = [c.choices[0] for c in api.chat.completions.create(**kwargs, stream=True) if c.choices]
        opened = [tc for d in deltas for tc in d.delta.tool_calls or [] if tc.id]
        arguments = "".join(tc.function.arguments or "" for d in deltas for tc in d.delta.tool_calls or [])
        calls, reason = [(tc.function.name, arguments) for tc in opened], deltas[-1].finish_reason
    else:
        choice = api.chat.completions.create(**kwargs).choices[0]
        calls = [(tc.function.name, tc.function.arguments) for tc in choice.message.tool_calls or []]
        reason = choice.finish_reason
    assert reason == "tool_calls" and len(calls) == 1, calls
    assert fits(*calls[0]), calls

