"""OpenAI's Responses API (POST /v1/responses), its text-only core: the request body (input
items rendered through the chat template, as chat completions are), the response object, and
its typed server-sent events. litelang keeps no state between requests, so what needs stored
responses (previous_response_id, background) and what is not text (tools, images, files) is
refused with a 400 naming the field, never ignored."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field

from litelang.client.api import chat_messages
from litelang.gateway import formatting as fmt
from litelang.gateway.backend import HTTPError
from litelang.gateway.protocol import RequestError, _Sampling
from litelang.gateway.streams import merge
from litelang.proto import litelang_pb2 as pb

ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}  # -> the template's
TEXT_PARTS = ("input_text", "output_text")
# fields that ask for what litelang cannot do: refused whenever given a value other than an empty one
REFUSED = {
    "previous_response_id": "litelang keeps no response state (store is accepted and ignored), so "
                            "previous_response_id cannot be looked up: send the whole conversation in `input`",
    "conversation": "litelang keeps no conversation state: send the whole conversation in `input`",
    "background": "background responses need stored response state, which litelang does not keep",
    "tools": "tools are not supported on /v1/responses (text only): use /v1/chat/completions for function calling",
    "prompt": "prompt templates are not supported: send the text in `instructions` and `input`",
    "include": "include is not supported: a response carries its output text and usage only",
    "top_logprobs": "logprobs are not supported on /v1/responses: use /v1/chat/completions",
    "reasoning": "reasoning options are not supported: the model has no separate reasoning output",
}


class TextFormat(BaseModel):
    """`text.format`: text, json_object, or json_schema {name, schema, strict} (flat, unlike chat's
    response_format)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: str = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None

    def output_format(self) -> pb.StructuredOutput | None:
        """The scheduler's format, as chat's response_format builds it."""
        if self.type == "json_object":
            return pb.StructuredOutput(json_object=True)
        if self.type == "json_schema":
            if not isinstance(self.schema_, dict):
                raise RequestError("text.format json_schema needs `schema`, a JSON Schema object", "text.format.schema")
            return pb.StructuredOutput(json_schema=json.dumps(self.schema_))
        if self.type != "text":
            raise RequestError(f"text.format.type must be text, json_object or json_schema (got {self.type!r})",
                               "text.format.type")
        return None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(_Sampling):
    """POST /v1/responses. The sampling fields (and vLLM's extras) are chat's; the rest is the
    Responses API's own."""

    field_names: ClassVar[dict[str, str]] = {**_Sampling.field_names, "max_new_tokens": "max_output_tokens"}

    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: int | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None  # accepted; nothing is stored
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    truncation: str | None = None
    # refused when given (REFUSED)
    previous_response_id: str | None = None
    conversation: str | dict | None = None
    background: bool | None = None
    tools: list | None = None
    prompt: dict | None = None
    include: list | None = None
    top_logprobs: int | None = None
    reasoning: dict | None = None

    def refuse_unsupported(self) -> None:
        for name, why in REFUSED.items():
            if getattr(self, name) not in (None, False, [], {}):
                raise RequestError(why, name)
        if self.tool_choice not in (None, "auto", "none"):
            raise RequestError("tool_choice needs tools, which /v1/responses does not support", "tool_choice")
        if self.truncation not in (None, "disabled"):
            raise RequestError("truncation must be disabled: a too-long input is refused, not cut", "truncation")
        if self.n != 1:
            raise RequestError("a response has one output: n must be 1", "n")

    def messages(self) -> list[dict]:
        """The conversation as chat messages: instructions first (as a system message), then the input."""
        out = [{"role": "system", "content": self.instructions}] if self.instructions is not None else []
        if isinstance(self.input, str):
            return out + [{"role": "user", "content": self.input}]
        if not self.input:
            raise RequestError("input is empty", "input")
        return out + [input_message(item, f"input[{i}]") for i, item in enumerate(self.input)]

    def generate_request(self, max_output_length: int) -> pb.GenerateRequest:
        self.refuse_unsupported()
        limit = max_output_length if self.max_output_tokens is None else self.max_output_tokens
        text_format = self.text.format.output_format() if self.text else None
        params = self.with_format(self.sampling(limit, False, 0), text_format)
        return pb.GenerateRequest(messages=chat_messages(self.messages()), sampling=params, priority=self.priority)

    def echoed(self) -> dict:
        """The request's settings as a response object repeats them (OpenAI's defaults when unset)."""
        text = self.text.model_dump(by_alias=True, exclude_none=True) if self.text else {"format": {"type": "text"}}
        return {"instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
                "temperature": 1.0 if self.temperature is None else self.temperature,
                "top_p": 1.0 if self.top_p is None else self.top_p, "metadata": self.metadata or {}, "text": text,
                "tools": [], "tool_choice": self.tool_choice or "auto",
                "parallel_tool_calls": True if self.parallel_tool_calls is None else self.parallel_tool_calls,
                "truncation": "disabled", "previous_response_id": None, "reasoning": None, "store": False,
                "user": self.user}


def input_message(item: Any, where: str) -> dict:
    """One input item (a message: {"role", "content"}, `"type": "message"` or none) as a chat
    message; any other item is refused with its place (`input[2].type`, ...) as the param."""
    if not isinstance(item, dict):
        raise RequestError(f"{where} must be a message object {{\"role\", \"content\"}}", where)
    if item.get("type", "message") != "message":
        raise RequestError(f"{where}: input items of type {item['type']!r} are not supported (text messages only)",
                           f"{where}.type")
    role = item.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})", f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": ROLES[role], "content": content}
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of text parts", f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.content[{j}]: only text parts ({', '.join(TEXT_PARTS)} with `text`) are "
                               f"supported (got {kind!r})", f"{where}.content[{j}].type")
        texts.append(part["text"])
    return {"role": ROLES[role], "content": "".join(texts)}


# ---- the response object

def outcome(reason: str | None) -> tuple[str, dict | None]:
    """A finish reason as the response's status and incomplete_details: "length" is OpenAI's
    incomplete (max_output_tokens); an aborted request (gRPC Abort) is cancelled."""
    if reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if reason == "abort":
        return "cancelled", None
    return "completed", None


def usage(u: pb.Usage) -> dict:
    """OpenAI's usage block (the SDK's model asks for cache_write_tokens too: litelang's prefix
    cache is written without being billed, so 0)."""
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": []}


def message_item(message_id: str, status: str, content: list[dict]) -> dict:
    return {"type": "message", "id": message_id, "status": status, "role": "assistant", "content": content}


def response_object(body: ResponsesRequest, head: dict, status: str, output: list[dict],
                    incomplete: dict | None = None, used: dict | None = None) -> dict:
    """head: id, created_at and model. The fields the SDK's Response model asks for are all here."""
    return {"id": head["id"], "object": "response", "created_at": head["created_at"], "status": status,
            "error": None, "incomplete_details": incomplete, "model": head["model"], "output": output,
            **body.echoed(), "usage": used}


def finished_response(body: ResponsesRequest, head: dict, text: str, finish_reason: int, u: pb.Usage) -> dict:
    """The whole response of a finished generation: one assistant message with the text."""
    status, incomplete = outcome(fmt.finish_reason(finish_reason))
    item = message_item(message_id(head), "completed" if status == "completed" else "incomplete", [text_part(text)])
    return response_object(body, head, status, [item], incomplete, usage(u))


def message_id(head: dict) -> str:
    """The output message's id, the response's own after its prefix: stable across a stream's events."""
    return "msg_" + head["id"].removeprefix("resp_")


# ---- the stream

def event(kind: str, seq: itertools.count, **fields) -> str:
    """One typed event: `event:` the type, `data:` the JSON with `type` and `sequence_number`."""
    data = {"type": kind, "sequence_number": next(seq), **fields}
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def response_stream(body: ResponsesRequest, calls: list, chunks: AsyncIterator[pb.GenerateStreamChunk],
                          head: dict) -> AsyncIterator[str]:
    """The Responses API's events for one generation: created, in_progress, the message item and
    its text part opened, a delta per chunk of text, everything closed, then completed (or
    incomplete) with the whole response. An error after the start is an `error` event; leaving
    (the client went away) cancels the call, so the scheduler aborts it."""
    seq, mid, text = itertools.count(), message_id(head), ""
    where = {"item_id": mid, "output_index": 0, "content_index": 0}
    try:
        yield event("response.created", seq, response=response_object(body, head, "in_progress", []))
        yield event("response.in_progress", seq, response=response_object(body, head, "in_progress", []))
        yield event("response.output_item.added", seq, output_index=0, item=message_item(mid, "in_progress", []))
        yield event("response.content_part.added", seq, **where, part=text_part(""))
        last = None
        async for _, chunk in merge([chunks]):
            if chunk.text:
                text += chunk.text
                yield event("response.output_text.delta", seq, **where, delta=chunk.text, logprobs=[])
            if chunk.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                last = chunk
        if last is None:
            raise HTTPError(502, "the scheduler ended the stream without a finish reason")
        status, incomplete = outcome(fmt.finish_reason(last.finish_reason))
        item = message_item(mid, "completed" if status == "completed" else "incomplete", [text_part(text)])
        yield event("response.output_text.done", seq, **where, text=text, logprobs=[])
        yield event("response.content_part.done", seq, **where, part=text_part(text))
        yield event("response.output_item.done", seq, output_index=0, item=item)
        final = response_object(body, head, status, [item], incomplete, usage(last.usage))
        yield event("response.completed" if status == "completed" else "response.incomplete", seq, response=final)
    except (grpc.aio.AioRpcError, HTTPError) as e:
        err = HTTPError.from_rpc(e) if isinstance(e, grpc.aio.AioRpcError) else e
        yield event("error", seq, code=err.code, message=err.message, param=err.param)
    finally:
        for c in calls:
            c.cancel()
