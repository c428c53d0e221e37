"""The Responses API (/v1/responses, gateway/responses.py) without a server: request bodies →
GenerateRequests (function tools and function_call / function_call_output items included), the
refusals and the field each names, the response object (function_call items too), and the typed
event stream from fake scheduler chunks (order, sequence numbers, the SDK's own models)."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("fastapi")  # as test_gateway_units: collected, not run, on the device's GPU runs

import grpc  # noqa: E402

from litelang.gateway.protocol import RequestError  # noqa: E402
from litelang.gateway.responses import ResponsesRequest, finished_response, response_stream  # noqa: E402
from litelang.proto import litelang_pb2 as pb  # noqa: E402
from litelang.proto.json_values import plain_object  # noqa: E402

HEAD = {"id": "resp_abc", "created_at": 1700000000, "model": "m"}
SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": WEATHER,
          "strict": True},
         {"type": "function", "name": "answer", "parameters": SCHEMA}]
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                "parameters": WEATHER}},
              {"type": "function", "function": {"name": "answer", "parameters": SCHEMA}}]


def request(**fields) -> pb.GenerateRequest:
    return ResponsesRequest(**{"input": "hi", **fields}).generate_request(max_output_length=100)


def roles_and_texts(req: pb.GenerateRequest) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in req.messages.messages]


def tools_of(req: pb.GenerateRequest) -> list[dict]:
    """The tools the chat template is shown, as the scheduler reads them."""
    return [plain_object(t, "tool") for t in req.messages.tools]


# ---- request bodies

def test_a_string_input_is_one_user_message_after_the_instructions():
    req = request(input="What is a radix tree?", instructions="Be terse.", max_output_tokens=7, temperature=0,
                  top_p=0.5, user="u1", store=True, metadata={"k": "v"})
    assert roles_and_texts(req) == [("system", "Be terse."), ("user", "What is a radix tree?")]
    s = req.sampling
    assert (s.max_new_tokens, s.temperature, s.top_p) == (7, 0.0, 0.5)
    assert not s.HasField("structured_output") and not s.logprobs and not s.HasField("n")
    assert request().sampling.max_new_tokens == 100, "no max_output_tokens: the server's limit"
    assert request().sampling.temperature == 1.0, "OpenAI's default"


def test_input_items_with_content_parts_become_chat_messages():
    items = [{"role": "developer", "content": "terse"},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                             {"type": "input_text", "text": "b"}]},
             {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{"type": "output_text", "text": "c", "annotations": []}]},
             {"role": "user", "content": "d"}]
    req = request(input=items, instructions="first")
    assert roles_and_texts(req) == [("system", "first"), ("system", "terse"), ("user", "ab"), ("assistant", "c"),
                                    ("user", "d")]
    assert not req.messages.continue_final_message and not req.messages.tools


@pytest.mark.parametrize("fmt, want", [
    ({"type": "json_schema", "name": "a", "schema": SCHEMA, "strict": True},
     pb.StructuredOutput(json_schema=json.dumps(SCHEMA))),
    ({"type": "json_object"}, pb.StructuredOutput(json_object=True)),
])
def test_text_format_becomes_the_structured_output(fmt, want):
    assert request(text={"format": fmt}).sampling.structured_output == want
    assert not request(text={"format": {"type": "text"}}).sampling.HasField("structured_output")


def test_vllm_extras_work_as_on_chat():
    s = request(top_k=3, ignore_eos=True, seed=5, priority=-1).sampling
    assert (s.top_k, s.ignore_eos, s.seed) == (3, True, 5)


# ---- function tools

def test_function_tools_reach_the_template_in_chats_shape():
    """The flat Responses tools become chat's {"type", "function": {...}}; "auto" leaves the
    reply free, "none" hides the tools from the model, as chat does."""
    for choice in (None, "auto"):
        req = request(tools=TOOLS, tool_choice=choice, parallel_tool_calls=False)
        assert tools_of(req) == CHAT_TOOLS
        assert not req.sampling.HasField("structured_output")
    assert not request(tools=TOOLS, tool_choice="none").messages.tools


def test_forced_choices_constrain_the_reply_with_forced_tools_schemas():
    named = request(tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"})
    assert json.loads(named.sampling.structured_output.json_schema) == WEATHER, "the named tool's parameters"
    required = json.loads(request(tools=TOOLS, tool_choice="required").sampling.structured_output.json_schema)
    assert required["type"] == "array" and required["minItems"] == 1
    assert [c["properties"]["name"]["enum"] for c in required["items"]["anyOf"]] == [["get_weather"], ["answer"]]
    assert tools_of(request(tools=TOOLS, tool_choice="required")) == CHAT_TOOLS


def call(call_id: str, name: str, arguments: str) -> dict:
    """A chat tool call as the template gets it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_function_call_items_and_their_outputs_become_assistant_tool_calls_and_tool_messages():
    """Calls join the assistant message before them (one turn, as the model wrote it), or start
    one; consecutive calls are one message; each output is a tool message naming its call."""
    items = [{"role": "user", "content": "weather in Paris and Rome?"},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
             {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
              "arguments": '{"city": "Paris"}', "status": "completed"},
             {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
             {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "ra"},
                                                                             {"type": "input_text", "text": "in"}]},
             {"type": "function_call", "call_id": "call_3", "name": "answer", "arguments": '{"answer": "yes"}'},
             {"type": "function_call_output", "call_id": "call_3", "output": "ok"}]
    got = request(input=items, tools=TOOLS).messages.messages
    assert [(m.role, m.content, m.tool_call_id) for m in got] == [
        ("user", "weather in Paris and Rome?", ""), ("assistant", "Checking.", ""), ("tool", "sunny", "call_1"),
        ("tool", "rain", "call_2"), ("assistant", "", ""), ("tool", "ok", "call_3")]
    assert json.loads(got[1].tool_calls_json) == [call("call_1", "get_weather", '{"city": "Paris"}'),
                                                  call("call_2", "get_weather", '{"city": "Rome"}')]
    assert json.loads(got[4].tool_calls_json) == [call("call_3", "answer", '{"answer": "yes"}')]
    assert not any(m.tool_calls_json for m in (got[0], got[2], got[3], got[5]))


@pytest.mark.parametrize("fields, param, words", [
    (dict(previous_response_id="resp_1"), "previous_response_id", "keeps no response state"),
    (dict(tool_choice="required"), "tool_choice", "tools"),
    (dict(tools=[TOOLS[0], {"type": "web_search"}]), "tools[1].type", "web_search"),
    (dict(tools=[{"type": "function", "parameters": WEATHER}]), "tools[0].name", "string"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "name": "nope"}), "tool_choice",
     "offered: answer, get_weather"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "answer"}}), "tool_choice",
     '{"type": "function", "name": ...}'),
    (dict(tools=TOOLS, tool_choice={"type": "web_search"}), "tool_choice", "tool_choice must be"),
    (dict(tools=TOOLS, tool_choice="required", text={"format": {"type": "json_object"}}), "tool_choice",
     "one format per request"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "name": "answer"},
          text={"format": {"type": "json_schema", "name": "a", "schema": SCHEMA}}), "tool_choice", "one format"),
    (dict(tools=TOOLS, tool_choice="required", guided_regex="a+"), "tool_choice", "one format per request"),
    (dict(background=True), "background", "state"),
    (dict(conversation="conv_1"), "conversation", "state"),
    (dict(include=["message.output_text.logprobs"]), "include", "include"),
    (dict(top_logprobs=2), "top_logprobs", "logprobs"),
    (dict(reasoning={"effort": "high"}), "reasoning", "reasoning"),
    (dict(truncation="auto"), "truncation", "truncation"),
    (dict(n=2), "n", "one output"),
    (dict(input=[]), "input", "empty"),
    (dict(input=["hi"]), "input[0]", "message"),
    (dict(input=[{"role": "user", "content": "a"}, {"type": "reasoning", "summary": []}]),
     "input[1].type", "reasoning"),
    (dict(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]), "input[0].call_id", "string"),
    (dict(input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]), "input[0].arguments",
     "string"),
    (dict(input=[{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}]),
     "input[0].output[0].type", "input_image"),
    (dict(input=[{"type": "item_reference", "id": "msg_1"}]), "input[0].type", "item_reference"),
    (dict(input=[{"role": "tool", "content": "a"}]), "input[0].role", "role"),
    (dict(input=[{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                              {"type": "input_image", "image_url": "http://x/y.png"}]}]),
     "input[0].content[1].type", "input_image"),
    (dict(input=[{"role": "user", "content": None}]), "input[0].content", "string"),
    (dict(text={"format": {"type": "json_schema", "name": "a"}}), "text.format.schema", "schema"),
    (dict(text={"format": {"type": "grammar"}}), "text.format.type", "grammar"),
    (dict(text={"format": {"type": "json_object"}}, guided_regex="a+"), "structured_outputs", "one structured"),
    (dict(max_output_tokens=2**40), "max_output_tokens", "out of range"),
])
def test_refusals_name_their_field(fields, param, words):
    with pytest.raises(RequestError) as err:
        request(**fields)
    assert err.value.param == param
    assert words in str(err.value)


def test_empty_values_of_refused_fields_are_accepted():
    """What the SDK or a client may send with nothing asked: no tools, no includes, background off."""
    req = request(tools=[], include=[], background=False, tool_choice="auto", truncation="disabled",
                  parallel_tool_calls=True, top_logprobs=0)
    assert roles_and_texts(req) == [("user", "hi")]


# ---- the response object

def test_a_finished_response_has_the_text_status_and_usage():
    body = ResponsesRequest(input="hi", instructions="terse", max_output_tokens=9, metadata={"a": "b"},
                            text={"format": {"type": "json_schema", "name": "x", "schema": SCHEMA}})
    u = pb.Usage(prompt_tokens=11, completion_tokens=9, cached_tokens=4)
    got = finished_response(body, HEAD, "hello", pb.FINISH_REASON_LENGTH, u)
    assert (got["id"], got["object"], got["status"], got["model"]) == ("resp_abc", "response", "incomplete", "m")
    assert got["incomplete_details"] == {"reason": "max_output_tokens"}
    [item] = got["output"]
    assert item == {"type": "message", "id": "msg_abc", "status": "incomplete", "role": "assistant",
                    "content": [{"type": "output_text", "text": "hello", "annotations": []}]}
    assert got["usage"] == {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                            "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 20}
    assert (got["instructions"], got["max_output_tokens"], got["metadata"]) == ("terse", 9, {"a": "b"})
    assert got["text"] == {"format": {"type": "json_schema", "name": "x", "schema": SCHEMA}}
    done = finished_response(body, HEAD, "hi", pb.FINISH_REASON_EOS, u)
    assert (done["status"], done["incomplete_details"], done["output"][0]["status"]) == ("completed", None, "completed")
    assert finished_response(body, HEAD, "", pb.FINISH_REASON_ABORTED, u)["status"] == "cancelled"


def test_the_sdk_parses_the_response_object():
    responses = pytest.importorskip("openai.types.responses")
    body = ResponsesRequest(input="hi")
    got = responses.Response.model_validate(finished_response(body, HEAD, "hello", pb.FINISH_REASON_EOS, pb.Usage()))
    assert got.output_text == "hello" and got.status == "completed"
    assert got.usage.output_tokens_details.reasoning_tokens == 0


def sdk_response(body: ResponsesRequest, text: str, reason: int = pb.FINISH_REASON_EOS):
    responses = pytest.importorskip("openai.types.responses")
    return responses.Response.model_validate(finished_response(body, HEAD, text, reason, pb.Usage()))


def calls_of(output) -> list[tuple[str, str]]:
    """(name, arguments) of each function_call item, checking its ids: fc_X and call_X."""
    calls = [item for item in output if item.type == "function_call"]
    for item in calls:
        assert item.id.startswith("fc_") and item.call_id == "call_" + item.id.removeprefix("fc_")
        assert item.status == "completed"
    return [(item.name, item.arguments) for item in calls]


def test_calls_in_a_reply_are_function_call_items():
    """"auto": a <tool_call> block is a function_call item, and the text besides it a message
    (none when the reply is only calls); the SDK parses both, and the echoed tools and choice."""
    block = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    body = ResponsesRequest(input="hi", tools=TOOLS, parallel_tool_calls=False)
    got = sdk_response(body, "Let me check. " + block)
    assert [item.type for item in got.output] == ["message", "function_call"]
    assert got.output_text == "Let me check." and got.status == "completed"
    assert calls_of(got.output) == [("get_weather", '{"city": "Paris"}')]
    assert [t.name for t in got.tools] == ["get_weather", "answer"] and got.tools[0].strict is True
    assert got.tool_choice == "auto" and got.parallel_tool_calls is False
    two = block + block.replace("Paris", "Rome")
    only = sdk_response(ResponsesRequest(input="hi", tools=TOOLS), two)
    assert calls_of(only.output) == [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')]
    assert [item.type for item in only.output] == ["function_call"] * 2
    # parallel_tool_calls false: the first call only
    assert calls_of(sdk_response(body, two).output) == [("get_weather", '{"city": "Paris"}')]
    # the same text with tool_choice "none" is plain text
    plain = sdk_response(ResponsesRequest(input="hi", tools=TOOLS, tool_choice="none"), block)
    assert plain.output_text == block and [item.type for item in plain.output] == ["message"]


def test_forced_replies_are_function_call_items():
    named = ResponsesRequest(input="hi", tools=TOOLS, tool_choice={"type": "function", "name": "answer"})
    got = sdk_response(named, '{"answer": "no"}')
    assert calls_of(got.output) == [("answer", '{"answer": "no"}')] and len(got.output) == 1
    assert got.status == "completed" and got.tool_choice.name == "answer"
    required = ResponsesRequest(input="hi", tools=TOOLS, tool_choice="required")
    got = sdk_response(required, '[{"name": "answer", "parameters": {"answer": "yes"}}, '
                                 '{"name": "get_weather", "parameters": {"city": "Oslo"}}]')
    assert calls_of(got.output) == [("answer", '{"answer": "yes"}'), ("get_weather", '{"city": "Oslo"}')]
    assert got.status == "completed"
    cut = sdk_response(required, '[{"name": "ans', pb.FINISH_REASON_LENGTH)
    assert cut.status == "incomplete" and cut.output_text == '[{"name": "ans' and not calls_of(cut.output)


# ---- the stream

def chunk(text: str, reason: int = 0, **extra) -> pb.GenerateStreamChunk:
    return pb.GenerateStreamChunk(index=0, text=text, finish_reason=reason, **extra)


class FakeCall:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


def stream_events(body: ResponsesRequest, chunks, call: FakeCall | None = None) -> list[tuple[str, dict]]:
    """(event name, data) of each event, chunks paced so none are joined."""
    async def source():
        for c in chunks:
            if isinstance(c, BaseException):
                raise c
            yield c
            await asyncio.sleep(0.005)

    async def run():
        return [e async for e in response_stream(body, [call or FakeCall()], source(), HEAD)]

    out = []
    for raw in asyncio.run(run()):
        name, data = raw.removesuffix("\n\n").split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


ORDER = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
         "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
         "response.output_text.done", "response.content_part.done", "response.output_item.done"]


def test_stream_events_in_order_with_sequence_numbers():
    call = FakeCall()
    usage = pb.Usage(prompt_tokens=5, completion_tokens=3)
    events = stream_events(ResponsesRequest(input="hi", stream=True),
                           [chunk("He"), chunk(""), chunk("ll"), chunk("o", pb.FINISH_REASON_EOS, usage=usage)], call)
    assert [name for name, _ in events] == ORDER + ["response.completed"]
    assert all(data["type"] == name for name, data in events), "the event name is the data's type"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert [d["delta"] for d in deltas] == ["He", "ll", "o"], "no delta for a chunk without text"
    assert all((d["item_id"], d["output_index"], d["content_index"], d["logprobs"]) == ("msg_abc", 0, 0, [])
               for d in deltas)
    created = events[0][1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    assert events[2][1]["item"]["status"] == "in_progress" and events[2][1]["item"]["content"] == []
    assert events[7][1]["text"] == "Hello" and events[8][1]["part"]["text"] == "Hello"
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"] == [events[9][1]["item"]]
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 3
    assert call.cancelled, "the call is cancelled on the way out, a no-op once it ended"


def test_a_stream_cut_by_the_limit_ends_incomplete():
    events = stream_events(ResponsesRequest(input="hi", stream=True, max_output_tokens=2),
                           [chunk("a"), chunk("b"), chunk("c", pb.FINISH_REASON_LENGTH)])
    name, data = events[-1]
    assert name == "response.incomplete"
    assert data["response"]["status"] == "incomplete"
    assert data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["response"]["output"][0]["status"] == "incomplete"


def test_the_sdk_parses_every_event():
    responses = pytest.importorskip("openai.types.responses")
    from pydantic import TypeAdapter

    adapter = TypeAdapter(responses.ResponseStreamEvent)
    events = stream_events(ResponsesRequest(input="hi", stream=True, metadata={"k": "v"}),
                           [chunk("x"), chunk("y", pb.FINISH_REASON_STOP_STRING)])
    parsed = [adapter.validate_python(data) for _, data in events]
    assert type(parsed[4]).__name__ == "ResponseTextDeltaEvent"
    assert parsed[-1].response.output_text == "xy" and parsed[-1].response.metadata == {"k": "v"}


def sdk_events(body: ResponsesRequest, chunks) -> list:
    """The stream's events parsed by the SDK, after checking their numbering."""
    responses = pytest.importorskip("openai.types.responses")
    from pydantic import TypeAdapter

    events = stream_events(body, chunks)
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    adapter = TypeAdapter(responses.ResponseStreamEvent)
    return [adapter.validate_python(data) for _, data in events]


CALL_EVENTS = ["response.output_item.added", "response.function_call_arguments.delta",
               "response.function_call_arguments.done", "response.output_item.done"]


def test_a_streamed_call_holds_back_what_may_start_a_block():
    """"auto": text is streamed until a block may begin; the message is closed before the call
    is added whole at the end (added in progress with no arguments, one delta, done)."""
    body = ResponsesRequest(input="hi", tools=TOOLS, stream=True)
    events = sdk_events(body, [chunk("Sure"), chunk(" <tool"), chunk('_call>{"name": "answer", '),
                               chunk('"arguments": {"answer": "yes"}}</tool_call>', pb.FINISH_REASON_EOS)])
    assert [e.type for e in events] == ORDER[:5] + ["response.output_text.delta", "response.output_text.done",
                                                    "response.content_part.done", "response.output_item.done",
                                                    *CALL_EVENTS, "response.completed"]
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Sure", " "]
    added, delta, done, item_done = events[-5:-1]
    assert added.output_index == delta.output_index == done.output_index == item_done.output_index == 1
    assert (added.item.type, added.item.arguments, added.item.status) == ("function_call", "", "in_progress")
    assert delta.item_id == done.item_id == added.item.id == item_done.item.id
    assert delta.delta == done.arguments == item_done.item.arguments == '{"answer": "yes"}'
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "Sure "
    assert final.output[1] == item_done.item and final.output[0] == events[8].item
    assert calls_of(final.output) == [("answer", '{"answer": "yes"}')]


def test_a_reply_that_is_only_a_call_has_no_message():
    body = ResponsesRequest(input="hi", tools=TOOLS, stream=True)
    events = sdk_events(body, [chunk('{"name": "get_weather", '),
                               chunk('"arguments": {"city": "Oslo"}}', pb.FINISH_REASON_EOS)])
    assert [e.type for e in events] == ["response.created", "response.in_progress", *CALL_EVENTS, "response.completed"]
    assert calls_of(events[-1].response.output) == [("get_weather", '{"city": "Oslo"}')]


def test_a_named_forced_call_streams_its_arguments():
    body = ResponsesRequest(input="hi", tools=TOOLS, stream=True, tool_choice={"type": "function", "name": "answer"})
    events = sdk_events(body, [chunk('{"answer"'), chunk(""), chunk(': "no"}', pb.FINISH_REASON_EOS)])
    assert [e.type for e in events] == ["response.created", "response.in_progress", CALL_EVENTS[0], CALL_EVENTS[1],
                                        *CALL_EVENTS[1:], "response.completed"]
    assert events[2].item.name == "answer" and events[2].item.arguments == ""
    assert [e.delta for e in events[3:5]] == ['{"answer"', ': "no"}'], "as they come, none for an empty chunk"
    assert events[5].arguments == '{"answer": "no"}'
    assert {e.item_id for e in events[3:6]} == {events[2].item.id}
    assert events[-1].response.output == [events[6].item]
    assert calls_of(events[-1].response.output) == [("answer", '{"answer": "no"}')]


def test_a_required_stream_opens_each_call_as_it_is_written():
    """Each call opens once its name is written, its arguments stream as they come, and it closes
    when the next one opens (or at the end)."""
    body = ResponsesRequest(input="hi", tools=TOOLS, stream=True, tool_choice="required")
    events = sdk_events(body, [chunk('[{"name": "answer", "parameters": '), chunk('{"answer": "yes"}}, '),
                               chunk('{"name": "answer", "parameters": {"ans'),
                               chunk('wer": "no"}}]', pb.FINISH_REASON_EOS)])
    assert [e.type for e in events] == ["response.created", "response.in_progress", *CALL_EVENTS, CALL_EVENTS[0],
                                        CALL_EVENTS[1], *CALL_EVENTS[1:], "response.completed"]
    assert [e.output_index for e in events[2:11]] == [0] * 4 + [1] * 5
    assert [e.delta for e in events[7:9]] == ['{"ans', 'wer": "no"}'], "the second call's arguments as they come"
    assert calls_of(events[-1].response.output) == [("answer", '{"answer": "yes"}'), ("answer", '{"answer": "no"}')]
    # cut by the limit: no call, the text as the message, incomplete
    cut = sdk_events(body, [chunk('[{"name": "ans'), chunk("wer", pb.FINISH_REASON_LENGTH)])
    assert [e.type for e in cut][-5:] == ["response.output_text.delta", *ORDER[-3:], "response.incomplete"]
    assert cut[-1].response.output_text == '[{"name": "answer' and not calls_of(cut[-1].response.output)


def test_an_error_mid_stream_is_an_error_event():
    call = FakeCall()
    boom = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "worker gone")
    events = stream_events(ResponsesRequest(input="hi", stream=True), [chunk("a"), boom], call)
    assert [name for name, _ in events] == ORDER[:5] + ["error"]
    assert events[-1][1] == {"type": "error", "sequence_number": 5, "code": "UNAVAILABLE", "message": "worker gone",
                             "param": None}
    assert call.cancelled


def test_a_client_leaving_cancels_the_call():
    call = FakeCall()

    async def endless():
        while True:
            yield chunk("x")
            await asyncio.sleep(0)

    async def run():
        stream = response_stream(ResponsesRequest(input="hi", stream=True), [call], endless(), HEAD)
        got = [await stream.__anext__() for _ in range(6)]
        assert not call.cancelled
        await stream.aclose()  # what Starlette does when the client disconnects
        return got

    got = asyncio.run(run())
    assert "response.output_text.delta" in got[-1]
    assert call.cancelled
