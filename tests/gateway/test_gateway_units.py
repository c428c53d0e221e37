"""The OpenAI gateway's pieces without a server: request bodies → GenerateRequests, the logprob
layouts, and the stream merger that joins chunks a busy gateway has not sent yet."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("fastapi")  # as test_openai_gateway: collected, not run, on the device's GPU runs

from litelang.gateway import formatting as fmt  # noqa: E402
from litelang.gateway.protocol import ChatCompletionRequest, CompletionRequest, RequestError  # noqa: E402
from litelang.gateway.forced_tools import forced_reply  # noqa: E402
from litelang.gateway.streams import chat_stream, joined, merge  # noqa: E402
from litelang.gateway.tool_calls import OPEN, ToolCallStream, parse_tool_calls  # noqa: E402
from litelang.proto import litelang_pb2 as pb  # noqa: E402
from litelang.proto.json_values import json_object, plain_object  # noqa: E402


def chunk(index: int, text: str, ids: list[int], reason: int = 0, **extra) -> pb.GenerateStreamChunk:
    return pb.GenerateStreamChunk(index=index, text=text, token_ids=ids, logprobs=[-0.5 * i for i in ids],
                                  finish_reason=reason, **extra)


# ---- request bodies

def test_completion_body_maps_onto_sampling_params():
    body = CompletionRequest(prompt="hi", max_tokens=7, n=3, stop="\n", logit_bias={"13": -100}, seed=4, top_k=5,
                             logprobs=2, echo=True, ignore_eos=True, truncate_prompt_tokens=9,
                             include_stop_str_in_output=True, priority=-2)
    [req] = body.generate_requests()
    s = req.sampling
    assert req.prompt == "hi" and req.priority == -2
    assert (s.max_new_tokens, s.n, list(s.stop), dict(s.logit_bias), s.seed, s.top_k) == (7, 3, ["\n"], {13: -100.0}, 4, 5)
    assert s.logprobs and s.top_logprobs == 2 and s.prompt_logprobs == 2 and s.ignore_eos
    assert s.truncate_prompt_tokens == 9 and s.include_stop_str_in_output
    assert s.temperature == 1.0 and s.skip_special_tokens, "OpenAI's defaults"
    assert not s.HasField("top_p"), "unset fields stay unset: the server's defaults apply"


def test_completion_prompt_shapes():
    assert [r.prompt for r in CompletionRequest(prompt=["a", "b"]).generate_requests()] == ["a", "b"]
    assert [list(r.input_ids.ids) for r in CompletionRequest(prompt=[1, 2]).generate_requests()] == [[1, 2]]
    assert [list(r.input_ids.ids) for r in CompletionRequest(prompt=[[1], [2, 3]]).generate_requests()] == [[1], [2, 3]]
    fim = CompletionRequest(prompt=["a", "b"], suffix="z").generate_requests()
    assert [(r.prompt, r.suffix) for r in fim] == [("a", "z"), ("b", "z")]
    assert CompletionRequest(prompt="a").generate_requests()[0].suffix == ""


@pytest.mark.parametrize("fields, param", [
    (dict(suffix="x", prompt=[1, 2]), "suffix"), (dict(suffix="x", echo=True), "echo"), (dict(best_of=3, n=2), "best_of"), (dict(logprobs=21), "logprobs"),
    (dict(logit_bias={"x": 1.0}), "logit_bias"), (dict(seed=-1), "seed"), (dict(n=0), "n"), (dict(prompt=[]), "prompt"),
    (dict(min_tokens=2**40), "min_tokens"), (dict(stop_token_ids=[2**40]), "stop_token_ids"),
])
def test_completion_body_refusals(fields, param):
    with pytest.raises(RequestError) as err:
        CompletionRequest(**{"prompt": "hi", **fields}).generate_requests()
    assert err.value.param == param


def test_chat_body():
    body = ChatCompletionRequest(messages=[{"role": "developer", "content": "terse"},
                                           {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                        {"type": "text", "text": "b"}]}],
                                 max_tokens=9, max_completion_tokens=5, logprobs=True, top_logprobs=3)
    req = body.generate_request(max_output_length=100)
    assert [(m.role, m.content) for m in req.messages.messages] == [("system", "terse"), ("user", "ab")]
    assert req.sampling.max_new_tokens == 5, "max_completion_tokens wins over the older max_tokens"
    assert req.sampling.logprobs and req.sampling.top_logprobs == 3
    bare = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}]).generate_request(max_output_length=100)
    assert bare.sampling.max_new_tokens == 100, "no limit given: the server's"
    assert not bare.sampling.allowed_token_ids and not bare.sampling.bad_words
    extras = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], allowed_token_ids=[5, 3],
                                   bad_words=["no"]).generate_request(max_output_length=100)
    assert list(extras.sampling.allowed_token_ids) == [5, 3] and list(extras.sampling.bad_words) == ["no"]


# ---- logprob layouts

def test_token_text_spells_partial_characters_as_bytes():
    assert fmt.token_text("é".encode()) == "é"
    assert fmt.token_text("你".encode()[:2]) == "bytes:\\xe4\\xbd"


def test_completion_logprobs_columns():
    tops = [pb.TopLogprobs(token_ids=[1, 2], logprobs=[-0.5, -2.0]), None]
    known = {1: b"ab", 2: b"c", 3: b"\xe4"}
    out = fmt.completion_logprobs([1, 3], [-0.5, None], tops, known, text_offset=5)
    assert out == {"tokens": ["ab", "bytes:\\xe4"], "token_logprobs": [-0.5, None],
                   "top_logprobs": [{"ab": -0.5, "c": -2.0}, None], "text_offset": [5, 7]}


def test_chat_logprobs_entries():
    out = fmt.chat_logprobs([2], [-0.25], [pb.TopLogprobs(token_ids=[2, 1], logprobs=[-0.25, -3.0])], {1: b"x", 2: b"y"})
    assert out == {"content": [{"token": "y", "logprob": -0.25, "bytes": [121], "top_logprobs": [
        {"token": "y", "logprob": -0.25, "bytes": [121]}, {"token": "x", "logprob": -3.0, "bytes": [120]}]}]}


# ---- the stream merger

def test_joined_keeps_order_and_the_last_outcome():
    a = chunk(1, "he", [5], prompt_token_ids=[9, 9])
    b = chunk(1, "llo", [6, 7], pb.FINISH_REASON_LENGTH, stop_string="", usage=pb.Usage(completion_tokens=3))
    j = joined(a, b)
    assert (j.text, list(j.token_ids), list(j.logprobs)) == ("hello", [5, 6, 7], [-2.5, -3.0, -3.5])
    assert j.finish_reason == pb.FINISH_REASON_LENGTH and j.usage.completion_tokens == 3
    assert list(j.prompt_token_ids) == [9, 9] and j.index == 1


async def _collect(streams, slow: bool):
    out = []
    async for item in merge(streams):
        out.append(item)
        if slow:
            await asyncio.sleep(0.01)  # the consumer is busy: chunks pile up meanwhile
    return out


async def _paced(chunks, gap: float = 0.001):
    for c in chunks:
        await asyncio.sleep(gap)
        yield c


def test_merge_joins_what_piles_up_per_completion():
    streams = [[chunk(0, f"a{k}", [k]) for k in range(20)] + [chunk(0, "!", [99], pb.FINISH_REASON_EOS)],
               [chunk(j % 2, f"b{k}", [100 + k]) for k, j in enumerate(range(30))]]
    for slow in (False, True):
        got = asyncio.run(_collect([_paced(s) for s in streams], slow))
        for p, stream in enumerate(streams):
            for index in (0, 1):
                mine = [c for i, c in got if i == p and c.index == index]
                want = [c for c in stream if c.index == index]
                assert "".join(c.text for c in mine) == "".join(c.text for c in want)
                assert [t for c in mine for t in c.token_ids] == [t for c in want for t in c.token_ids]
        finals = [c for i, c in got if c.finish_reason]
        assert len(finals) == 1 and finals[0].text.endswith("!")
        if slow:
            assert len(got) < sum(len(s) for s in streams), "a busy consumer gets joined chunks"


def test_merge_raises_a_streams_error():
    async def failing():
        yield chunk(0, "a", [1])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(_collect([failing(), _paced([chunk(0, "b", [2])] * 50)], slow=False))


# ---- tool calls (Qwen2.5's <tool_call> blocks)

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'


def test_tool_calls_parsed_from_a_whole_reply():
    content, calls = parse_tool_calls(CALL)
    assert content is None and [c["function"] for c in calls] == [
        {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}]
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    content, calls = parse_tool_calls("Let me look.\n" + CALL + "\n" + CALL2)
    assert content == "Let me look." and [c["function"]["name"] for c in calls] == ["get_weather", "now"]
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.parametrize("text", [
    "no calls here", CALL.replace("}}", "}"),  # not JSON
    '<tool_call>\n["a list"]\n</tool_call>', CALL + "\n<tool_call>\n{\"name\": \"cut off",  # unclosed
])
def test_text_that_is_not_a_clean_call_stays_content(text):
    assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize("text", ["plain reply with a < and <tool but no call", "Sure.\n" + CALL + "\n" + CALL2,
                                  CALL, "x" + CALL[:-3]])
def test_streamed_tool_calls_match_the_whole_reply_at_every_split(text):
    """Content deltas never show part of a block, and the end gives what parsing the whole
    reply gives, wherever the stream's chunks happen to split the text."""
    at = text.find(OPEN)
    content, calls = parse_tool_calls(text[at:]) if at >= 0 else (None, [])
    want = (text[:at] + (content or ""), [c["function"] for c in calls]) if calls else (text, [])
    for cuts in [[k] for k in range(1, len(text))] + [list(range(1, len(text)))]:
        stream, sent = ToolCallStream(), []
        for a, b in zip([0, *cuts], [*cuts, len(text)]):
            sent.append(stream.add(text[a:b]))
            if calls:  # nothing of a block is sent as content
                assert text[:at].startswith("".join(sent)), (cuts, sent)
        rest, got_calls = stream.finish()
        assert ("".join(sent) + rest, [c["function"] for c in got_calls]) == want, cuts


BARE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize("text, names, is_call", [
    (BARE, {"get_weather"}, True), ("  " + BARE + "\n", {"get_weather"}, True),
    (BARE, {"other_tool"}, False),  # a name not offered: content
    (BARE, set(), False), ('{"a": 1} and then prose', {"get_weather"}, False),
    ('{"name": "get_weather", "arguments": "not an object"}', {"get_weather"}, False),
])
def test_a_bare_call_object_naming_an_offered_tool(text, names, is_call):
    """Small Qwen2.5 models often drop the tags; a reply that is only the call object counts, whole
    or streamed in any pieces, and anything else stays content."""
    content, calls = parse_tool_calls(text, names)
    assert (content, [c["function"] for c in calls]) == (
        (None, [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]) if is_call else (text, []))
    for cuts in [[k] for k in range(1, len(text))]:
        stream, sent = ToolCallStream(names), []
        for a, b in zip([0, *cuts], [*cuts, len(text)]):
            sent.append(stream.add(text[a:b]))
        rest, got = stream.finish()
        assert "".join(sent) == "", "a reply that opens with { is held until it ends"
        assert (rest, [c["function"] for c in got]) == (("", [c["function"] for c in calls]) if is_call else (text, []))


# ---- forced tool calls (tool_choice "required" or a named function, through structured outputs)

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now"}}  # no parameters: any object
ASK = [{"role": "user", "content": "weather?"}]


def forced_request(tool_choice, tools=(WEATHER, NOW), **extra) -> pb.GenerateRequest:
    body = ChatCompletionRequest(messages=ASK, tools=list(tools), tool_choice=tool_choice, **extra)
    return body.generate_request(max_output_length=100)


def test_a_named_tool_choice_constrains_the_reply_to_its_parameters():
    req = forced_request({"type": "function", "function": {"name": "get_weather"}})
    assert json.loads(req.sampling.structured_output.json_schema) == WEATHER["function"]["parameters"]
    assert [plain_object(t, "tool") for t in req.messages.tools] == [WEATHER, NOW], \
        "the chat template still shows the model the tools"
    req = forced_request({"type": "function", "function": {"name": "now"}})
    assert json.loads(req.sampling.structured_output.json_schema) == {"type": "object"}


def test_tools_travel_in_their_key_order_with_their_integers():
    """What a chat template renders from the tools is what the client gave: the same JSON text
    (keys not sorted, 1 not 1.0); a value with no kind set is refused naming where it is."""
    tool = {"type": "function", "z": {"b": 1, "a": [2.5, None, True, "s", {}, []]}, "big": 2**63 - 1}
    assert json.dumps(plain_object(json_object(tool), "tools[0]")) == json.dumps(tool)
    broken = json_object({"type": "function", "z": {"a": [1, 2]}})
    broken.members[1].value.object.members[0].value.list.values[1].Clear()
    with pytest.raises(ValueError, match=r"tools\[0\]\.z\.a\[1\] is a JSON value with no kind set"):
        plain_object(broken, "tools[0]")


def test_required_constrains_the_reply_to_an_array_of_calls():
    req = forced_request("required")
    assert json.loads(req.sampling.structured_output.json_schema) == {"type": "array", "minItems": 1, "items": {"anyOf": [
        {"type": "object", "properties": {"name": {"type": "string", "enum": ["get_weather"]},
                                          "parameters": WEATHER["function"]["parameters"]},
         "required": ["name", "parameters"]},
        {"type": "object", "properties": {"name": {"type": "string", "enum": ["now"]}, "parameters": {"type": "object"}},
         "required": ["name", "parameters"]}]}}


def test_required_calls_stream_as_written():
    """RequiredCalls read in pieces of every size (random, seeded): the calls it opens and the
    arguments it adds up to equal json.loads of the whole reply, strings with braces, quotes and
    escapes included; a reply cut short is not complete, and the unary reading returns it as
    content."""
    import random

    from litelang.gateway.forced_tools import RequiredCalls, forced_reply

    items = [{"name": "now", "parameters": {}},
             {"name": "get_weather", "parameters": {"city": 'Pa"ris} [', "at": [1, {"x": "\\é"}], "ok": True}}]
    text = json.dumps(items, ensure_ascii=False)  # the grammar's layout
    rng = random.Random(0)
    for _ in range(100):
        reader, streamed, i = RequiredCalls(), {}, 0
        while i < len(text):
            step = rng.randint(1, 8)
            for k, delta in reader.add(text[i:i + step]):
                if "id" in delta:
                    assert k == len(streamed) and delta["function"]["arguments"] == ""
                    streamed[k] = [delta["function"]["name"], ""]
                else:
                    streamed[k][1] += delta["function"]["arguments"]
            i += step
        assert reader.complete()
        assert [(name, json.loads(args)) for name, args in streamed.values()] == [(i["name"], i["parameters"]) for i in items]
    content, calls, reason = forced_reply(text, "stop", None)
    assert content is None and reason == "tool_calls"
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [tuple(v) for v in streamed.values()]
    cut = text[: text.index('"at"')]
    reader = RequiredCalls()
    reader.add(cut)
    assert [c["function"]["name"] for c in reader.calls] == ["now", "get_weather"] and not reader.complete()
    assert forced_reply(cut, "length", None) == (cut, [], "length")


def test_parallel_tool_calls_false_allows_one_call():
    """A "required" array of exactly one (xgrammar accepts one call, refuses two), and a free
    reply's calls cut to the first, unary and streamed."""
    single = forced_request("required", parallel_tool_calls=False).sampling.structured_output
    assert json.loads(single.json_schema)["maxItems"] == 1
    assert "maxItems" not in json.loads(forced_request("required").sampling.structured_output.json_schema)
    from xgrammar.testing import _is_grammar_accept_string
    from litelang.scheduler.output_format import output_format, parse

    one = [{"name": "now", "parameters": {}}]
    grammar = parse(output_format(single))
    assert _is_grammar_accept_string(grammar, json.dumps(one))
    assert not _is_grammar_accept_string(grammar, json.dumps(one * 2))
    two = '<tool_call>{"name": "now", "arguments": {}}</tool_call><tool_call>{"name": "now", "arguments": {"x": 1}}</tool_call>'
    assert len(parse_tool_calls(two)[1]) == 2
    [call] = parse_tool_calls(two, single=True)[1]
    assert call["function"]["arguments"] == "{}"
    stream = ToolCallStream({"now"}, single=True)
    assert stream.add(two) == "" and [c["function"]["arguments"] for c in stream.finish()[1]] == ["{}"]


def test_forced_schemas_compile_and_accept_only_calls():
    """The scheduler's own check (xgrammar, no free whitespace) takes both schemas, and they accept
    exactly the calls: an offered name with its arguments, at least one call."""
    pytest.importorskip("xgrammar.testing")
    from xgrammar.testing import _is_grammar_accept_string
    from litelang.scheduler.output_format import output_format, parse

    def accepts(spec: pb.StructuredOutput, text: str) -> bool:
        return _is_grammar_accept_string(parse(output_format(spec)), text)

    required = forced_request("required").sampling.structured_output
    assert accepts(required, json.dumps([{"name": "get_weather", "parameters": {"city": "Paris"}}]))
    assert accepts(required, json.dumps([{"name": "now", "parameters": {}},
                                         {"name": "get_weather", "parameters": {"city": "x"}}]))
    for bad in ([], [{"name": "other", "parameters": {}}], [{"name": "get_weather", "parameters": {}}],
                {"name": "now", "parameters": {}}, "Sure!"):
        assert not accepts(required, json.dumps(bad)), bad
    named = forced_request({"type": "function", "function": {"name": "get_weather"}}).sampling.structured_output
    assert accepts(named, json.dumps({"city": "Paris"}))
    assert not accepts(named, "{}") and not accepts(named, json.dumps({"city": 3}))


@pytest.mark.parametrize("tool_choice, extra, words", [
    ({"type": "function", "function": {"name": "nope"}}, {}, ["nope", "get_weather", "now"]),  # names what is offered
    ("required", dict(tools=[]), ["tools"]),
    ({"type": "function", "function": {"name": "now"}}, dict(tools=[]), ["tools"]),
    ("bogus", {}, ["bogus"]),
    ({"type": "function"}, {}, ["named"]),
    ("required", dict(response_format={"type": "json_object"}), ["response_format"]),
    ({"type": "function", "function": {"name": "now"}},
     dict(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}), ["response_format"]),
    ("required", dict(guided_regex="a+"), ["one format"]),
    ("required", dict(structured_outputs={"choice": ["a"]}), ["one format"]),
])
def test_forced_tool_choice_refusals(tool_choice, extra, words):
    fields = {"tools": [WEATHER, NOW], **extra}
    with pytest.raises(RequestError) as err:
        ChatCompletionRequest(messages=ASK, tool_choice=tool_choice, **fields).generate_request(max_output_length=100)
    assert err.value.param == "tool_choice"
    for word in words:
        assert word in str(err.value)


def test_auto_and_none_are_as_before():
    for choice in ("auto", "none", None):
        req = forced_request(choice)
        assert not req.sampling.HasField("structured_output")
    assert ChatCompletionRequest(messages=ASK, tool_choice="none").generate_request(100)  # no tools: fine, as before
    text = forced_request("required", response_format={"type": "text"}).sampling.structured_output.json_schema
    assert json.loads(text)["type"] == "array", "response_format text asks for no format"


def test_a_required_array_becomes_tool_calls():
    text = '[{"name":"get_weather","parameters":{"city":"Paris"}},{"name":"now","parameters":{}}]'
    content, calls, reason = forced_reply(text, "stop", None)
    assert content is None and reason == "tool_calls"
    assert [c["function"] for c in calls] == [{"name": "get_weather", "arguments": '{"city":"Paris"}'},
                                              {"name": "now", "arguments": "{}"}], "the arguments as written"
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.parametrize("text", ['[{"name":"get_weather","parameters":{"ci', "[]", '{"name":"now","parameters":{}}',
                                  '[{"name":"now"}]'])
def test_a_required_reply_that_is_not_calls_stays_content(text):
    assert forced_reply(text, "length", None) == (text, [], "length")
    assert forced_reply(text, "stop", None) == (text, [], "stop")


def test_a_named_reply_is_its_arguments():
    for reason in ("stop", "length"):
        content, [call], got = forced_reply('{"city":"Pa', reason, "get_weather")
        assert (content, call["function"], got) == (None, {"name": "get_weather", "arguments": '{"city":"Pa'}, reason)


def _chat_events(body: ChatCompletionRequest, chunks: list[pb.GenerateStreamChunk], paced: bool = False) -> list[dict]:
    """The stream's events; paced: each chunk arrives after the one before was sent on (else
    chunks that arrive together may be joined)."""
    async def source():
        for c in chunks:
            yield c
            if paced:
                await asyncio.sleep(0.01)

    async def run():
        return [e async for e in chat_stream(body, [], source(), {"id": "x"})]

    events = [e.removeprefix("data: ").strip() for e in asyncio.run(run())]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _forced_chunks(texts: list[list[str]]) -> list[pb.GenerateStreamChunk]:
    """Each choice's parts, the two choices interleaved; a choice's last part ends it."""
    return [chunk(j, t, [k + 1], pb.FINISH_REASON_EOS if k == len(parts) - 1 else 0)
            for k in range(max(map(len, texts))) for j, parts in enumerate(texts) for t in parts[k:k + 1]]


def test_a_streamed_named_call_streams_its_arguments_per_choice():
    """n = 2: no content; each choice's first delta names the call (id, type, name), later deltas
    add arguments as they come, and the choice ends with an empty delta and "stop"."""
    texts = [['{"ci', 'ty":"Paris"}'], ['{"city":', '"Rome"}']]
    body = ChatCompletionRequest(messages=ASK, tools=[WEATHER, NOW], n=2, stream=True,
                                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
    body.generate_request(100)
    events = _chat_events(body, _forced_chunks(texts), paced=True)
    for j, parts in enumerate(texts):
        deltas = [c for e in events for c in e["choices"] if c["index"] == j]
        assert [d["delta"].get("content") for d in deltas if d["delta"].get("content")] == []
        pieces = [tc for d in deltas for tc in d["delta"].get("tool_calls", [])]
        assert all(tc["index"] == 0 for tc in pieces)
        assert pieces[0]["type"] == "function" and pieces[0]["id"].startswith("call_")
        assert pieces[0]["function"]["name"] == "get_weather" and all("id" not in tc for tc in pieces[1:])
        assert [tc["function"]["arguments"] for tc in pieces] == parts  # each piece as it came
        assert [d["finish_reason"] for d in deltas if d["finish_reason"]] == ["stop"] and deltas[-1]["finish_reason"]


def test_streamed_required_calls_open_and_grow_per_choice():
    """n = 2: no content delta in either choice; each call opens with a delta naming it (id, type,
    name) and its arguments follow as they are written; the choice ends with "tool_calls". The
    calls equal the unary reading of the whole reply."""
    texts = [['[{"name": "now", "param', 'eters": {}}, {"name": "get_weather", "parameters": {"ci', 'ty": "Oslo"}}]'],
             ['[{"name": "get_weather",', ' "parameters": {"city": "Rome"}}]']]
    body = ChatCompletionRequest(messages=ASK, tools=[WEATHER, NOW], tool_choice="required", n=2, stream=True)
    body.generate_request(100)
    events = _chat_events(body, _forced_chunks(texts), paced=True)
    for j, parts in enumerate(texts):
        deltas = [c for e in events for c in e["choices"] if c["index"] == j]
        assert [d["delta"].get("content") for d in deltas if d["delta"].get("content")] == []
        [last] = [d for d in deltas if d["finish_reason"]]
        assert last is deltas[-1] and last["finish_reason"] == "tool_calls"
        calls: dict[int, list] = {}
        for tc in (tc for d in deltas for tc in d["delta"].get("tool_calls", [])):
            if "id" in tc:
                assert tc["index"] == len(calls) and tc["type"] == "function" and tc["id"].startswith("call_")
                calls[tc["index"]] = [tc["function"]["name"], tc["function"]["arguments"]]
            else:
                calls[tc["index"]][1] += tc["function"]["arguments"]
        _, whole, _ = forced_reply("".join(parts), "stop", None)
        assert list(calls.values()) == [[c["function"]["name"], c["function"]["arguments"]] for c in whole]
    pieces = [tc for e in events for c in e["choices"] if c["index"] == 0 for tc in c["delta"].get("tool_calls", [])
              if "id" not in tc and tc["index"] == 1]
    assert [p["function"]["arguments"] for p in pieces] == ['{"ci', 'ty": "Oslo"}'], "the arguments as they come"


def test_a_streamed_required_reply_cut_short_comes_as_content():
    body = ChatCompletionRequest(messages=ASK, tools=[WEATHER], tool_choice="required", stream=True)
    events = _chat_events(body, [chunk(0, '[{"name":', [1]), chunk(0, '"get_w', [2], pb.FINISH_REASON_LENGTH)])
    deltas = [c for e in events for c in e["choices"]]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == '[{"name":"get_w'
    assert deltas[-1]["finish_reason"] == "length" and "tool_calls" not in deltas[-1]["delta"]
