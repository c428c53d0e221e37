"""POST /v1/responses: OpenAI's Responses API over the chat path, answered whole or as its typed
SSE events (the body, its items and its events: gateway/responses.py)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from litelang.gateway import formatting as fmt
from litelang.gateway.responses import ResponsesRequest, finished_response, response_stream
from litelang.gateway.routes.common import BackendDep, json_reply, request_id, sse_reply
from litelang.gateway.streams import start_streams

router = APIRouter()


@router.post("/v1/responses")
async def responses(body: ResponsesRequest, http: Request, backend: BackendDep):
    model = await backend.check_model(body.model)
    request = body.generate_request((await backend.info()).max_output_length)
    rid = request.request_id = request_id(http, "resp", "_")
    head = {"id": rid, "created_at": int(time.time()), "model": model}
    if body.stream:
        calls, iterators = await start_streams([request], backend.stub)
        return sse_reply(response_stream(body, calls, iterators[0], head), rid)
    reply = await backend.stub.Generate(request)
    [c] = fmt.completions_of(reply)
    return json_reply(finished_response(body, head, c.text, c.finish_reason, reply.usage), rid)
