"""POST /v1/chat/completions: the messages (and offered tools) as one GenerateRequest rendered
with the chat template, answered whole or streamed; tool calls read from the reply, or the reply
forced to be a call (tool_choice "required" or a named function)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from litelang.gateway import formatting as fmt
from litelang.gateway.forced_tools import forced_reply
from litelang.gateway.protocol import ChatCompletionRequest
from litelang.gateway.routes.common import BackendDep, json_reply, request_id, sse_reply
from litelang.gateway.streams import chat_stream, start_streams
from litelang.gateway.tool_calls import parse_tool_calls
from litelang.proto import litelang_pb2 as pb

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, http: Request, backend: BackendDep):
    model = await backend.check_model(body.model)
    request = body.generate_request((await backend.info()).max_output_length)
    rid, created = request_id(http, "chatcmpl"), int(time.time())
    request.request_id = rid
    head = {"id": rid, "object": "chat.completion", "created": created, "model": model}
    if body.stream:
        calls, iterators = await start_streams([request], backend.stub)
        return sse_reply(chat_stream(body, calls, iterators[0], head), rid)
    reply = await backend.stub.Generate(request)
    choices = [_choice(body, j, c) for j, c in enumerate(fmt.completions_of(reply))]
    u = reply.usage
    return json_reply({**head, "choices": choices,
                       "usage": fmt.usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens)}, rid)


def _choice(body: ChatCompletionRequest, index: int, c: pb.Completion) -> dict:
    """One completion as a choice: its text as content, or the tool calls read from it."""
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
    choice = {"index": index, "message": message, "logprobs": None, "finish_reason": reason}
    if body.logprobs:
        known = fmt.token_bytes_of(c.token_ids, c.token_bytes, c.top_logprobs)
        choice["logprobs"] = fmt.chat_logprobs(c.token_ids, c.logprobs, c.top_logprobs, known)
    return choice
