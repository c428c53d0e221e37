"""The OpenAI-compatible HTTP API (FastAPI): /v1/completions and /v1/chat/completions (both
streamed too: streams.py), /v1/responses (text and function tools: responses.py), /v1/models,
/health (and vLLM's /ping), /version, /metrics, and vLLM's /tokenize and /detokenize, each a thin
translation onto the scheduler's gRPC API (backend.py). The gateway holds no model state: it can
run anywhere that reaches the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import litelang
from litelang.gateway import formatting as fmt
from litelang.gateway.backend import Backend, HTTPError
from litelang.gateway.forced_tools import forced_reply
from litelang.gateway.metrics import HTTPMetrics
from litelang.gateway.protocol import (
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, RequestError, TokenizeRequest,
)
from litelang.gateway.responses import ResponsesRequest, finished_response, response_stream
from litelang.gateway.streams import chat_stream, completion_stream, start_streams
from litelang.gateway.tool_calls import parse_tool_calls
from litelang.proto import litelang_pb2 as pb


def build_app(address: str, served_model_name: str = "", api_key: str = "",
              allowed_origins: list[str] | None = None) -> FastAPI:
    """api_key: when set, every route but /health and /metrics asks for `Authorization: Bearer
    <api_key>`. allowed_origins: the browser origins CORS lets call the API (as vLLM's default,
    any: the key is a header, not a cookie)."""
    backend = Backend(address, served_model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.open()
        yield
        await backend.close()

    async def require_api_key(request: Request) -> None:
        if api_key and request.url.path not in OPEN_PATHS and request.method != "OPTIONS":
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
    @app.get("/ping")  # vLLM's name for it too (SageMaker's probe), GET or POST
    @app.post("/ping")
    async def health():
        stub = health_pb2_grpc.HealthStub(backend.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        return JSONResponse({"status": "ok" if serving else "unavailable"}, status_code=200 if serving else 503)

    @app.get("/version")
    async def version():
        return {"version": litelang.__version__}

    async def model_card() -> dict:
        info = await backend.info()
        return {"id": await backend.model_name(), "object": "model", "created": 0, "owned_by": "litelang",
                "root": info.model_path, "max_model_len": info.max_input_length + info.max_output_length}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [await model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        await backend.check_model(model or "-")
        return await model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        model = await backend.check_model(body.model)
        requests = body.generate_requests()
        rid, created = _request_id(http, "cmpl"), int(time.time())
        for p, request in enumerate(requests):  # the scheduler's ids, for its Abort and its logs
            request.request_id = rid if len(requests) == 1 else f"{rid}-{p}"
        head = {"id": rid, "object": "text_completion", "created": created, "model": model}
        if body.stream:
            calls, iterators = await start_streams(requests, backend.stub)
            return StreamingResponse(completion_stream(backend, body, requests, calls, iterators, head),
                                     media_type="text/event-stream", headers={"X-Request-Id": rid})
        replies = await _gather_replies(backend.stub, requests)
        choices, known = [], {}
        prompt_tokens = completion_tokens = cached = 0
        for p, (request, reply) in enumerate(zip(requests, replies)):
            prompt_tokens += reply.usage.prompt_tokens
            completion_tokens += reply.usage.completion_tokens
            cached += reply.usage.cached_tokens
            echo = await backend.prompt_text(request) if body.echo else ""
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
            calls, iterators = await start_streams([request], backend.stub)
            return StreamingResponse(chat_stream(backend, body, calls, iterators[0], head),
                                     media_type="text/event-stream", headers={"X-Request-Id": rid})
        reply = await backend.stub.Generate(request)
        choices, known = [], {}
        for j, c in enumerate(_completions_of(reply)):
            message, reason = {"role": "assistant", "content": c.text}, fmt.finish_reason(c.finish_reason)
            if body.forces_call:
                message["content"], calls, reason = forced_reply(c.text, reason, body.forced_name)
            elif body.uses_tools:
                message["content"], calls = parse_tool_calls(c.text, body.tool_names, body.one_call)
                reason = "tool_calls" if calls and reason == "stop" else reason
            else:
                calls = []
            if calls:
                message["tool_calls"] = calls
            choice = {"index": j, "message": message, "logprobs": None, "finish_reason": reason}
            if body.logprobs:
                await backend.token_bytes(fmt.ids_of(c.token_ids, c.top_logprobs), known)
                choice["logprobs"] = fmt.chat_logprobs(c.token_ids, c.logprobs, c.top_logprobs, known)
            choices.append(choice)
        u = reply.usage
        return JSONResponse({**head, "choices": choices,
                             "usage": fmt.usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens)},
                            headers={"X-Request-Id": rid})

    @app.post("/v1/responses")
    async def responses(body: ResponsesRequest, http: Request):
        model = await backend.check_model(body.model)
        request = body.generate_request((await backend.info()).max_output_length)
        rid = request.request_id = _request_id(http, "resp", "_")
        head = {"id": rid, "created_at": int(time.time()), "model": model}
        if body.stream:
            calls, iterators = await start_streams([request], backend.stub)
            return StreamingResponse(response_stream(body, calls, iterators[0], head),
                                     media_type="text/event-stream", headers={"X-Request-Id": rid})
        reply = await backend.stub.Generate(request)
        [c] = _completions_of(reply)
        return JSONResponse(finished_response(body, head, c.text, c.finish_reason, reply.usage),
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
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=allowed_origins, allow_methods=["*"], allow_headers=["*"])
    return app


# routes left open when an API key is set: probes, scrapers, and what a deployment checks first
OPEN_PATHS = ("/health", "/ping", "/metrics", "/version")


def _request_id(http: Request, prefix: str, sep: str = "-") -> str:
    """The caller's X-Request-Id (as vLLM takes it), or a fresh `<prefix>-<hex>` (a response's:
    `resp_<hex>`, as OpenAI spells it): the response's id and the scheduler's, so a gRPC Abort
    with it ends the request."""
    return http.headers.get("x-request-id") or f"{prefix}{sep}{uuid.uuid4().hex}"


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


async def _legacy_logprobs(backend: Backend, body: CompletionRequest, reply: pb.GenerateResponse,
                           c: pb.Completion, known: dict[int, bytes]) -> dict:
    """The completion's columns; with echo, the prompt's tokens first (the first has no score)."""
    ids, lps, tops = list(c.token_ids), list(c.logprobs), list(c.top_logprobs)
    if body.echo:
        ids = list(reply.prompt_token_ids) + ids
        lps = [None, *reply.prompt_logprobs] + lps
        tops = [None, *reply.prompt_top_logprobs] + tops if tops else []
    await backend.token_bytes(fmt.ids_of(ids, tops), known)
    return fmt.completion_logprobs(ids, lps, tops, known, 0)
