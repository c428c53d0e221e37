"""The OpenAI-compatible HTTP API (FastAPI): /v1/completions, /v1/chat/completions (both with
server-sent-event streams), /v1/models and /health, and vLLM's /tokenize and /detokenize, each a thin translation onto the scheduler's
gRPC API. The gateway holds no model state: it can run anywhere that reaches the scheduler.

Errors keep OpenAI's shape ({"error": {"message", "type", "param", "code"}}) and map gRPC
codes onto HTTP statuses: INVALID_ARGUMENT 400, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503. A
streamed request is checked before the stream starts (its first message is awaited), so a bad
one gets its HTTP status, not a 200 that carries an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from litelang.gateway import formatting as fmt
from litelang.gateway.metrics import HTTPMetrics
from litelang.gateway.protocol import (
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, RequestError, TokenizeRequest,
)
from litelang.gateway.tool_calls import ToolCallStream, parse_tool_calls
from litelang.proto import litelang_pb2 as pb
from litelang.proto import litelang_pb2_grpc

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    @classmethod
    def from_rpc(cls, e: grpc.aio.AioRpcError) -> "HTTPError":
        return cls(HTTP_STATUS.get(e.code(), 500), e.details() or e.code().name, code=e.code().name)


class Backend:
    """The scheduler as the routes see it: one gRPC channel, and the model's limits."""

    def __init__(self, address: str, served_model_name: str = ""):
        self.address, self.served_model_name = address, served_model_name
        self.channel: grpc.aio.Channel | None = None
        self.stub: litelang_pb2_grpc.LitelangStub | None = None
        self._info: pb.ModelInfoResponse | None = None

    async def open(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = litelang_pb2_grpc.LitelangStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def info(self) -> pb.ModelInfoResponse:
        if self._info is None:
            self._info = await self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
        return self._info

    async def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return (await self.info()).model_path.rstrip("/").rsplit("/", 1)[-1]

    async def check_model(self, asked: str) -> str:
        """The served model's name; 404 for any other (an empty `model` means this one)."""
        name = await self.model_name()
        if asked and asked != name:
            raise HTTPError(404, f"The model `{asked}` does not exist (this server serves `{name}`).", "model",
                            "model_not_found")
        return name

    async def token_bytes(self, ids: set[int], known: dict[int, bytes]) -> dict[int, bytes]:
        """`known` with every id of `ids` added (one Detokenize call for the missing ones)."""
        missing = sorted(ids - known.keys())
        if missing:
            reply = await self.stub.Detokenize(pb.DetokenizeRequest(token_ids=missing), timeout=10)
            known.update(zip(missing, reply.token_bytes))
        return known


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


async def _first_then_rest(call) -> AsyncIterator[pb.GenerateStreamChunk]:
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


async def _merge(streams: Sequence[AsyncIterator[pb.GenerateStreamChunk]]
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
                    pending[key] = _joined(pending[key], item) if key in pending else item
            for (i, _), chunk in pending.items():
                yield i, chunk
    finally:
        for t in tasks:
            t.cancel()


def _joined(first: pb.GenerateStreamChunk, then: pb.GenerateStreamChunk) -> pb.GenerateStreamChunk:
    """Two consecutive chunks of one completion as one: text concatenated, tokens and logprobs
    appended, the last one's finish reason, usage and stop string."""
    out = pb.GenerateStreamChunk()
    out.CopyFrom(first)
    out.MergeFrom(then)  # repeated fields append; set scalars and messages take `then`'s
    out.text = first.text + then.text
    return out


async def _start_streams(requests: list[pb.GenerateRequest], stub) -> tuple[list, list]:
    """Open one GenerateStream per request and await each one's first chunk: (calls, iterators).
    On any failure every call is cancelled and the error raised."""
    calls = [stub.GenerateStream(r) for r in requests]
    try:
        iterators = list(await asyncio.gather(*(_first_then_rest(c) for c in calls)))
    except BaseException:
        for c in calls:
            c.cancel()
        raise
    return calls, iterators


def build_app(address: str, served_model_name: str = "", api_key: str = "") -> FastAPI:
    """api_key: when set, every route but /health and /metrics asks for `Authorization: Bearer
    <api_key>`."""
    backend = Backend(address, served_model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.open()
        yield
        await backend.close()

    async def require_api_key(request: Request) -> None:
        if api_key and request.url.path not in ("/health", "/metrics"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                raise HTTPError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                                code="invalid_api_key")

    app = FastAPI(title="litelang OpenAI-compatible API", lifespan=lifespan,
                  dependencies=[Depends(require_api_key)])
    app.state.backend = backend
    registry = CollectorRegistry()

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, e: HTTPError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, e: RequestError):
        return JSONResponse(HTTPError(400, str(e), e.param).body(), status_code=400)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def on_rpc_error(request: Request, e: grpc.aio.AioRpcError):
        err = HTTPError.from_rpc(e)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in p['loc'][1:]) or 'body'}: {p['msg']}" for p in e.errors())
        return JSONResponse(HTTPError(400, f"invalid request: {problems}").body(), status_code=400)

    @app.get("/health")
    async def health():
        stub = health_pb2_grpc.HealthStub(backend.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        return JSONResponse({"status": "ok" if serving else "unavailable"}, status_code=200 if serving else 503)

    @app.get("/v1/models")
    async def models():
        info = await backend.info()
        return {"object": "list", "data": [{
            "id": await backend.model_name(), "object": "model", "created": 0, "owned_by": "litelang",
            "root": info.model_path, "max_model_len": info.max_input_length + info.max_output_length,
        }]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        model = await backend.check_model(body.model)
        requests = body.generate_requests()
        rid, created = _request_id(http, "cmpl"), int(time.time())
        for p, request in enumerate(requests):  # the scheduler's ids, for its Abort and its logs
            request.request_id = rid if len(requests) == 1 else f"{rid}-{p}"
        head = {"id": rid, "object": "text_completion", "created": created, "model": model}
        if body.stream:
            calls, iterators = await _start_streams(requests, backend.stub)
            return StreamingResponse(_completion_stream(backend, body, requests, calls, iterators, head),
                                     media_type="text/event-stream", headers={"X-Request-Id": rid})
        replies = await _gather_replies(backend.stub, requests)
        choices, known = [], {}
        prompt_tokens = completion_tokens = cached = 0
        for p, (request, reply) in enumerate(zip(requests, replies)):
            prompt_tokens += reply.usage.prompt_tokens
            completion_tokens += reply.usage.completion_tokens
            cached += reply.usage.cached_tokens
            echo = await _echo_text(backend, body, request) if body.echo else ""
            for j, c in enumerate(_completions_of(reply)):
                choice = {"index": p * body.n + j, "text": echo + c.text, "logprobs": None,
                          "finish_reason": fmt.finish_reason(c.finish_reason)}
                if body.logprobs is not None:
                    choice["logprobs"] = await _legacy_logprobs(backend, body, reply, c, known)
                choices.append(choice)
        return JSONResponse({**head, "choices": choices, "usage": fmt.usage(prompt_tokens, completion_tokens, cached)},
                            headers={"X-Request-Id": rid})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        model = await backend.check_model(body.model)
        request = body.generate_request((await backend.info()).max_output_length)
        rid, created = _request_id(http, "chatcmpl"), int(time.time())
        request.request_id = rid
        head = {"id": rid, "object": "chat.completion", "created": created, "model": model}
        if body.stream:
            calls, iterators = await _start_streams([request], backend.stub)
            return StreamingResponse(_chat_stream(backend, body, calls, iterators[0], head),
                                     media_type="text/event-stream", headers={"X-Request-Id": rid})
        reply = await backend.stub.Generate(request)
        choices, known = [], {}
        for j, c in enumerate(_completions_of(reply)):
            message, reason = {"role": "assistant", "content": c.text}, fmt.finish_reason(c.finish_reason)
            if body.uses_tools:
                message["content"], calls = parse_tool_calls(c.text, body.tool_names)
                if calls:
                    message["tool_calls"] = calls
                    reason = "tool_calls" if reason == "stop" else reason
            choice = {"index": j, "message": message, "logprobs": None, "finish_reason": reason}
            if body.logprobs:
                await backend.token_bytes(fmt.ids_of(c.token_ids, c.top_logprobs), known)
                choice["logprobs"] = fmt.chat_logprobs(c.token_ids, c.logprobs, c.top_logprobs, known)
            choices.append(choice)
        u = reply.usage
        return JSONResponse({**head, "choices": choices,
                             "usage": fmt.usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens)},
                            headers={"X-Request-Id": rid})

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        await backend.check_model(body.model)
        info = await backend.info()
        reply = await backend.stub.Tokenize(body.litelang(), timeout=30)
        return {"tokens": list(reply.token_ids), "count": len(reply.token_ids),
                "max_model_len": info.max_input_length + info.max_output_length}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        await backend.check_model(body.model)
        reply = await backend.stub.Detokenize(pb.DetokenizeRequest(token_ids=body.tokens), timeout=30)
        return {"prompt": reply.text}

    app.add_middleware(HTTPMetrics, registry=registry, routes={route.path for route in app.routes})
    return app


def _request_id(http: Request, prefix: str) -> str:
    """The caller's X-Request-Id (as vLLM takes it), or a fresh `<prefix>-<hex>`: the response's
    id and the scheduler's, so a gRPC Abort with it ends the request."""
    return http.headers.get("x-request-id") or f"{prefix}-{uuid.uuid4().hex}"


def _completions_of(reply: pb.GenerateResponse) -> list[pb.Completion]:
    if reply.completions:
        return list(reply.completions)
    return [pb.Completion(index=0, text=reply.text, token_ids=reply.token_ids, finish_reason=reply.finish_reason,
                          stop_string=reply.stop_string, logprobs=reply.logprobs, top_logprobs=reply.top_logprobs)]


async def _gather_replies(stub, requests: list[pb.GenerateRequest]) -> list[pb.GenerateResponse]:
    """Generate each prompt concurrently; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(stub.Generate(r)) for r in requests]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


async def _echo_text(backend: Backend, body: CompletionRequest, request: pb.GenerateRequest) -> str:
    if request.WhichOneof("input") == "prompt":
        return request.prompt
    ids = list(request.input_ids.ids)
    return (await backend.stub.Detokenize(pb.DetokenizeRequest(token_ids=ids, skip_special_tokens=False))).text


async def _legacy_logprobs(backend: Backend, body: CompletionRequest, reply: pb.GenerateResponse,
                           c: pb.Completion, known: dict[int, bytes]) -> dict:
    """The completion's columns; with echo, the prompt's tokens first (the first has no score)."""
    ids, lps, tops = list(c.token_ids), list(c.logprobs), list(c.top_logprobs) if body.logprobs else [None] * len(c.token_ids)
    if body.echo:
        prompt_ids = list(reply.prompt_token_ids)
        prompt_tops = [None] + (list(reply.prompt_top_logprobs) if body.logprobs else [None] * len(reply.prompt_logprobs))
        ids, lps, tops = prompt_ids + ids, [None, *reply.prompt_logprobs] + lps, prompt_tops + tops
    await backend.token_bytes(fmt.ids_of(ids, tops), known)
    return fmt.completion_logprobs(ids, lps, tops, known, 0)


async def _event_stream(calls: list, iterators: list, n: int, head: dict, include_usage: bool,
                        choices_for) -> AsyncIterator[str]:
    """The SSE body both endpoints share: each chunk of prompt p's completion j becomes the
    entries `await choices_for(p, p * n + j, chunk)` returns, one event each; then the usage
    event if asked for, and [DONE]. An error after the start is sent as an error event; leaving
    (the client went away) cancels the calls, so the scheduler aborts what is left."""
    prompt_tokens = completion_tokens = cached_tokens = 0
    try:
        async for p, chunk in _merge(iterators):
            if chunk.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                completion_tokens += chunk.usage.completion_tokens
                if chunk.index == 0:  # the prompt counts once, however many completions share it
                    prompt_tokens += chunk.usage.prompt_tokens
                    cached_tokens += chunk.usage.cached_tokens
            for choice in await choices_for(p, p * n + chunk.index, chunk):
                yield _sse({**head, "choices": [choice]})
        if include_usage:
            yield _sse({**head, "choices": [], "usage": fmt.usage(prompt_tokens, completion_tokens, cached_tokens)})
    except grpc.aio.AioRpcError as e:
        yield _sse(HTTPError.from_rpc(e).body())
    finally:
        for c in calls:
            c.cancel()
    yield _sse("[DONE]")


def _completion_stream(backend: Backend, body: CompletionRequest, requests: list[pb.GenerateRequest],
                       calls: list, iterators: list, head: dict) -> AsyncIterator[str]:
    known: dict[int, bytes] = {}
    offsets: dict[int, int] = {}  # choice index -> characters sent so far (legacy text_offset)

    async def choices_for(p: int, index: int, chunk: pb.GenerateStreamChunk) -> list[dict]:
        text, logprobs = chunk.text, None
        if index not in offsets:
            offsets[index] = 0
            if body.echo:
                text = await _echo_text(backend, body, requests[p]) + text
        if body.logprobs is not None and chunk.token_ids:
            tops = list(chunk.top_logprobs) if body.logprobs else [None] * len(chunk.token_ids)
            await backend.token_bytes(fmt.ids_of(chunk.token_ids, tops), known)
            logprobs = fmt.completion_logprobs(chunk.token_ids, chunk.logprobs, tops, known,
                                               offsets[index] + len(text) - len(chunk.text))
        offsets[index] += len(text)
        reason = fmt.finish_reason(chunk.finish_reason)
        if not (text or logprobs or reason):
            return []
        return [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}]

    return _event_stream(calls, iterators, body.n, head, body.include_usage, choices_for)


def _chat_stream(backend: Backend, body: ChatCompletionRequest, calls: list, chunks: AsyncIterator,
                 head: dict) -> AsyncIterator[str]:
    known: dict[int, bytes] = {}
    tools: dict[int, ToolCallStream] = {}  # per choice, when the reply is parsed for tool calls

    async def choices_for(p: int, index: int, chunk: pb.GenerateStreamChunk) -> list[dict]:
        out = []
        if index not in tools:  # OpenAI's first delta of a choice names the role
            tools[index] = ToolCallStream(body.tool_names)
            out.append({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None})
        logprobs = None
        if body.logprobs and chunk.token_ids:
            await backend.token_bytes(fmt.ids_of(chunk.token_ids, chunk.top_logprobs), known)
            logprobs = fmt.chat_logprobs(chunk.token_ids, chunk.logprobs, chunk.top_logprobs, known)
        reason = fmt.finish_reason(chunk.finish_reason)
        text, calls = chunk.text, []
        if body.uses_tools:
            text = tools[index].add(text)
            if reason is not None:
                rest, calls = tools[index].finish()
                text += rest
        if text or logprobs or (reason and not calls):
            out.append({"index": index, "delta": {"content": text} if text else {}, "logprobs": logprobs,
                        "finish_reason": None if calls else reason})
        if calls:
            out.append({"index": index, "delta": {"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]},
                        "logprobs": None, "finish_reason": "tool_calls" if reason == "stop" else reason})
        return out

    head = {**head, "object": "chat.completion.chunk"}
    return _event_stream(calls, [chunks], body.n, head, body.include_usage, choices_for)
