"""The OpenAI-compatible gateway (`litelang-openai`, gateway/) end to end: a real worker and
scheduler on a tiny random Qwen2 with the real tokenizer, the gateway as its own process, and
OpenAI's official Python SDK as the client, so the SDK's own parsing checks the wire format.
The oracle for every value is litelang's gRPC client on the same server (no prefix cache, so a
repeated request computes the same way and logprobs match bit for bit)."""

from __future__ import annotations

import collections
import json
import time
import urllib.error
import urllib.request

import pytest

# the device's GPU runs collect every module but deselect these CPU tests; CI installs the SDK
# (test_units checks that it does, so a missing install cannot pass as skips)
openai = pytest.importorskip("openai")

import litelang  # noqa: E402
from litelang.client.api import chat_messages  # noqa: E402
from litelang.proto import litelang_pb2 as pb  # noqa: E402

from helpers import health_status, openai_gateway, wait_for, wait_idle  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "tiny-qwen2"
PROMPT = "def fibonacci(n):"
CHAT = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is a radix tree?"}]
# random weights: EOS could come at any point, so runs are fixed-length unless a test says otherwise
FIXED = {"ignore_eos": True}
MAX_REQS = 16
# no prefix cache: a repeated request computes the same way, so logprobs match bit for bit; the
# limits add up to the max_model_len /tokenize reports (256 + 4096)
SERVER_CONFIG = dict(kv_slots=8192, max_batch_size=4, max_input_length=256, max_output_length=4096,
                     max_reqs=MAX_REQS, use_radix_cache=False)
GATEWAY_FLAGS = ("--served-model-name", MODEL)


@pytest.fixture(scope="module")
def api(gateway_url):
    return openai.OpenAI(base_url=gateway_url, api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(api, group):
    models = api.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert api.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("gpt-4")


def preflight(base_url: str, path: str, origin: str) -> dict[str, str]:
    """A browser's CORS preflight for a POST with a JSON body and a bearer key: the headers."""
    request = urllib.request.Request(base_url.removesuffix("/v1") + path, method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return {k.lower(): v for k, v in reply.headers.items()}


def test_browsers_may_call_the_api(gateway_url, api):
    headers = preflight(gateway_url, "/v1/chat/completions", "http://localhost:3000")
    assert headers["access-control-allow-origin"] in ("*", "http://localhost:3000")
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"].lower()


def test_completion_matches_the_grpc_client(api, group):
    want = group.client.generate(PROMPT, max_new_tokens=8, temperature=0, skip_special_tokens=True, **FIXED)
    got = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, extra_body=FIXED)
    assert got.object == "text_completion" and got.model == MODEL
    assert [c.text for c in got.choices] == [want.text]
    assert got.choices[0].finish_reason == "length"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.usage.prompt_tokens, 8)
    assert got.usage.total_tokens == want.usage.prompt_tokens + 8


def test_suffix_fills_in_the_middle_as_the_grpc_client(api, group):
    """OpenAI's suffix: the same prompt ids and completion as the gRPC client's suffix (a
    prompt that differs from the plain one's, so the suffix is not dropped on the way)."""
    suffix = "\n\nprint(fibonacci(10))\n"
    want = group.client.generate(PROMPT, suffix=suffix, max_new_tokens=8, temperature=0, skip_special_tokens=True,
                                 **FIXED)
    plain = group.client.generate(PROMPT, max_new_tokens=1, temperature=0, **FIXED)
    assert want.usage.prompt_tokens == len(group.client.tokenize(PROMPT, suffix).token_ids) > plain.usage.prompt_tokens
    got = api.completions.create(model=MODEL, prompt=PROMPT, suffix=suffix, max_tokens=8, temperature=0,
                                 extra_body=FIXED)
    assert [c.text for c in got.choices] == [want.text]
    assert got.usage.prompt_tokens == want.usage.prompt_tokens


def test_batched_prompts_token_ids_and_n(api, group):
    """A list of prompts with n = 2: choice p * n + j is prompt p's completion j, each as the gRPC
    client's seeded completions. Token-id prompts (one, or a list of them) too."""
    other = "import numpy as np"
    kw = dict(max_new_tokens=5, temperature=1.0, seed=11, n=2, skip_special_tokens=True, **FIXED)
    want = [group.client.generate(PROMPT, **kw), group.client.generate(other, **kw)]
    args = dict(model=MODEL, max_tokens=5, temperature=1.0, seed=11, n=2, extra_body=FIXED)
    got = api.completions.create(prompt=[PROMPT, other], **args)
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    assert [c.text for c in got.choices] == [c.text for w in want for c in w.completions]
    assert got.usage.completion_tokens == 20
    assert got.usage.prompt_tokens == sum(w.usage.prompt_tokens for w in want)
    ids = [list(group.client.tokenize(p).token_ids) for p in (PROMPT, other)]
    assert [c.text for c in api.completions.create(prompt=ids[1], **args).choices] == [c.text for c in want[1].completions]
    assert [c.text for c in api.completions.create(prompt=ids, **args).choices] == [c.text for c in got.choices]


def test_streamed_completion_equals_the_unary_one(api, group):
    unary = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, extra_body=FIXED)
    chunks = list(api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                         stream_options={"include_usage": True}, extra_body=FIXED))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == unary.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == unary.usage.prompt_tokens


def test_legacy_logprobs_match_the_grpc_client(api, group):
    want = group.client.generate(PROMPT, max_new_tokens=6, temperature=0, logprobs=True, top_logprobs=2, **FIXED)
    got = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2,
                                 extra_body={**FIXED, "skip_special_tokens": False})
    lp = got.choices[0].logprobs
    assert lp.token_logprobs == list(want.logprobs)
    assert "".join(lp.tokens) == got.choices[0].text == want.text
    tokens = group.client.stub.Detokenize(pb.DetokenizeRequest(token_ids=want.token_ids))
    assert lp.tokens == [b.decode("utf-8", errors="strict") if _utf8(b) else _escaped(b) for b in tokens.token_bytes]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for top, want_top in zip(lp.top_logprobs, want.top_logprobs):
        assert sorted(top.values(), reverse=True) == list(want_top.logprobs)[:len(top)]
        assert 1 <= len(top) <= 2


def test_echo_scores_the_prompt(api, group):
    want = group.client.generate(PROMPT, max_new_tokens=2, temperature=0, logprobs=True, prompt_logprobs=0, **FIXED)
    got = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0, logprobs=0, echo=True,
                                 extra_body={**FIXED, "skip_special_tokens": False})
    choice = got.choices[0]
    assert choice.text == PROMPT + want.text
    n_prompt = len(want.prompt_token_ids)
    assert choice.logprobs.token_logprobs == [None, *want.prompt_logprobs, *want.logprobs]
    assert "".join(choice.logprobs.tokens[:n_prompt]) == PROMPT


def test_chat_matches_the_grpc_client(api, group):
    want = group.client.generate(CHAT, max_new_tokens=10, temperature=0, skip_special_tokens=True, **FIXED)
    got = api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0, extra_body=FIXED)
    assert got.object == "chat.completion"
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    # content parts and the developer role are accepted as OpenAI's newer SDKs send them
    parts = [{"role": "developer", "content": "Be terse."},
             {"role": "user", "content": [{"type": "text", "text": "What is a "}, {"type": "text", "text": "radix tree?"}]}]
    again = api.chat.completions.create(model=MODEL, messages=parts, max_completion_tokens=10, temperature=0,
                                        extra_body=FIXED)
    assert again.choices[0].message.content == want.text


def test_chat_stream_and_logprobs(api, group):
    want = group.client.generate(CHAT, max_new_tokens=8, temperature=0, logprobs=True, top_logprobs=3, **FIXED)
    chunks = list(api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, stream=True,
                                              logprobs=True, top_logprobs=3,
                                              extra_body={**FIXED, "skip_special_tokens": False}))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "length"
    content = [entry for c in chunks if c.choices[0].logprobs for entry in c.choices[0].logprobs.content]
    assert [e.logprob for e in content] == list(want.logprobs)
    assert bytes(b for e in content for b in e.bytes) == want.text.encode("utf-8")
    for e, want_top in zip(content, want.top_logprobs):
        assert [t.logprob for t in e.top_logprobs] == list(want_top.logprobs)


class CountingStub:
    """A gateway's scheduler stub that counts the RPCs its routes call."""

    def __init__(self, stub):
        self.stub, self.calls = stub, collections.Counter()

    def __getattr__(self, name: str):
        self.calls[name] += 1
        return getattr(self.stub, name)


def sse_events(body: str) -> list[dict]:
    data = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_streamed_logprobs_take_their_bytes_from_the_stream(group):
    """A streamed completion and a streamed chat with logprobs: the gateway (in this process, its
    stub counted) calls GenerateStream and no Detokenize, and every token and alternative is
    spelled as Detokenize spells the same ids."""
    from starlette.testclient import TestClient

    from litelang.gateway.app import build_app

    want_text = group.client.generate(PROMPT, max_new_tokens=6, temperature=0, logprobs=True, top_logprobs=2, **FIXED)
    want_chat = group.client.generate(CHAT, max_new_tokens=6, temperature=0, logprobs=True, top_logprobs=2, **FIXED)
    spelled = lambda ids: list(group.client.stub.Detokenize(pb.DetokenizeRequest(token_ids=ids)).token_bytes)  # noqa: E731
    app = build_app(group.address, MODEL)
    with TestClient(app) as http:
        stub = app.state.backend.stub = CountingStub(app.state.backend.stub)
        ask = dict(model=MODEL, max_tokens=6, temperature=0, stream=True, skip_special_tokens=False, **FIXED)
        text = sse_events(http.post("/v1/completions", json=dict(ask, prompt=PROMPT, logprobs=2)).text)
        chat = sse_events(http.post("/v1/chat/completions", json=dict(ask, messages=CHAT, logprobs=True,
                                                                      top_logprobs=2)).text)
    assert stub.calls["GenerateStream"] == 2 and stub.calls["Detokenize"] == 0, stub.calls
    tokens = [t for e in text if e["choices"] and e["choices"][0]["logprobs"]
              for t in e["choices"][0]["logprobs"]["tokens"]]
    assert tokens == [b.decode("utf-8") if _utf8(b) else _escaped(b) for b in spelled(want_text.token_ids)]
    content = [entry for e in chat if e["choices"] and e["choices"][0]["logprobs"]
               for entry in e["choices"][0]["logprobs"]["content"]]
    assert [bytes(entry["bytes"]) for entry in content] == spelled(want_chat.token_ids)
    assert len(content) == len(want_chat.top_logprobs) == 6
    for entry, want_top in zip(content, want_chat.top_logprobs):
        assert [bytes(t["bytes"]) for t in entry["top_logprobs"]] == spelled(want_top.token_ids)


def test_chat_with_tools_renders_them_into_the_prompt(api, group, tiny_model):
    """The tools reach the chat template (the prompt grows by HF's own rendering of them); the
    random model calls none, so the reply is content with the usual finish reason."""
    from transformers import AutoTokenizer

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    hf = AutoTokenizer.from_pretrained(str(tiny_model))
    want = len(hf.encode(hf.apply_chat_template(CHAT, tools=tools, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False))
    got = api.chat.completions.create(model=MODEL, messages=CHAT, tools=tools, max_tokens=3, extra_body=FIXED)
    assert got.usage.prompt_tokens == want > group.client.generate(CHAT, max_new_tokens=1).usage.prompt_tokens
    assert got.choices[0].finish_reason == "length" and got.choices[0].message.tool_calls is None
    none = api.chat.completions.create(model=MODEL, messages=CHAT, tools=tools, tool_choice="none", max_tokens=1)
    assert none.usage.prompt_tokens < want, "tool_choice none: the tools are not offered"


def test_chat_continues_a_prefilled_reply(api, group):
    """continue_final_message: the reply continues the assistant message the client started, as
    the gRPC Generate of the same open conversation does."""
    turns = CHAT + [{"role": "assistant", "content": "A radix tree is"}]
    chat = chat_messages(turns, continue_final_message=True)
    want = group.client.stub.Generate(pb.GenerateRequest(messages=chat, sampling=pb.SamplingParams(
        temperature=0, max_new_tokens=6, ignore_eos=True, skip_special_tokens=True)))
    got = api.chat.completions.create(model=MODEL, messages=turns, max_tokens=6, temperature=0,
                                      extra_body={**FIXED, "continue_final_message": True})
    assert got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    plain = api.chat.completions.create(model=MODEL, messages=turns, max_tokens=1, extra_body=FIXED)
    assert plain.usage.prompt_tokens > want.usage.prompt_tokens, "without it, the turn is closed and a new one opened"


def test_chat_n_completions(api, group):
    want = group.client.generate(CHAT, max_new_tokens=4, temperature=1.0, seed=5, n=3, skip_special_tokens=True, **FIXED)
    got = api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=1.0, seed=5, n=3,
                                      extra_body=FIXED)
    assert [c.message.content for c in got.choices] == [c.text for c in want.completions]
    assert got.usage.completion_tokens == 12


@pytest.mark.parametrize("kwargs, status, word", [
    (dict(temperature=-1), 400, "temperature"),
    (dict(top_p=1.5), 400, "top_p"),
    (dict(max_tokens=10_000), 400, "max_output_length"),
    (dict(prompt="word " * 400), 400, "max_input_length"),
    (dict(model="gpt-4"), 404, "gpt-4"),
    (dict(max_tokens="many"), 400, "max_tokens"),
    (dict(suffix="x", prompt=[1, 2, 3]), 400, "suffix"),
    (dict(logit_bias={"not-a-token": 1}), 400, "logit_bias"),
    (dict(seed=-1), 400, "seed"),
    (dict(n=MAX_REQS + 1), 429, "queue"),
])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_bad_requests_get_openai_errors(api, group, kwargs, status, word, stream):
    """Each failure as the SDK's typed error with the HTTP status and a message naming the
    problem; a streamed request fails before its stream starts. Nothing is left running."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        result = api.completions.create(**body, stream=stream)
        list(result) if stream else None
    assert err.value.status_code == status, err.value.message
    assert word in err.value.message
    wait_idle(group.client)


def test_structured_outputs(api, group):
    """OpenAI's response_format and vLLM's structured_outputs / guided_* fields reach the
    scheduler's format: random weights produce the format only through it."""
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    chat = api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=32, temperature=1.0, seed=1,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(chat.choices[0].message.content)["answer"] in ("yes", "no")
    assert chat.choices[0].finish_reason == "stop"
    choice = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=2,
                                    extra_body={"structured_outputs": {"choice": ["red", "green"]}})
    assert choice.choices[0].text in ("red", "green")
    stream = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=1.0, seed=3, stream=True,
                                    extra_body={"guided_regex": "[0-9]{4}"})
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert len(text) == 4 and text.isdigit()


def test_chat_refusals(api):
    tools = [{"type": "function", "function": {"name": "f"}}]
    for extra, word in ((dict(tools=tools, tool_choice="bogus"), "tool_choice"),
                        (dict(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}}), "offered"),
                        (dict(tool_choice="required"), "tools"),
                        (dict(tools=tools, tool_choice="required", response_format={"type": "json_object"}),
                         "one format"),
                        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "response_format"),
                        (dict(response_format={"type": "json_object"}, extra_body={"guided_regex": "a+"}),
                         "one structured output format"),
                        (dict(extra_body={"guided_regex": "[a-"}), "regex does not parse"),
                        (dict(top_logprobs=2), "top_logprobs")):
        with pytest.raises(openai.BadRequestError) as err:
            api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, **extra)
        assert word in err.value.message
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model=MODEL, messages=[], max_tokens=2)


def test_a_client_leaving_a_stream_aborts_its_request(api, group):
    before = wait_idle(group.client).generated_tokens
    stream = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4000, temperature=0, stream=True,
                                    extra_body=FIXED)
    it = iter(stream)
    next(it), next(it)
    stream.close()
    stats = wait_idle(group.client, 30)  # aborted: nothing runs, no KV slot is held
    assert stats.kv_free == stats.kv_capacity
    assert stats.generated_tokens - before < 4000, "the request was aborted, not run to its end"


def post(base_url: str, path: str, body: dict) -> tuple[int, dict]:
    """POST JSON to the gateway's root (vLLM's extra routes sit beside /v1): (status, body)."""
    request = urllib.request.Request(base_url.removesuffix("/v1") + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_tokenize_and_detokenize_routes(gateway_url, group):
    want = group.client.tokenize(PROMPT)
    status, got = post(gateway_url, "/tokenize", {"model": MODEL, "prompt": PROMPT})
    assert status == 200 and got["tokens"] == list(want.token_ids) and got["count"] == len(want.token_ids)
    assert got["max_model_len"] == 256 + 4096
    status, got = post(gateway_url, "/tokenize", {"messages": CHAT})
    assert status == 200 and got["tokens"] == list(group.client.tokenize(CHAT).token_ids)
    status, got = post(gateway_url, "/detokenize", {"tokens": list(want.token_ids)})
    assert status == 200 and got["prompt"] == PROMPT
    status, got = post(gateway_url, "/detokenize", {"tokens": [1, 10**8]})
    assert status == 400 and "vocabulary" in got["error"]["message"]
    status, got = post(gateway_url, "/tokenize", {"model": MODEL})
    assert status == 400 and "prompt" in got["error"]["message"]


def http_counts(base_url: str) -> dict[tuple[str, str], float]:
    """litelang_http_requests_total from the gateway's /metrics: (path, status) -> count."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.labels["path"], s.labels["status"]): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "litelang_http_requests_total"}


def test_metrics_count_requests_by_path_and_status(api, gateway_url):
    before = http_counts(gateway_url)
    for _ in range(2):
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body=FIXED)
    list(api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, stream=True, extra_body=FIXED))
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=-1)
    with pytest.raises(urllib.error.HTTPError):  # counted under "other", not under its own path
        urllib.request.urlopen(gateway_url.removesuffix("/v1") + "/no/such/path/1", timeout=5)
    after = http_counts(gateway_url)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta == {("/v1/completions", "200"): 2, ("/v1/chat/completions", "200"): 1, ("/v1/completions", "400"): 1,
                     ("other", "404"): 1}


def test_x_request_id_names_the_request(api, group):
    """The caller's X-Request-Id is the response's id and the scheduler's: a gRPC Abort with it
    ends the stream; a second request with an id in flight is 409."""
    got = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body=FIXED,
                                 extra_headers={"X-Request-Id": "mine-1"})
    assert got.id == "mine-1"
    stream = api.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4000, temperature=0, stream=True,
                                         extra_body=FIXED, extra_headers={"X-Request-Id": "mine-2"})
    it = iter(stream)
    next(it), next(it)
    with pytest.raises(openai.ConflictError) as err:
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_headers={"X-Request-Id": "mine-2"})
    assert "already in flight" in err.value.message
    assert group.client.abort("mine-2") == ["mine-2"]
    assert [c.choices[0].finish_reason for c in it if c.choices][-1] == "abort"
    wait_idle(group.client)


def test_allowed_origins_limits_which_pages_may_call(group, tmp_path):
    with openai_gateway(group, tmp_path, "--served-model-name", MODEL, "--allowed-origins", "http://ok.example") as url:
        assert preflight(url, "/v1/completions", "http://ok.example")["access-control-allow-origin"] == "http://ok.example"
        with pytest.raises(urllib.error.HTTPError) as err:
            preflight(url, "/v1/completions", "http://evil.example")
        assert err.value.code == 400


@pytest.mark.parametrize("how", ["flag", "env"])
def test_api_key_is_asked_for_when_set(group, tmp_path, how):
    flags, env = (["--api-key", "s3cret"], None) if how == "flag" else ([], {"LITELANG_API_KEY": "s3cret"})
    with openai_gateway(group, tmp_path, "--served-model-name", MODEL, *flags, env=env) as url:
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        assert err.value.status_code == 401 and "API key" in err.value.message
        status, body = post(url, "/v1/completions", {"prompt": "x"})  # no Authorization header at all
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        status, _ = post(url, "/tokenize", {"prompt": "x"})
        assert status == 401, "vLLM's extra routes are behind the key too"
        headers = preflight(url, "/v1/completions", "http://localhost:3000")  # browsers send no key here
        assert headers["access-control-allow-origin"] in ("*", "http://localhost:3000")
        api = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0, timeout=60)
        assert [m.id for m in api.models.list().data] == [MODEL]
        got = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body=FIXED)
        assert got.usage.completion_tokens == 2
        for open_path in ("/health", "/ping", "/metrics", "/version"):
            with urllib.request.urlopen(url.removesuffix("/v1") + open_path, timeout=5) as reply:
                assert reply.status == 200, f"{open_path} stays open for probes and scrapers"
                if open_path in ("/health", "/ping"):
                    assert json.loads(reply.read()) == {"status": "ok"}
                if open_path == "/version":
                    assert json.loads(reply.read()) == {"version": litelang.__version__}


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _escaped(raw: bytes) -> str:
    return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def test_priority_orders_the_waiting_queue(api, group):
    """Four long streams fill the batch; a priority 5 request, then a priority -1 one, wait. When
    one slot frees, the -1 request (sent through the gateway) runs and finishes before the 5 one
    (sent over gRPC) gets its first token."""
    import threading

    from litelang.client.api import generate_request

    long = [group.client.stub.GenerateStream(generate_request(PROMPT, f"long-{i}", max_new_tokens=4000,
                                                              temperature=0, ignore_eos=True), timeout=120)
            for i in range(4)]
    for call in long:
        next(call)
    events: dict[str, float] = {}

    def low():
        for chunk in group.client.generate_stream(PROMPT, priority=5, max_new_tokens=3, **FIXED):
            events.setdefault("low first token", time.monotonic())

    def high():
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, extra_body={**FIXED, "priority": -1})
        events["high done"] = time.monotonic()

    threads = [threading.Thread(target=low)]
    threads[0].start()
    wait_for(lambda: group.client.stats().waiting == 1, 30, "the priority 5 request to wait")
    threads.append(threading.Thread(target=high))
    threads[1].start()
    wait_for(lambda: group.client.stats().waiting == 2, 30, "the priority -1 request to wait")
    assert group.client.abort("long-0") == ["long-0"]
    for t in threads:
        t.join(60)
    assert events["high done"] < events["low first token"], events
    assert group.client.abort("long-1", "long-2", "long-3") == ["long-1", "long-2", "long-3"]
    wait_idle(group.client)


# last: it kills the group's worker (and restarts it)

def test_a_dead_worker_fails_requests_then_the_gateway_recovers(api, group):
    """Mid-stream the SDK raises the error event's UNAVAILABLE; while the worker is down a request
    gets 503; after the restart the same gateway serves again."""
    stream = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4000, temperature=0, stream=True,
                                    extra_body=FIXED)
    it = iter(stream)
    next(it), next(it)
    group.kill_worker()
    with pytest.raises(openai.APIError) as err:
        list(it)
    assert err.value.body["code"] == "UNAVAILABLE", err.value.body
    # (health is what wait_serving reads below: it must have left SERVING first)
    wait_for(lambda: health_status(group.address) == "NOT_SERVING", 30, "the scheduler to report NOT_SERVING")
    with pytest.raises(openai.InternalServerError) as down:
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert down.value.status_code == 503 and "retry" in down.value.message
    group.start_worker()
    group.wait_serving(120)
    got = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, extra_body=FIXED)
    assert got.usage.completion_tokens == 3
    wait_idle(group.client)
