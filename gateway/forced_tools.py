"""Forced tool calls: OpenAI's `tool_choice` "required" or {"type": "function", "function":
{"name": ...}}. Prompting cannot force a small model to call a tool, so, as vLLM does, the reply
is constrained by a JSON schema (the scheduler's structured outputs) and read back as calls:

- a named function: the reply is that tool's arguments object, so it becomes one call as is;
- "required": the reply is a non-empty array of {"name", "parameters"} objects, one per call
  (vLLM's layout), each naming an offered tool. RequiredCalls reads it as it streams."""

from __future__ import annotations

import json
import re

from litelang.gateway.tool_calls import new_call

ITEM_END = re.compile(r"\s*\}")  # an item's own closing brace, after its arguments
# an item's head, up to its arguments: `[{"name": "x", "parameters": ` (`, {` for later items)
ITEM_HEAD = re.compile(r'\s*[\[,]\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"parameters"\s*:\s*')

ANY_OBJECT = {"type": "object"}


def parameters_schema(tools: list[dict], name: str) -> dict:
    """The JSON schema of the arguments of the tool called `name` (any object when it gives none)."""
    for tool in tools:
        function = tool.get("function") or {}
        if function.get("name") == name:
            return function.get("parameters") or ANY_OBJECT
    raise KeyError(name)


def forced_schema(tools: list[dict], name: str | None, single: bool = False) -> dict:
    """The schema the reply must match: the named tool's parameters, or (name None: "required")
    an array of one call or more (single, parallel_tool_calls false: exactly one), each any of
    the offered tools."""
    if name is not None:
        return parameters_schema(tools, name)
    names = [f["name"] for t in tools if isinstance(f := t.get("function"), dict) and isinstance(f.get("name"), str)]
    calls = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [n]}, "parameters": parameters_schema(tools, n)},
              "required": ["name", "parameters"]} for n in names]
    return {"type": "array", "minItems": 1, **({"maxItems": 1} if single else {}), "items": {"anyOf": calls}}


def forced_reply(text: str, reason: str | None, name: str | None) -> tuple[str | None, list[dict], str | None]:
    """(content, tool_calls, finish_reason) of a forced reply. A named call keeps the engine's
    finish reason (OpenAI answers a forced named call with "stop"); the arguments are the text
    even when cut short ("length"), as vLLM returns them. A "required" array that does not parse
    (cut by max_tokens, say) is returned as content, with no calls and the reason unchanged."""
    if name is not None:
        return None, [new_call(name, text)], reason
    reader = RequiredCalls()
    reader.add(text)
    if not reader.complete():
        return text, [], reason
    return None, reader.calls, "tool_calls" if reason == "stop" else reason


class RequiredCalls:
    """A "required" reply read as it is written: each call opens once its item's name is complete,
    and its arguments (the "parameters" object's text, as written) grow with the reply. The
    grammar writes every item as {"name": ..., "parameters": ...} in that order (the schema's), so
    the name always comes first."""

    def __init__(self) -> None:
        self.text = ""
        self.calls: list[dict] = []  # OpenAI tool calls, arguments as far as read
        self._pos = 0                # how far the text is read
        self._state = "head"         # what comes next: an item's head, its arguments, its closing brace
        self._depth = 0              # inside the arguments: open objects and arrays
        self._in_string = self._escaped = False

    def add(self, text: str) -> list[tuple[int, dict]]:
        """Read more of the reply: (call index, delta) for each call opened (the whole call: id,
        type, name, no arguments yet) and each piece of arguments ({"function": {"arguments"}})."""
        self.text += text
        out: list[tuple[int, dict]] = []
        while True:
            if self._state == "head":
                head = ITEM_HEAD.match(self.text, self._pos)
                if head is None:  # not all there yet, or the closing "]"
                    return out
                call = new_call(json.loads(head.group(1)), "")
                self.calls.append(call)
                out.append((len(self.calls) - 1, {**call, "function": dict(call["function"])}))  # a copy: it grows
                self._pos, self._state, self._depth = head.end(), "arguments", 0
            elif self._state == "arguments":
                while self._depth == 0 and self._pos < len(self.text) and self.text[self._pos].isspace():
                    self._pos += 1  # before the object opens
                start = self._pos
                closed = self._read_arguments()
                if self._pos > start:
                    piece = self.text[start:self._pos]
                    self.calls[-1]["function"]["arguments"] += piece
                    out.append((len(self.calls) - 1, {"function": {"arguments": piece}}))
                if not closed:
                    return out
                self._state = "close"
            else:
                end = ITEM_END.match(self.text, self._pos)
                if end is None:
                    return out
                self._pos, self._state = end.end(), "head"

    def _read_arguments(self) -> bool:
        """Advance over the arguments' JSON; True once its outermost object has closed."""
        for i in range(self._pos, len(self.text)):
            c = self.text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._pos = i + 1
                    return True
        self._pos = len(self.text)
        return False

    def complete(self) -> bool:
        """The reply is a whole array of calls, each read (not cut short)."""
        try:
            items = json.loads(self.text)
        except json.JSONDecodeError:
            return False
        return (isinstance(items, list) and len(items) == len(self.calls) > 0
                and all(isinstance(i, dict) and i.get("name") == c["function"]["name"]
                        and isinstance(i.get("parameters"), dict) and json.loads(c["function"]["arguments"]) == i["parameters"]
                        for i, c in zip(items, self.calls)))
