"""Tool calls in a Qwen2.5 reply. Its chat template asks the model for
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (the Hermes format); these turn
them into OpenAI's `tool_calls`, whole or while a reply streams. Small Qwen2.5 models often
answer with the bare JSON object instead (Qwen2.5-Coder-0.5B-Instruct, the default model, does):
a reply that is exactly one such object naming an offered tool counts as a call too."""

from __future__ import annotations

import json
import re
import uuid

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)


def parse_tool_calls(text: str, tool_names: set[str] | None = None, single: bool = False
                     ) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a whole reply. Content is the text outside the blocks (None if
    blank). A block that is not a JSON object with a name leaves the whole reply as content, as
    an unclosed block does: nothing is half-parsed. Without blocks, a reply that is one bare
    call object naming one of `tool_names` is that call. single (parallel_tool_calls false):
    only the first call is kept."""
    if OPEN not in text:
        call = _bare_call(text, tool_names or set())
        return (None, [call]) if call else (text, [])
    calls = []
    for body in _BLOCK.findall(text):
        try:
            call = _call(json.loads(body))
        except json.JSONDecodeError:
            return text, []
        if call is None:
            return text, []
        calls.append(call)
    if not calls or OPEN in _BLOCK.sub("", text):
        return text, []
    content = _BLOCK.sub("", text).strip()
    return content or None, calls[:1] if single else calls


def _call(obj) -> dict | None:
    """OpenAI's tool call from a {"name", "arguments"} object, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", {})
    return new_call(obj["name"], arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False))


def new_call(name: str, arguments: str) -> dict:
    """One of OpenAI's `tool_calls`, with a fresh id; `arguments` is JSON text."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}


def _bare_call(text: str, tool_names: set[str]) -> dict | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in tool_names or not isinstance(obj.get("arguments", {}), dict):
        return None
    return _call(obj)


class ToolCallStream:
    """A streamed reply split into content deltas and, at its end, tool calls. Text is passed on
    until a block might begin (a held-back tail that could be the start of `<tool_call>`); from
    the first block on, the rest is kept and parsed when the reply ends. A reply that opens with
    `{` is kept whole too: it may be a bare call."""

    def __init__(self, tool_names: set[str] | None = None, single: bool = False) -> None:
        self.tool_names, self.single = tool_names or set(), single
        self.held = ""       # not yet sent: a possible start of OPEN, or everything from OPEN on
        self.in_calls = False
        self.sent_any = False

    def add(self, text: str) -> str:
        """The content that can be sent now."""
        self.held += text
        if self.in_calls:
            return ""
        if not self.sent_any and self.held.lstrip().startswith("{"):
            self.in_calls = True  # a bare call, perhaps: decided at the end
            return ""
        at = self.held.find(OPEN)
        if at >= 0:
            self.in_calls = True
            out, self.held = self.held[:at], self.held[at:]
            return out
        keep = next((k for k in range(min(len(OPEN) - 1, len(self.held)), 0, -1)
                     if OPEN.startswith(self.held[-k:])), 0)
        if not self.held.strip():
            keep = len(self.held)  # leading whitespace: the reply's first real character decides
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        self.sent_any = self.sent_any or bool(out)
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(content still to send, tool calls) once the reply has ended."""
        held, self.held = self.held, ""
        if not self.in_calls:
            return held, []
        content, calls = parse_tool_calls(held, self.tool_names, self.single)
        if not calls:
            return held, []
        return content or "", calls
