"""The Responses API (/v1/responses, gateway/responses.py) without a server: request bodies →
GenerateRequests, the refusals and the field each names, the response object, and the typed
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

HEAD = {"id": "resp_abc", "created_at": 1700000000, "model": "m"}
SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}


def request(**fields) -> pb.GenerateRequest:
    return ResponsesRequest(**{"input": "hi", **fields}).generate_request(max_output_length=100)


def roles_and_texts(req: pb.GenerateRequest) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in req.messages.messages]


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
    assert not req.messages.continue_final_message and not req.messages.tools_json


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


@pytest.mark.parametrize("fields, param, words", [
    (dict(previous_response_id="resp_1"), "previous_response_id", "keeps no response state"),
    (dict(tools=[{"type": "function", "name": "f", "parameters": {}}]), "tools", "not supported"),
    (dict(tool_choice="required"), "tool_choice", "tools"),
    (dict(background=True), "background", "state"),
    (dict(conversation="conv_1"), "conversation", "state"),
    (dict(include=["message.output_text.logprobs"]), "include", "include"),
    (dict(top_logprobs=2), "top_logprobs", "logprobs"),
    (dict(reasoning={"effort": "high"}), "reasoning", "reasoning"),
    (dict(truncation="auto"), "truncation", "truncation"),
    (dict(n=2), "n", "one output"),
    (dict(input=[]), "input", "empty"),
    (dict(input=["hi"]), "input[0]", "message"),
    (dict(input=[{"role": "user", "content": "a"}, {"type": "function_call_output", "call_id": "c", "output": "x"}]),
     "input[1].type", "function_call_output"),
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
