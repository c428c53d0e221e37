"""OpenAI's Responses API (`POST /v1/responses`) end to end: a real worker and scheduler on a
tiny random Qwen2 with the real tokenizer, the gateway as its own process, and OpenAI's
official SDK (`client.responses.create`) as the client, so the SDK's own parsing checks the
wire format. The oracle is the gateway's chat completion of the same conversation: a response
renders its instructions and input through the same chat template. Random weights seldom choose
to call a tool, so function tools are checked with forced choices (a named function, "required"),
whose calls must fit the tools' schemas."""

from __future__ import annotations

import json

import pytest

# the device's GPU runs collect every module but deselect these CPU tests; CI installs the SDK
openai = pytest.importorskip("openai")

from helpers import wait_idle  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "tiny-qwen2"
INSTRUCTIONS = "Be terse."
QUESTION = "What is a radix tree?"
CHAT = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
# random weights: EOS could come at any point, so runs are fixed-length unless a test says otherwise
FIXED = {"ignore_eos": True}
# no prefix cache: a response and the chat completion of the same conversation compute the same way
SERVER_CONFIG = dict(kv_slots=8192, max_batch_size=4, max_input_length=1024, max_output_length=4096, max_reqs=16,
                     use_radix_cache=False)
GATEWAY_FLAGS = ("--served-model-name", MODEL)
SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
          "additionalProperties": False}
JSON_FORMAT = {"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}}
ANSWER = {"type": "function", "name": "answer", "description": "Answer the question", "strict": True,
          "parameters": {"type": "object", "required": ["answer", "sure"], "additionalProperties": False,
                         "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}}}}
RATE = {"type": "function", "name": "rate", "parameters": {
    "type": "object", "properties": {"good": {"type": "boolean"}}, "required": ["good"], "additionalProperties": False}}
TOOLS = [ANSWER, RATE]
CALL_EVENTS = ["response.output_item.added", "response.function_call_arguments.delta",
               "response.function_call_arguments.done", "response.output_item.done"]
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
CLOSING_EVENTS = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def api(gateway_url):
    return openai.OpenAI(base_url=gateway_url, api_key="unused", max_retries=0, timeout=120)


def greedy_chat(api, max_tokens: int) -> openai.types.chat.ChatCompletion:
    return api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=max_tokens, temperature=0,
                                       extra_body=FIXED)


def test_a_response_is_the_greedy_chat_completion(api):
    """instructions + a string input = the system and user messages; the limit cuts the reply, so
    the response is incomplete (max_output_tokens); usage counts the same tokens as chat's."""
    want = greedy_chat(api, 8)
    got = api.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=8,
                               temperature=0, metadata={"run": "1"}, store=False, user="u", extra_body=FIXED)
    assert got.object == "response" and got.id.startswith("resp_") and got.model == MODEL
    assert got.output_text == want.choices[0].message.content
    assert got.status == "incomplete" and got.incomplete_details.reason == "max_output_tokens"
    [message] = got.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "incomplete")
    assert message.id.startswith("msg_")
    assert [part.type for part in message.content] == ["output_text"]
    assert (got.usage.input_tokens, got.usage.output_tokens) == (want.usage.prompt_tokens, 8)
    assert got.usage.total_tokens == want.usage.prompt_tokens + 8
    assert (got.instructions, got.max_output_tokens, got.temperature) == (INSTRUCTIONS, 8, 0)
    assert got.metadata == {"run": "1"}
    # the same conversation as input items with content parts and the developer role
    items = [{"role": "developer", "content": INSTRUCTIONS},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is a "},
                                                             {"type": "input_text", "text": "radix tree?"}]}]
    again = api.responses.create(model=MODEL, input=items, max_output_tokens=8, temperature=0, extra_body=FIXED)
    assert again.output_text == got.output_text


def test_a_streamed_response_is_typed_events_ending_with_the_response(api):
    unary = api.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=12,
                                 temperature=0, extra_body=FIXED)
    events = list(api.responses.create(model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=12,
                                       temperature=0, stream=True, extra_body=FIXED))
    kinds = [e.type for e in events]
    assert kinds[:4] == TEXT_EVENTS and kinds[-4:] == CLOSING_EVENTS + ["response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(e.delta for e in deltas) == unary.output_text == events[-4].text
    assert {e.item_id for e in deltas} == {events[2].item.id}
    final = events[-1].response
    assert final.output_text == unary.output_text and final.id == events[0].response.id
    assert final.usage.output_tokens == 12 and final.usage.input_tokens == unary.usage.input_tokens


def test_json_schema_text_format(api):
    """text.format json_schema reaches the scheduler's structured output: random weights produce
    the format only through it, and the closed object ends the reply (completed)."""
    got = api.responses.create(model=MODEL, input=QUESTION, max_output_tokens=32, temperature=1.0, text=JSON_FORMAT,
                               extra_body={"seed": 1})
    assert json.loads(got.output_text)["answer"] in ("yes", "no")
    assert got.status == "completed" and got.incomplete_details is None and got.output[0].status == "completed"
    assert got.text.format.type == "json_schema" and got.text.format.schema_ == SCHEMA
    events = list(api.responses.create(model=MODEL, input=QUESTION, max_output_tokens=32, temperature=1.0,
                                       text=JSON_FORMAT, stream=True, extra_body={"seed": 1}))
    assert events[-1].type == "response.completed" and events[-1].response.status == "completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == got.output_text
    # json_object: any object, which random weights seldom close within the limit
    some = api.responses.create(model=MODEL, input=QUESTION, max_output_tokens=8, temperature=1.0,
                                text={"format": {"type": "json_object"}}, extra_body={"seed": 2})
    assert some.output_text.startswith("{") and some.text.format.type == "json_object"


def fits(call) -> None:
    """A completed function_call item whose arguments fit its tool's schema."""
    assert call.type == "function_call" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    args = json.loads(call.arguments)
    if call.name == "answer":
        assert set(args) == {"answer", "sure"} and args["answer"] in ("yes", "no") and isinstance(args["sure"], bool)
    else:
        assert call.name == "rate" and set(args) == {"good"} and isinstance(args["good"], bool)


def forced(api, input=QUESTION, **fields):
    """A response of sampled (seeded) tokens to QUESTION, with TOOLS offered."""
    fields = {"max_output_tokens": 64, "temperature": 1.0, "extra_body": {"seed": 1}, **fields}
    return api.responses.create(model=MODEL, input=input, tools=TOOLS, **fields)


def test_a_named_tool_choice_is_one_function_call(api):
    """The reply is the named tool's arguments (the scheduler's structured output), one
    function_call item, streamed as it comes; the same seed gives the stream the same call."""
    choice = {"type": "function", "name": "answer"}
    got = forced(api, tool_choice=choice)
    [call] = got.output
    fits(call)
    assert call.name == "answer" and got.status == "completed" and got.output_text == ""
    assert got.tool_choice.name == "answer" and [t.name for t in got.tools] == ["answer", "rate"]
    events = list(forced(api, tool_choice=choice, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == CALL_EVENTS[2:] + ["response.completed"] and set(kinds[3:-3]) == {CALL_EVENTS[1]}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert (events[2].item.name, events[2].item.arguments, events[2].item.status) == ("answer", "", "in_progress")
    assert "".join(e.delta for e in events if e.type == CALL_EVENTS[1]) == events[-3].arguments == call.arguments
    [streamed] = events[-1].response.output
    fits(streamed)
    assert streamed.id == events[2].item.id and streamed.arguments == call.arguments


def test_required_gives_function_calls(api):
    """One call or more, each of an offered tool (random weights often write several: room for them)."""
    got = forced(api, tool_choice="required", max_output_tokens=400)
    assert got.status == "completed" and got.output, got.output_text
    for call in got.output:
        fits(call)
    events = list(forced(api, tool_choice="required", max_output_tokens=400, stream=True))
    types = [e.type for e in events]
    deltas = types.count("response.function_call_arguments.delta")
    collapsed = [t for k, t in enumerate(types) if k == 0 or t != types[k - 1]]  # a call's deltas as one
    assert collapsed == ["response.created", "response.in_progress", *CALL_EVENTS * len(got.output), "response.completed"]
    assert deltas > len(got.output), "the arguments stream as they are written, not whole"
    assert [(c.name, c.arguments) for c in events[-1].response.output] == [(c.name, c.arguments) for c in got.output]


def test_a_call_and_its_output_continue_the_conversation(api):
    """A forced call's output item fed back with its result: the same prompt as chat's assistant
    tool_calls and tool message (the greedy reply and the token count agree), and a call on it
    completes."""
    first = forced(api, tool_choice={"type": "function", "name": "answer"})
    [call] = first.output
    items = [{"role": "user", "content": QUESTION}, call.model_dump(exclude_none=True),
             {"type": "function_call_output", "call_id": call.call_id, "output": "noted"}]
    chat = [{"role": "user", "content": QUESTION},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.call_id, "type": "function", "function": {"name": "answer", "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "noted"}]
    chat_tools = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters") if k in t}}
                  for t in TOOLS]
    want = api.chat.completions.create(model=MODEL, messages=chat, tools=chat_tools, max_tokens=6, temperature=0,
                                       extra_body=FIXED)
    got = api.responses.create(model=MODEL, input=items, tools=TOOLS, max_output_tokens=6, temperature=0,
                               extra_body=FIXED)
    assert got.usage.input_tokens == want.usage.prompt_tokens
    assert got.output_text == want.choices[0].message.content
    again = forced(api, input=items, tool_choice={"type": "function", "name": "rate"})
    assert again.status == "completed"
    [rated] = again.output
    fits(rated)
    assert rated.name == "rate"


@pytest.mark.parametrize("fields, param, word", [
    (dict(previous_response_id="resp_123"), "previous_response_id", "no response state"),
    (dict(tools=[ANSWER, {"type": "web_search"}]), "tools[1].type", "web_search"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "name": "nope"}), "tool_choice", "offered: answer, rate"),
    (dict(tools=TOOLS, tool_choice="required", text=JSON_FORMAT), "tool_choice", "one format per request"),
    (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x.example/a.png"}]}]),
     "input[0].content[0].type", "input_image"),
    (dict(input=[{"type": "reasoning", "id": "rs_1", "summary": []}]), "input[0].type", "reasoning"),
    (dict(include=["message.output_text.logprobs"]), "include", "include"),
    (dict(text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema", "schema"),
    (dict(max_output_tokens=10_000), None, "max_output_length"),
])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_unsupported_fields_are_refused(api, group, fields, param, word, stream):
    """Each refusal as the SDK's BadRequestError naming the field; a streamed request fails before
    its stream starts. Nothing is left running."""
    body = {"model": MODEL, "input": QUESTION, "max_output_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as err:
        result = api.responses.create(**body, stream=stream)
        list(result) if stream else None
    assert word in err.value.message
    assert err.value.param == param
    wait_idle(group.client)


def test_model_and_request_id_as_on_the_other_routes(api):
    with pytest.raises(openai.NotFoundError):
        api.responses.create(model="gpt-4", input=QUESTION, max_output_tokens=2)
    got = api.responses.create(model=MODEL, input=QUESTION, max_output_tokens=2, extra_body=FIXED,
                               extra_headers={"X-Request-Id": "resp_mine"})
    assert got.id == "resp_mine" and got.output[0].id == "msg_mine"


def test_a_client_leaving_a_stream_aborts_its_request(api, group):
    before = wait_idle(group.client).generated_tokens
    stream = api.responses.create(model=MODEL, input=QUESTION, max_output_tokens=4000, temperature=0, stream=True,
                                  extra_body=FIXED)
    it = iter(stream)
    kinds = [next(it).type for _ in range(6)]
    assert kinds == TEXT_EVENTS + ["response.output_text.delta"] * 2
    stream.close()
    stats = wait_idle(group.client, 30)  # aborted: nothing runs, no KV slot is held
    assert stats.kv_free == stats.kv_capacity
    assert stats.generated_tokens - before < 4000, "the request was aborted, not run to its end"
