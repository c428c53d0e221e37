"""OpenAI's Responses API (POST /v1/responses): the request body (input items rendered through
the chat template, as chat completions are), the response object, and its typed server-sent
events. Function tools work as on chat, through chat's helpers: the flat Responses tools are
turned into chat's shape, calls are read from the reply as chat reads them (tool_calls.py,
forced_tools.py) and become `function_call` output items. litelang keeps no state between
requests, so what needs stored responses (previous_response_id, background) and what is neither
text nor a function tool (images, files, built-in tools) is refused with a 400 naming the field,
never ignored."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import grpc
from pydantic import BaseModel, ConfigDict, Field

from litelang.client.api import chat_messages
from litelang.gateway import formatting as fmt
from litelang.gateway.backend import HTTPError
from litelang.gateway.forced_tools import RequiredCalls, forced_reply
from litelang.gateway.protocol import RequestError, _Sampling, forced_tool_format
from litelang.gateway.streams import merge
from litelang.gateway.tool_calls import ToolCallStream, new_call, parse_tool_calls
from litelang.proto import litelang_pb2 as pb

ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}  # -> the template's
TEXT_PARTS = ("input_text", "output_text")
# fields that ask for what litelang cannot do: refused whenever given a value other than an empty one
REFUSED = {
    "previous_response_id": "litelang keeps no response state (store is accepted and ignored), so "
                            "previous_response_id cannot be looked up: send the whole conversation in `input`",
    "conversation": "litelang keeps no conversation state: send the whole conversation in `input`",
    "background": "background responses need stored response state, which litelang does not keep",
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
    tools: list[Any] | None = None  # function tools only (chat_tools)
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None  # false: one call at most (a "required" array of one)
    truncation: str | None = None
    # refused when given (REFUSED)
    previous_response_id: str | None = None
    conversation: str | dict | None = None
    background: bool | None = None
    prompt: dict | None = None
    include: list | None = None
    top_logprobs: int | None = None
    reasoning: dict | None = None

    def refuse_unsupported(self) -> None:
        for name, why in REFUSED.items():
            if getattr(self, name) not in (None, False, [], {}):
                raise RequestError(why, name)
        choice = self.tool_choice
        if not (choice in (None, "auto", "none", "required") or (
                isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str))):
            raise RequestError(f'tool_choice must be none, auto, required or {{"type": "function", "name": ...}} '
                               f"(got {choice!r})", "tool_choice")
        if self.truncation not in (None, "disabled"):
            raise RequestError("truncation must be disabled: a too-long input is refused, not cut", "truncation")
        if self.n != 1:
            raise RequestError("a response has one output: n must be 1", "n")

    # ---- tools, as ChatCompletionRequest has them (tool_choice's named function is flat here)

    def chat_tools(self) -> list[dict]:
        """The tools in chat's shape, which the chat template and forced_tools take."""
        return [chat_tool(tool, f"tools[{i}]") for i, tool in enumerate(self.tools or [])]

    @property
    def tool_names(self) -> set[str]:
        return {t.get("name") for t in self.tools or [] if isinstance(t, dict)} - {None}

    @property
    def uses_tools(self) -> bool:
        """Tools offered to the model (and its reply parsed for calls); "none" hides them, as on chat."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def one_call(self) -> bool:
        """parallel_tool_calls false: one call at most."""
        return self.parallel_tool_calls is False

    @property
    def forces_call(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, dict)

    @property
    def forced_name(self) -> str | None:
        return self.tool_choice["name"] if isinstance(self.tool_choice, dict) else None

    def forced_format(self, tools: list[dict], text_format: pb.StructuredOutput | None) -> pb.StructuredOutput | None:
        """The format that forces tool_choice's call (forced_tools.py), or None when the model answers freely."""
        if not self.forces_call:
            return None
        other = text_format is not None or bool(self.output_formats())
        return forced_tool_format(tools, self.forced_name, other, "json text.format", single=self.one_call)

    def messages(self) -> list[dict]:
        """The conversation as chat messages: instructions first (as a system message), then the input.
        function_call items join the assistant message before them (its text, or calls before them),
        as the model wrote them in one turn; each function_call_output is a tool message."""
        out = [{"role": "system", "content": self.instructions}] if self.instructions is not None else []
        if isinstance(self.input, str):
            return out + [{"role": "user", "content": self.input}]
        if not self.input:
            raise RequestError("input is empty", "input")
        for i, item in enumerate(self.input):
            where, kind = f"input[{i}]", item.get("type") if isinstance(item, dict) else None
            if kind == "function_call":
                function = {key: string(item, key, where) for key in ("name", "arguments")}
                call = {"id": string(item, "call_id", where), "type": "function", "function": function}
                if out and out[-1]["role"] == "assistant":
                    out[-1]["tool_calls"] = [*(out[-1].get("tool_calls") or []), call]
                else:
                    out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif kind == "function_call_output":
                output = item.get("output")
                content = output if isinstance(output, str) else part_texts(output, f"{where}.output")
                out.append({"role": "tool", "content": content, "tool_call_id": string(item, "call_id", where)})
            else:
                out.append(input_message(item, where))
        return out

    def generate_request(self, max_output_length: int) -> pb.GenerateRequest:
        self.refuse_unsupported()
        tools = self.chat_tools()
        limit = max_output_length if self.max_output_tokens is None else self.max_output_tokens
        text_format = self.text.format.output_format() if self.text else None
        forced = self.forced_format(tools, text_format)
        params = self.with_format(self.sampling(limit, False, 0), forced or text_format)
        chat = chat_messages(self.messages(), tools if self.uses_tools else None)
        return pb.GenerateRequest(messages=chat, sampling=params, priority=self.priority)

    def reply(self, text: str, reason: str | None) -> tuple[str, list[dict], str | None]:
        """(content, chat tool calls, finish reason) of a whole reply, read as chat reads it."""
        if self.forces_call:
            content, calls, reason = forced_reply(text, reason, self.forced_name)
        elif self.uses_tools:
            content, calls = parse_tool_calls(text, self.tool_names, self.one_call)
        else:
            content, calls = text, []
        return content or "", calls, reason

    def echoed(self) -> dict:
        """The request's settings as a response object repeats them (OpenAI's defaults when unset)."""
        text = self.text.model_dump(by_alias=True, exclude_none=True) if self.text else {"format": {"type": "text"}}
        return {"instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
                "temperature": 1.0 if self.temperature is None else self.temperature,
                "top_p": 1.0 if self.top_p is None else self.top_p, "metadata": self.metadata or {}, "text": text,
                "tools": self.tools or [], "tool_choice": self.tool_choice or "auto",
                "parallel_tool_calls": True if self.parallel_tool_calls is None else self.parallel_tool_calls,
                "truncation": "disabled", "previous_response_id": None, "reasoning": None, "store": False,
                "user": self.user}


def chat_tool(tool: Any, where: str) -> dict:
    """A Responses function tool ({"type": "function", "name", "description", "parameters",
    "strict"}, flat) in chat's shape; any other tool type is refused."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise RequestError(f"{where}.type: only function tools are supported (got {kind!r}); built-in tools "
                           "(web_search, file_search, computer_use, mcp, ...) are not", f"{where}.type")
    string(tool, "name", where)
    return {"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters")
                                             if tool.get(k) is not None}}


def string(item: dict, key: str, where: str) -> str:
    """item[key], which must be a string (a 400 naming `where.key` otherwise)."""
    if not isinstance(item.get(key), str):
        raise RequestError(f"{where}.{key} must be a string", f"{where}.{key}")
    return item[key]


def input_message(item: Any, where: str) -> dict:
    """One input item (a message: {"role", "content"}, `"type": "message"` or none) as a chat
    message; any other item is refused with its place (`input[2].type`, ...) as the param."""
    if not isinstance(item, dict):
        raise RequestError(f"{where} must be a message object {{\"role\", \"content\"}}", where)
    if item.get("type", "message") != "message":
        raise RequestError(f"{where}: input items of type {item['type']!r} are not supported (messages, "
                           "function_call and function_call_output only)", f"{where}.type")
    role = item.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})", f"{where}.role")
    content = item.get("content")
    text = content if isinstance(content, str) else part_texts(content, f"{where}.content")
    return {"role": ROLES[role], "content": text}


def part_texts(content: Any, where: str) -> str:
    """A list of text parts (a message's content, a function_call_output's output) as one text."""
    if not isinstance(content, list):
        raise RequestError(f"{where} must be a string or a list of text parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise RequestError(f"{where}[{j}]: only text parts ({', '.join(TEXT_PARTS)} with `text`) are "
                               f"supported (got {kind!r})", f"{where}[{j}].type")
        texts.append(part["text"])
    return "".join(texts)


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


def call_item(call: dict, status: str) -> dict:
    """A chat tool call (tool_calls.new_call's) as a `function_call` output item: its id is the
    call's own under fc_, so a stream's events and its final response agree."""
    return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"), "call_id": call["id"],
            "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": status}


def item_status(status: str) -> str:
    return "completed" if status == "completed" else "incomplete"


def finished_response(body: ResponsesRequest, head: dict, text: str, finish_reason: int, u: pb.Usage) -> dict:
    """The whole response of a finished generation: one assistant message with the text, and a
    function_call item per call (the message only when there is text besides the calls)."""
    content, calls, reason = body.reply(text, fmt.finish_reason(finish_reason))
    status, incomplete = outcome(reason)
    output = [message_item(message_id(head), item_status(status), [text_part(content)])] if content or not calls else []
    output += [call_item(call, item_status(status)) for call in calls]
    return response_object(body, head, status, output, incomplete, usage(u))


def message_id(head: dict) -> str:
    """The output message's id, the response's own after its prefix: stable across a stream's events."""
    return "msg_" + head["id"].removeprefix("resp_")


# ---- the stream

class StreamedOutput:
    """A streamed response's output items as they are opened, added to and closed; each method
    returns the typed events to send (`event:` the type, `data:` the JSON with `type` and
    `sequence_number`). The message opens with its first text, so a reply that is only calls has
    none; a call is added whole at the end unless it streams (a forced call: named, or "required")."""

    def __init__(self, head: dict) -> None:
        self.seq, self.mid = itertools.count(), message_id(head)
        self.items: list[dict] = []
        self.closed: set[int] = set()  # output indices whose done events went out
        self.message: int | None = None  # the message's output index, once opened
        self.text = ""

    def event(self, kind: str, **fields) -> str:
        data = {"type": kind, "sequence_number": next(self.seq), **fields}
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def where(self) -> dict:
        return {"item_id": self.mid, "output_index": self.message, "content_index": 0}

    def add_text(self, delta: str) -> list[str]:
        if not delta:
            return []
        out = [] if self.message is not None else self.open_message()
        self.text += delta
        return out + [self.event("response.output_text.delta", **self.where(), delta=delta, logprobs=[])]

    def open_message(self) -> list[str]:
        self.message = len(self.items)
        self.items.append(message_item(self.mid, "in_progress", []))
        return [self.event("response.output_item.added", output_index=self.message, item=self.items[-1]),
                self.event("response.content_part.added", **self.where(), part=text_part(""))]

    def add_call(self, call: dict) -> list[str]:
        """A call opened with no arguments yet (add_arguments streams them)."""
        self.items.append({**call_item(call, "in_progress"), "arguments": ""})
        return [self.event("response.output_item.added", output_index=len(self.items) - 1, item=self.items[-1])]

    def add_arguments(self, delta: str) -> list[str]:
        """More arguments of the last call opened."""
        if not delta:
            return []
        self.items[-1]["arguments"] += delta
        return [self.event("response.function_call_arguments.delta", item_id=self.items[-1]["id"],
                           output_index=len(self.items) - 1, delta=delta)]

    def close(self, index: int, status: str) -> list[str]:
        if index in self.closed:
            return []
        self.closed.add(index)
        item = self.items[index]
        item["status"] = item_status(status)
        if item["type"] == "message":
            item["content"] = [text_part(self.text)]
            out = [self.event("response.output_text.done", **self.where(), text=self.text, logprobs=[]),
                   self.event("response.content_part.done", **self.where(), part=text_part(self.text))]
        else:
            out = [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              arguments=item["arguments"])]
        return out + [self.event("response.output_item.done", output_index=index, item=item)]

    def finish(self, content: str, calls: list[dict], status: str) -> list[str]:
        """The reply's last text and its calls, every item closed in order (each before the next opens)."""
        out = self.add_text(content)
        if not self.items and not calls:
            out += self.open_message()  # an empty reply is still a message
        for index in range(len(self.items)):
            out += self.close(index, status)
        for call in calls:
            out += self.add_call(call) + self.add_arguments(call["function"]["arguments"])
            out += self.close(len(self.items) - 1, status)
        return out


async def response_stream(body: ResponsesRequest, calls: list, chunks: AsyncIterator[pb.GenerateStreamChunk],
                          head: dict) -> AsyncIterator[str]:
    """The Responses API's events for one generation: created, in_progress, the output items
    opened, added to and closed (StreamedOutput), then completed (or incomplete) with the whole
    response. With tools, text that may start a call is held back (ToolCallStream) and the calls
    are read at the end, as chat's stream does; a forced call's arguments stream as they come (a
    "required" reply's calls one after another, each closed before the next opens). An error
    after the start is an `error` event; leaving (the client went away) cancels the call, so the
    scheduler aborts it."""
    out = StreamedOutput(head)
    held = (ToolCallStream(body.tool_names, body.one_call)
            if body.uses_tools and not body.forces_call else None)
    required = RequiredCalls()  # a "required" reply, read as it is written
    try:
        yield out.event("response.created", response=response_object(body, head, "in_progress", []))
        yield out.event("response.in_progress", response=response_object(body, head, "in_progress", []))
        last = None
        async for _, chunk in merge([chunks]):
            if body.forced_name is not None:
                events = [] if out.items else out.add_call(new_call(body.forced_name, ""))
                events += out.add_arguments(chunk.text)
            elif body.forces_call:  # "required": each call opens (closing the one before) and grows as written
                events = []
                for _, delta in required.add(chunk.text):
                    if "id" in delta:
                        events += out.close(len(out.items) - 1, "completed") if out.items else []
                        events += out.add_call(delta)
                    else:
                        events += out.add_arguments(delta["function"]["arguments"])
            else:
                events = out.add_text(held.add(chunk.text) if held else chunk.text)
            for e in events:
                yield e
            if chunk.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                last = chunk
        if last is None:
            raise HTTPError(502, "the scheduler ended the stream without a finish reason")
        reason = fmt.finish_reason(last.finish_reason)
        content, tool_calls = "", []
        if body.forces_call and body.forced_name is None:
            if not required.calls:  # no call read: the text as content, as the unary reply gives it
                content = required.text
            elif reason == "stop":
                reason = "tool_calls"
        elif held:
            content, tool_calls = held.finish()
        status, incomplete = outcome(reason)
        for e in out.finish(content, tool_calls, status):
            yield e
        final = response_object(body, head, status, out.items, incomplete, usage(last.usage))
        yield out.event("response.completed" if status == "completed" else "response.incomplete", response=final)
    except (grpc.aio.AioRpcError, HTTPError) as e:
        err = HTTPError.from_rpc(e) if isinstance(e, grpc.aio.AioRpcError) else e
        yield out.event("error", code=err.code, message=err.message, param=err.param)
    finally:
        for c in calls:
            c.cancel()
