"""End to end on the real default checkpoint, real processes: bad input, full queue, requests that
can never fit, stop strings, aborts (client cancel and the Abort RPC) freeing their KV, the Chat
stream, and a worker killed under the scheduler."""

from __future__ import annotations

import math
import time

import grpc
import pytest

from helpers import health_status, server_group, wait_for, wait_idle
from litelang.client.api import generate_request
from litelang.proto import litelang_pb2 as pb

pytestmark = pytest.mark.slow

MAX_INPUT = 192
MAX_OUTPUT = 512
KV_SLOTS = 500  # < MAX_INPUT + MAX_OUTPUT: some valid-looking requests can never fit

FIB = "def fibonacci(n):"


@pytest.fixture(scope="module")
def limited(default_model_dir, tmp_path_factory):
    """Small limits and the radix prefix cache on (the default): input validation, stop strings,
    chat, aborts whose KV goes to the prefix cache."""
    with server_group(
        default_model_dir, tmp_path_factory.mktemp("limited_logs"),
        max_input_length=MAX_INPUT, max_output_length=MAX_OUTPUT, kv_slots=KV_SLOTS, max_batch_size=4, max_reqs=16,
    ) as g:
        yield g


@pytest.fixture(scope="module")
def single(default_model_dir, tmp_path_factory):
    """One running request at a time and one waiting, no prefix cache (so an idle pool is all
    free: kv_free == kv_capacity): queueing, aborts, worker death."""
    with server_group(
        default_model_dir, tmp_path_factory.mktemp("single_logs"),
        max_reqs=1, max_batch_size=1, max_input_length=512, max_output_length=MAX_OUTPUT, kv_slots=2048,
        use_radix_cache=False,
    ) as g:
        yield g


def rpc_error(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


# ------------------------------------------------------------------------------ bad input

def _req(**fields) -> pb.GenerateRequest:
    sampling = fields.pop("sampling", {})
    req = pb.GenerateRequest(sampling=pb.SamplingParams(**sampling), **fields)
    return req


BAD_INPUT = {
    # name: (request, a word the message must contain)
    "empty prompt": (_req(prompt=""), "empty"),
    "prompt over max_input_length": (_req(prompt="word " * (2 * MAX_INPUT)), "max_input_length"),
    "max_new_tokens 0": (_req(prompt=FIB, sampling=dict(max_new_tokens=0)), "max_new_tokens"),
    "max_new_tokens -1": (_req(prompt=FIB, sampling=dict(max_new_tokens=-1)), "max_new_tokens"),
    "max_new_tokens over max_output_length": (
        _req(prompt=FIB, sampling=dict(max_new_tokens=MAX_OUTPUT + 1)), "max_output_length"),
    "temperature -0.5": (_req(prompt=FIB, sampling=dict(temperature=-0.5)), "temperature"),
    "temperature NaN": (_req(prompt=FIB, sampling=dict(temperature=math.nan)), "temperature"),
    "top_p 0": (_req(prompt=FIB, sampling=dict(top_p=0.0)), "top_p"),
    "top_p 1.5": (_req(prompt=FIB, sampling=dict(top_p=1.5)), "top_p"),
    "no input": (_req(sampling=dict(max_new_tokens=4)), "input"),
    "empty messages": (_req(messages=pb.ChatMessages()), "messages"),
    "bad role": (_req(messages=pb.ChatMessages(messages=[pb.ChatMessage(role="robot", content="hi")])), "role"),
    "token id outside the vocabulary": (_req(input_ids=pb.TokenIds(ids=[1, 10**8])), "vocabulary"),
    "truncate_prompt_tokens 0": (_req(prompt=FIB, sampling=dict(truncate_prompt_tokens=0)), "truncate_prompt_tokens"),
    "allowed_token_ids outside the vocabulary": (_req(prompt=FIB, sampling=dict(allowed_token_ids=[1, 10**8])),
                                                 "allowed_token_ids"),
    "blank bad word": (_req(prompt=FIB, sampling=dict(bad_words=["ok", " "])), "bad_words"),
    "suffix with token ids": (_req(input_ids=pb.TokenIds(ids=[1, 2]), suffix="x"), "suffix"),
    "suffix with messages": (
        _req(messages=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")]), suffix="x"), "suffix"),
    "suffix over max_input_length": (_req(prompt=FIB, suffix="word " * (2 * MAX_INPUT)), "max_input_length"),
}


def test_bad_input_requests_are_well_formed():
    """Guards the table below: an unset oneof or a dropped field would make the cases vacuous."""
    assert BAD_INPUT["empty prompt"][0].WhichOneof("input") == "prompt"
    assert BAD_INPUT["no input"][0].WhichOneof("input") is None
    assert BAD_INPUT["empty messages"][0].WhichOneof("input") == "messages"
    assert BAD_INPUT["max_new_tokens 0"][0].sampling.HasField("max_new_tokens")
    assert BAD_INPUT["top_p 0"][0].sampling.HasField("top_p")


@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_invalid_argument(limited, case, rpc):
    request, word = BAD_INPUT[case]
    call = getattr(limited.client.stub, rpc)
    t0 = time.monotonic()
    if rpc == "Generate":
        err = rpc_error(lambda: call(request, timeout=30))
    else:
        err = rpc_error(lambda: list(call(request, timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert err.details() and word in err.details(), err.details()
    assert time.monotonic() - t0 < 10, "rejecting bad input should not wait for the model"


def test_server_still_serves_after_bad_input(limited):
    reply = limited.client.generate(FIB, max_new_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4 and reply.text
    stats = wait_idle(limited.client)
    assert stats.worker_healthy


def test_request_that_can_never_fit_is_resource_exhausted(limited):
    err = rpc_error(lambda: limited.client.stub.Generate(
        generate_request(FIB, max_new_tokens=KV_SLOTS - 2), timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    assert "KV" in err.details()
    # a request that does fit still runs afterwards
    assert limited.client.generate(FIB, max_new_tokens=2, temperature=0).usage.completion_tokens == 2


# ------------------------------------------------------------------------------ stop strings

@pytest.fixture(scope="module")
def fib_full(limited) -> pb.GenerateResponse:
    reply = limited.client.generate(FIB, max_new_tokens=20, temperature=0)
    # the greedy completion starts "\n    if n <= 0:\n        return ..."; the cases below need that
    assert "if n <= 0" in reply.text and "return" in reply.text, reply.text
    return reply


@pytest.mark.parametrize("stops", [["return"], ["if n <= 0"], ["return", "<="], ["never appears", "return"]])
def test_stop_string_cuts_the_output(limited, fib_full, stops):
    first = min((fib_full.text.find(s), s) for s in stops if s in fib_full.text)
    expected = fib_full.text[: first[0]]
    got = limited.client.generate(FIB, max_new_tokens=20, temperature=0, stop=stops)
    assert got.finish_reason == pb.FINISH_REASON_STOP_STRING
    assert got.stop_string == first[1]
    assert got.text == expected
    assert not any(s in got.text for s in stops)
    assert 0 < got.usage.completion_tokens < fib_full.usage.completion_tokens
    # streaming must hold back text that might be the start of a stop string
    chunks = list(limited.client.generate_stream(FIB, max_new_tokens=20, temperature=0, stop=stops))
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].finish_reason == pb.FINISH_REASON_STOP_STRING
    assert chunks[-1].stop_string == first[1], "the last chunk names the stop string, as the unary reply does"
    assert not any(c.stop_string for c in chunks[:-1])


def test_stop_string_kept_when_asked(limited, fib_full):
    """include_stop_str_in_output: the same cut, with the stop string left at the end."""
    stops = ["return", "<="]
    index, stop = min((fib_full.text.find(s), s) for s in stops if s in fib_full.text)
    expected = fib_full.text[: index + len(stop)]
    got = limited.client.generate(FIB, max_new_tokens=20, temperature=0, stop=stops, include_stop_str_in_output=True)
    assert (got.text, got.stop_string, got.finish_reason) == (expected, stop, pb.FINISH_REASON_STOP_STRING)
    chunks = list(limited.client.generate_stream(FIB, max_new_tokens=20, temperature=0, stop=stops,
                                                 include_stop_str_in_output=True))
    assert "".join(c.text for c in chunks) == expected and chunks[-1].stop_string == stop


def test_truncate_prompt_tokens_keeps_the_prompts_end(limited):
    """The prompt's last N tokens only: the same greedy tokens as sending those N ids, and the
    usage counts N. A prompt over max_input_length fits once truncated."""
    ids = list(limited.client.tokenize(FIB + " # " + "word " * 40).token_ids)
    keep = 12
    got = limited.client.generate(FIB + " # " + "word " * 40, max_new_tokens=6, temperature=0, truncate_prompt_tokens=keep)
    want = limited.client.generate(ids[-keep:], max_new_tokens=6, temperature=0)
    assert got.usage.prompt_tokens == keep
    assert list(got.token_ids) == list(want.token_ids)
    too_long = "word " * (2 * MAX_INPUT)
    reply = limited.client.generate(too_long, max_new_tokens=2, temperature=0, truncate_prompt_tokens=MAX_INPUT)
    assert reply.usage.prompt_tokens == MAX_INPUT


# ------------------------------------------------------------------------------ queue and aborts

def long_stream(group, request_id: str = "", prompt: str = FIB, n: int = 400, timeout: float = 120):
    """A greedy stream that runs far longer than any test waits for."""
    return group.client.stub.GenerateStream(
        generate_request(prompt, request_id, max_new_tokens=n, temperature=0, ignore_eos=True), timeout=timeout)


def test_full_queue_is_resource_exhausted_at_once(single):
    running = long_stream(single, "q-running")
    assert next(running).token_ids  # it runs
    waiting = long_stream(single, "q-waiting", prompt="import os\n")
    stats = wait_for(lambda: (s := single.client.stats()).waiting == 1 and s, 30, "the second request to wait")
    assert stats.running == 1
    for rpc in ("Generate", "GenerateStream"):
        t0 = time.monotonic()
        call = getattr(single.client.stub, rpc)
        req = generate_request("print(", max_new_tokens=4)
        err = rpc_error(lambda: call(req, timeout=30) if rpc == "Generate" else list(call(req, timeout=30)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
        assert "max_reqs" in err.details()
        assert time.monotonic() - t0 < 5, "a full queue must answer at once"
    # abort the waiting one by id: its stream ends with ABORTED and no tokens
    assert single.client.abort("q-waiting") == ["q-waiting"]
    rest = list(waiting)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED
    assert rest[-1].usage.completion_tokens == 0
    running.cancel()
    wait_idle(single.client, 30)


def _read_some(call, n: int = 3) -> None:
    for _ in range(n):
        assert next(call).finish_reason == pb.FINISH_REASON_UNSPECIFIED


def test_client_cancel_frees_kv(single):
    idle = wait_idle(single.client)
    assert idle.kv_free == idle.kv_capacity and idle.kv_cached == 0
    call = long_stream(single)
    _read_some(call)
    busy = single.client.stats()
    assert busy.running == 1 and busy.kv_in_use > 0 and busy.kv_free < busy.kv_capacity  # slots really are held
    call.cancel()
    err = rpc_error(lambda: list(call))
    assert err.code() == grpc.StatusCode.CANCELLED
    after = wait_idle(single.client, 30)
    assert after.kv_free == after.kv_capacity


@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_a_passed_deadline_aborts_the_request(single, rpc):
    """The client's deadline passes mid-generation: DEADLINE_EXCEEDED there, and the server
    stops generating (far fewer than the 400 tokens asked for) and frees the request's KV."""
    before = wait_idle(single.client).generated_tokens
    request = generate_request(FIB, max_new_tokens=400, temperature=0, ignore_eos=True)
    method = getattr(single.client.stub, rpc)
    err = rpc_error(lambda: list(method(request, timeout=1.0)) if rpc == "GenerateStream" else method(request, timeout=1.0))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = wait_idle(single.client, 30)
    assert after.kv_free == after.kv_capacity
    assert after.generated_tokens - before < 400, "the request ran to its end after its caller gave up"


def test_abort_rpc_frees_kv(single):
    call = long_stream(single, "abort-me")
    _read_some(call)
    err = rpc_error(lambda: single.client.stub.Generate(generate_request(FIB, "abort-me", max_new_tokens=2), timeout=10))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, (err.code(), err.details())  # ids are unique in flight
    assert single.client.abort("abort-me", "no-such-request") == ["abort-me"]
    rest = list(call)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED
    assert 3 <= rest[-1].usage.completion_tokens < 400
    after = wait_idle(single.client, 30)
    assert after.kv_free == after.kv_capacity
    assert single.client.abort("abort-me") == []  # finished: nothing to abort any more


LONG_PROMPT = (
    "# utils.py: small helpers for parsing configuration files, validating user input and\n"
    "# formatting reports. Every function has a docstring and type hints.\n\nimport os\nimport re\n"
)


def test_abort_with_prefix_cache_unlocks_and_keeps_the_prefix(limited):
    call = long_stream(limited, "abort-cached", prompt=LONG_PROMPT, n=300)
    _read_some(call)
    busy = limited.client.stats()
    assert busy.running == 1 and busy.kv_free < busy.kv_capacity
    assert limited.client.abort("abort-cached") == ["abort-cached"]
    rest = list(call)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED
    prompt_tokens = rest[-1].usage.prompt_tokens
    wait_idle(limited.client, 30)  # nothing held by a request: free + cached == capacity
    # the aborted request's prompt KV went to the prefix cache and is reusable
    again = limited.client.generate(LONG_PROMPT, max_new_tokens=2, temperature=0)
    assert again.usage.cached_tokens >= prompt_tokens - 1, again.usage
    wait_idle(limited.client, 30)


# ------------------------------------------------------------------------------ chat

def _turn(session, content: str, cancel_after: int | None = None, **sampling):
    chunks, end = [], None
    for msg in session.send(content, **sampling):
        kind = msg.WhichOneof("msg")
        assert kind in ("chunk", "end"), msg
        if kind == "chunk":
            chunks.append(msg.chunk)
            if cancel_after is not None and len(chunks) == cancel_after:
                session.cancel()
        else:
            end = msg.end
    assert end is not None, "the turn ended without a TurnEnd"
    return chunks, end


def test_chat_two_turns_then_cancel(limited):
    session = limited.client.chat(max_new_tokens=32, temperature=0)
    try:
        assert session.session_id
        chunks1, end1 = _turn(session, "Write a Python function add(a, b) that returns their sum.")
        assert end1.turn == 1 and all(c.turn == 1 for c in chunks1)
        assert end1.text.strip() and "".join(c.text for c in chunks1) == end1.text
        assert end1.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
        assert "add" in end1.text or "def" in end1.text, end1.text

        chunks2, end2 = _turn(session, "Now write one that multiplies them.")
        assert end2.turn == 2 and end2.text.strip() and "".join(c.text for c in chunks2) == end2.text
        # the second turn's prompt carries the whole first turn, whose KV the prefix cache kept
        assert end2.usage.prompt_tokens >= end1.usage.prompt_tokens + end1.usage.completion_tokens
        assert end2.usage.cached_tokens >= end1.usage.prompt_tokens, end2.usage

        long_question = "Explain in great detail, step by step, how Python's garbage collector handles reference cycles."
        chunks3, end3 = _turn(session, long_question, cancel_after=2, max_new_tokens=300, ignore_eos=True)
        assert end3.turn == 3 and end3.finish_reason == pb.FINISH_REASON_ABORTED
        assert 2 <= end3.usage.completion_tokens < 300

        # the cancelled turn leaves no trace: the next prompt is shorter than the cancelled one's
        _, end4 = _turn(session, "Thanks!", max_new_tokens=2)
        assert end4.turn == 4 and end4.finish_reason != pb.FINISH_REASON_ABORTED
        assert end4.usage.prompt_tokens < end3.usage.prompt_tokens

        # per-turn errors come back in-band and leave the session usable
        replies = list(session.send("word " * MAX_INPUT))
        assert [m.WhichOneof("msg") for m in replies] == ["error"], replies
        assert replies[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "max_input_length" in replies[0].error.message
        _, end6 = _turn(session, "Bye.", max_new_tokens=2)
        assert end6.finish_reason != pb.FINISH_REASON_ABORTED and end6.usage.completion_tokens > 0
    finally:
        session.close()
    wait_idle(limited.client, 30)


# ------------------------------------------------------------------------------ worker death

def test_worker_killed_mid_stream_gives_unavailable_then_recovers(single):
    call = long_stream(single, timeout=90)
    _read_some(call, 2)
    single.kill_worker()
    t0 = time.monotonic()
    err = rpc_error(lambda: list(call))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    assert err.details()
    assert time.monotonic() - t0 < 30
    # while the worker is down: health says so, and new requests fail fast with UNAVAILABLE
    wait_for(lambda: health_status(single.address) == "NOT_SERVING", 10, "the scheduler to report NOT_SERVING")
    err = rpc_error(lambda: single.client.stub.Generate(generate_request(FIB, max_new_tokens=2), timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # a new worker on the same port: the scheduler reconnects by itself
    single.start_worker()
    single.wait_serving(120)
    reply = single.client.generate(FIB, max_new_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4
    wait_idle(single.client, 30)


def test_worker_killed_while_idle_then_restarted_serves_next_request(single):
    """A worker that dies (and is replaced) while no request runs must not fail the next request
    once the group reports SERVING again."""
    wait_idle(single.client)
    single.kill_worker()
    single.start_worker()
    wait_for(lambda: health_status(single.worker_address) == "SERVING", 120, "the new worker to load")
    single.wait_serving(120)
    reply = single.client.generate(FIB, max_new_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4


def test_worker_killed_under_n_completions_fails_the_request_then_recovers(limited):
    """n = 3: the worker's death fails all three completions (the RPC ends with UNAVAILABLE),
    the request id is forgotten, and no KV slot leaks."""
    wait_idle(limited.client)
    call = limited.client.stub.GenerateStream(
        generate_request(FIB, "n-killed", max_new_tokens=200, temperature=0.7, seed=1, ignore_eos=True, n=3),
        timeout=90)
    _read_some(call, 2)
    limited.kill_worker()
    err = rpc_error(lambda: list(call))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    wait_for(lambda: health_status(limited.address) == "NOT_SERVING", 10, "the scheduler to report NOT_SERVING")
    limited.start_worker()
    limited.wait_serving(120)
    assert limited.client.abort("n-killed") == [], "no completion of the failed request is left in flight"
    wait_idle(limited.client, 30)
    reply = limited.client.generate(FIB, max_new_tokens=3, temperature=0.7, seed=1, n=3)
    assert [len(c.token_ids) for c in reply.completions] == [3, 3, 3]
    wait_idle(limited.client, 30)


def test_n_completions_beyond_the_waiting_queue_are_resource_exhausted(single):
    """max_reqs 1: the queue has room for one of two completions. The request fails at once,
    whatever the engine is doing, and neither completion is queued (all n or none)."""
    wait_idle(single.client)
    err = rpc_error(lambda: single.client.generate(FIB, max_new_tokens=50, n=2, ignore_eos=True))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_reqs" in err.details()
    wait_idle(single.client, 30)


# ------------------------------------------------------------------------------ engine death
# (last: it ends the `single` group's scheduler)

def test_engine_process_killed_fails_streams_and_scheduler_exits(single):
    """The engine runs in a child process of the scheduler. If it dies, in-flight streams end
    with UNAVAILABLE at once and the scheduler exits non-zero for its supervisor to restart,
    leaving no process behind (checked by the group's stop())."""
    import psutil

    call = long_stream(single, timeout=90)
    _read_some(call, 2)
    children = psutil.Process(single.scheduler.pid).children()
    engines = [p for p in children if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(engines) == 1, [p.cmdline() for p in children]
    engines[0].kill()
    t0 = time.monotonic()
    err = rpc_error(lambda: list(call))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    assert time.monotonic() - t0 < 30
    assert single.scheduler.wait(timeout=30) == 1
