"""POST /v1/completions: one GenerateRequest per prompt (a list of prompts is a batch, each with
n completions), answered whole or streamed; OpenAI's legacy logprobs columns and echo."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request

from litelang.gateway import formatting as fmt
from litelang.gateway.protocol import CompletionRequest
from litelang.gateway.routes.common import BackendDep, json_reply, request_id, sse_reply
from litelang.gateway.streams import completion_stream, start_streams
from litelang.proto import litelang_pb2 as pb

router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, http: Request, backend: BackendDep):
    model = await backend.check_model(body.model)
    requests = body.generate_requests()
    rid, created = request_id(http, "cmpl"), int(time.time())
    for p, request in enumerate(requests):  # the scheduler's ids, for its Abort and its logs
        request.request_id = rid if len(requests) == 1 else f"{rid}-{p}"
    head = {"id": rid, "object": "text_completion", "created": created, "model": model}
    echoes = [await backend.prompt_text(r) if body.echo else "" for r in requests]
    if body.stream:
        calls, iterators = await start_streams(requests, backend.stub)
        return sse_reply(completion_stream(body, echoes, calls, iterators, head), rid)
    replies = await _gather_replies(backend.stub, requests)
    choices = []
    prompt_tokens = completion_tokens = cached = 0
    for p, (reply, echo) in enumerate(zip(replies, echoes)):
        prompt_tokens += reply.usage.prompt_tokens
        completion_tokens += reply.usage.completion_tokens
        cached += reply.usage.cached_tokens
        for j, c in enumerate(fmt.completions_of(reply)):
            choice = {"index": p * body.n + j, "text": echo + c.text, "logprobs": None,
                      "finish_reason": fmt.finish_reason(c.finish_reason)}
            if body.logprobs is not None:
                choice["logprobs"] = _legacy_logprobs(reply, c, body.echo)
            choices.append(choice)
    return json_reply({**head, "choices": choices, "usage": fmt.usage(prompt_tokens, completion_tokens, cached)}, rid)


async def _gather_replies(stub, requests: list[pb.GenerateRequest]) -> list[pb.GenerateResponse]:
    """Generate each prompt concurrently; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(stub.Generate(r)) for r in requests]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


def _legacy_logprobs(reply: pb.GenerateResponse, c: pb.Completion, echo: bool) -> dict:
    """The completion's columns; with echo, the prompt's tokens first (the first has no score).
    Spelled with the bytes the reply carries beside the ids."""
    ids, spelled, lps, tops = list(c.token_ids), list(c.token_bytes), list(c.logprobs), list(c.top_logprobs)
    if echo:
        ids = list(reply.prompt_token_ids) + ids
        spelled = list(reply.prompt_token_bytes) + spelled
        lps = [None, *reply.prompt_logprobs] + lps
        tops = [None, *reply.prompt_top_logprobs] + tops if tops else []
    return fmt.completion_logprobs(ids, lps, tops, fmt.token_bytes_of(ids, spelled, tops), 0)
