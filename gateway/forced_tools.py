"""Forced tool calls: OpenAI's `tool_choice` "required" or {"type": "function", "function":
{"name": ...}}. Prompting cannot force a small model to call a tool, so, as vLLM does, the reply
is constrained by a JSON schema (the scheduler's structured outputs) and read back as calls:

- a named function: the reply is that tool's arguments object, so it becomes one call as is;
- "required": the reply is a non-empty array of {"name", "parameters"} objects, one per call
  (vLLM's layout), each naming an offered tool."""

from __future__ import annotations

import json

from litelang.gateway.tool_calls import new_call

ANY_OBJECT = {"type": "object"}


def parameters_schema(tools: list[dict], name: str) -> dict:
    """The JSON schema of the arguments of the tool called `name` (any object when it gives none)."""
    for tool in tools:
        function = tool.get("function") or {}
        if function.get("name") == name:
            return function.get("parameters") or ANY_OBJECT
    raise KeyError(name)


def forced_schema(tools: list[dict], name: str | None) -> dict:
    """The schema the reply must match: the named tool's parameters, or (name None: "required")
    an array of one call or more, each any of the offered tools."""
    if name is not None:
        return parameters_schema(tools, name)
    names = [f["name"] for t in tools if isinstance(f := t.get("function"), dict) and isinstance(f.get("name"), str)]
    calls = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [n]}, "parameters": parameters_schema(tools, n)},
              "required": ["name", "parameters"]} for n in names]
    return {"type": "array", "minItems": 1, "items": {"anyOf": calls}}


def forced_reply(text: str, reason: str | None, name: str | None) -> tuple[str | None, list[dict], str | None]:
    """(content, tool_calls, finish_reason) of a forced reply. A named call keeps the engine's
    finish reason (OpenAI answers a forced named call with "stop"); the arguments are the text
    even when cut short ("length"), as vLLM returns them. A "required" array that does not parse
    (cut by max_tokens, say) is returned as content, with no calls and the reason unchanged."""
    if name is not None:
        return None, [new_call(name, text)], reason
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return text, [], reason
    if not isinstance(items, list) or not items or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("parameters"), dict)
            for i in items):
        return text, [], reason
    calls = [new_call(i["name"], json.dumps(i["parameters"], ensure_ascii=False)) for i in items]
    return None, calls, "tool_calls" if reason == "stop" else reason
