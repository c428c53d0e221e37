"""The server-sent-event bodies of streamed completions and chat completions: each scheduler
stream's first chunk awaited before the response starts (so a bad request gets its HTTP
status), the streams of a request merged (and, when the gateway falls behind, their waiting
chunks joined), one `data:` event per choice delta, the usage event, `[DONE]`. Leaving the
generator (the client went away) cancels the gRPC calls, so the scheduler aborts them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import grpc

from litelang.gateway import formatting as fmt
from litelang.gateway.backend import HTTPError
from litelang.gateway.forced_tools import RequiredCalls
from litelang.gateway.protocol import ChatCompletionRequest, CompletionRequest
from litelang.gateway.tool_calls import ToolCallStream, new_call
from litelang.proto import litelang_pb2 as pb


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


async def first_then_rest(call) -> AsyncIterator[pb.GenerateStreamChunk]:
    """Await a stream's first chunk now (so its errors come before the HTTP response starts);
    return an iterator over all of them."""
    it = call.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:  # the scheduler always ends a stream with a final chunk
        raise HTTPError(502, "the scheduler ended the stream without a reply") from None

    async def chain():
        yield first
        async for chunk in it:
            yield chunk

    return chain()


async def merge(streams: Sequence[AsyncIterator[pb.GenerateStreamChunk]]
                 ) -> AsyncIterator[tuple[int, pb.GenerateStreamChunk]]:
    """(stream index, chunk) from several chunk streams as chunks arrive. Chunks that pile up
    while the consumer is busy are joined per completion, so a gateway that falls behind sends
    fewer, larger events instead of falling further behind (as the scheduler's streams do)."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                queue.put_nowait((i, item))
            queue.put_nowait((i, done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            arrived = [await queue.get()]
            while not queue.empty():
                arrived.append(queue.get_nowait())
            pending: dict[tuple[int, int], pb.GenerateStreamChunk] = {}  # in order of arrival
            for i, item in arrived:
                if item is done:
                    left -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    key = (i, item.index)
                    pending[key] = joined(pending[key], item) if key in pending else item
            for (i, _), chunk in pending.items():
                yield i, chunk
    finally:
        for t in tasks:
            t.cancel()


def joined(first: pb.GenerateStreamChunk, then: pb.GenerateStreamChunk) -> pb.GenerateStreamChunk:
    """Two consecutive chunks of one completion as one: text concatenated, tokens and logprobs
    appended, the last one's finish reason, usage and stop string."""
    out = pb.GenerateStreamChunk()
    out.CopyFrom(first)
    out.MergeFrom(then)  # repeated fields append; set scalars and messages take `then`'s
    out.text = first.text + then.text
    return out


async def start_streams(requests: list[pb.GenerateRequest], stub) -> tuple[list, list]:
    """Open one GenerateStream per request and await each one's first chunk: (calls, iterators).
    On any failure every call is cancelled and the error raised."""
    calls = [stub.GenerateStream(r) for r in requests]
    try:
        iterators = list(await asyncio.gather(*(first_then_rest(c) for c in calls)))
    except BaseException:
        for c in calls:
            c.cancel()
        raise
    return calls, iterators


async def event_stream(calls: list, iterators: list, n: int, head: dict, include_usage: bool,
                        choices_for) -> AsyncIterator[str]:
    """The SSE body both endpoints share: each chunk of prompt p's completion j becomes the
    entries `await choices_for(p, p * n + j, chunk)` returns, one event each; then the usage
    event if asked for, and [DONE]. An error after the start is sent as an error event; leaving
    (the client went away) cancels the calls, so the scheduler aborts what is left."""
    prompt_tokens = completion_tokens = cached_tokens = 0
    try:
        async for p, chunk in merge(iterators):
            if chunk.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                completion_tokens += chunk.usage.completion_tokens
                if chunk.index == 0:  # the prompt counts once, however many completions share it
                    prompt_tokens += chunk.usage.prompt_tokens
                    cached_tokens += chunk.usage.cached_tokens
            for choice in await choices_for(p, p * n + chunk.index, chunk):
                yield sse({**head, "choices": [choice]})
        if include_usage:
            yield sse({**head, "choices": [], "usage": fmt.usage(prompt_tokens, completion_tokens, cached_tokens)})
    except grpc.aio.AioRpcError as e:
        yield sse(HTTPError.from_rpc(e).body())
    finally:
        for c in calls:
            c.cancel()
    yield sse("[DONE]")


def completion_stream(body: CompletionRequest, echoes: Sequence[str], calls: list, iterators: list,
                      head: dict) -> AsyncIterator[str]:
    """echoes: each prompt's text, put before its completions' first delta (with echo; else "").
    Logprobs are spelled with the bytes each chunk carries: no call to the scheduler mid-stream."""
    offsets: dict[int, int] = {}  # choice index -> characters sent so far (legacy text_offset)

    async def choices_for(p: int, index: int, chunk: pb.GenerateStreamChunk) -> list[dict]:
        text, logprobs = chunk.text, None
        if index not in offsets:
            offsets[index] = 0
            text = echoes[p] + text
        if body.logprobs is not None and chunk.token_ids:
            known = fmt.token_bytes_of(chunk.token_ids, chunk.token_bytes, chunk.top_logprobs)
            logprobs = fmt.completion_logprobs(chunk.token_ids, chunk.logprobs, chunk.top_logprobs, known,
                                               offsets[index] + len(text) - len(chunk.text))
        offsets[index] += len(text)
        reason = fmt.finish_reason(chunk.finish_reason)
        if not (text or logprobs or reason):
            return []
        return [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}]

    return event_stream(calls, iterators, body.n, head, body.include_usage, choices_for)


def chat_stream(body: ChatCompletionRequest, calls: list, chunks: AsyncIterator, head: dict) -> AsyncIterator[str]:
    """The chat deltas (content, or tool calls as they are read or forced), logprobs spelled with
    the bytes each chunk carries."""
    tools: dict[int, ToolCallStream] = {}  # per choice, when the reply is parsed for tool calls
    opened: set[int] = set()  # choices whose named forced call has been opened
    required: dict[int, RequiredCalls] = {}  # per choice, a "required" reply as it is read

    async def choices_for(p: int, index: int, chunk: pb.GenerateStreamChunk) -> list[dict]:
        out = []
        if index not in tools:  # OpenAI's first delta of a choice names the role
            tools[index] = ToolCallStream(body.tool_names, body.one_call)
            out.append({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None})
        logprobs = None
        if body.logprobs and chunk.token_ids:
            known = fmt.token_bytes_of(chunk.token_ids, chunk.token_bytes, chunk.top_logprobs)
            logprobs = fmt.chat_logprobs(chunk.token_ids, chunk.logprobs, chunk.top_logprobs, known)
        reason = fmt.finish_reason(chunk.finish_reason)
        text, calls = chunk.text, []
        if body.forced_name is not None and body.forces_call:  # the text is the call's arguments, streamed as
            # they come (as OpenAI and vLLM do): the first delta names the call, later ones add arguments
            if index not in opened:
                opened.add(index)
                first = {"index": 0, **new_call(body.forced_name, text)}
                out.append({"index": index, "delta": {"tool_calls": [first]}, "logprobs": logprobs, "finish_reason": None})
            elif text or logprobs:
                out.append({"index": index, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": text}}]},
                            "logprobs": logprobs, "finish_reason": None})
            if reason is not None:
                out.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason})
            return out
        if body.forces_call:  # "required": each call streams as the JSON array is written; no content
            reader = required.setdefault(index, RequiredCalls())
            deltas = reader.add(text)
            text = ""
            if deltas:
                out.append({"index": index, "delta": {"tool_calls": [{"index": k, **d} for k, d in deltas]},
                            "logprobs": logprobs, "finish_reason": None})
                logprobs = None
            if reason is not None:
                del required[index]
                if not reader.calls:  # no call read: the text as content, as the unary reply gives it
                    text = reader.text
                elif reason == "stop":
                    reason = "tool_calls"
        elif body.uses_tools:
            text = tools[index].add(text)
            if reason is not None:
                rest, calls = tools[index].finish()
                text += rest
                reason = "tool_calls" if calls and reason == "stop" else reason
        if text or logprobs or (reason and not calls):
            out.append({"index": index, "delta": {"content": text} if text else {}, "logprobs": logprobs,
                        "finish_reason": None if calls else reason})
        if calls:
            out.append({"index": index, "delta": {"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]},
                        "logprobs": None, "finish_reason": reason})
        return out

    head = {**head, "object": "chat.completion.chunk"}
    return event_stream(calls, [chunks], body.n, head, body.include_usage, choices_for)
