"""OpenAI's Responses API (`POST /v1/responses`) end to end: a real worker and scheduler on a
tiny random Qwen2 with the real tokenizer, the gateway as its own process, and OpenAI's
official SDK (`client.responses.create`) as the client, so the SDK's own parsing checks the
wire format. The oracle is the gateway's chat completion of the same conversation: a response
renders its instructions and input through the same chat template."""

from __future__ import annotations

import json

import pytest

# the device's GPU runs collect every module but deselect these CPU tests; CI installs the SDK
openai = pytest.importorskip("openai")

from helpers import make_tiny_qwen2_with_tokenizer, openai_gateway, server_group, wait_idle  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "tiny-qwen2"
INSTRUCTIONS = "Be terse."
QUESTION = "What is a radix tree?"
CHAT = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
# random weights: EOS could come at any point, so runs are fixed-length unless a test says otherwise
FIXED = {"ignore_eos": True}
SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
          "additionalProperties": False}
JSON_FORMAT = {"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}}
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
CLOSING_EVENTS = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, default_model_dir):
    return make_tiny_qwen2_with_tokenizer(tmp_path_factory.mktemp("tiny_responses"), default_model_dir)


@pytest.fixture(scope="module")
def group(tiny_model, tmp_path_factory):
    with server_group(tiny_model, tmp_path_factory.mktemp("responses_logs"), kv_slots=8192, max_batch_size=4,
                      max_input_length=256, max_output_length=4096, max_reqs=16, use_radix_cache=False) as g:
        yield g


@pytest.fixture(scope="module")
def api(group, tmp_path_factory):
    with openai_gateway(group, tmp_path_factory.mktemp("responses_gateway_log"), "--served-model-name", MODEL) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


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


@pytest.mark.parametrize("fields, param, word", [
    (dict(previous_response_id="resp_123"), "previous_response_id", "no response state"),
    (dict(tools=[{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]), "tools",
     "not supported"),
    (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x.example/a.png"}]}]),
     "input[0].content[0].type", "input_image"),
    (dict(input=[{"type": "function_call_output", "call_id": "c1", "output": "42"}]), "input[0].type",
     "function_call_output"),
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
