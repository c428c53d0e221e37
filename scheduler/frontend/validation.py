"""The frontend's checks of a request's input, each failure an InvalidRequest a person can act
on: the prompt (after truncate_prompt_tokens) and chat messages as a chat template takes them.
The sampling parameters' checks are scheduler/sampling_params.py's."""

from __future__ import annotations

import contextlib
import json

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.proto.json_values import plain_object
from litelang.scheduler.errors import InvalidRequest
from litelang.scheduler.sampling_params import LIMITS


def truncated_prompt(ids: list[int], params: pb.SamplingParams) -> list[int]:
    """The prompt's last truncate_prompt_tokens tokens, when the request sets it."""
    if not params.HasField("truncate_prompt_tokens"):
        return ids
    keep = LIMITS["truncate_prompt_tokens"].check("truncate_prompt_tokens", params.truncate_prompt_tokens)
    return ids[-keep:]


def check_prompt(ids: list[int], cfg: LitelangConfig, vocab_size: int) -> None:
    if not ids:
        raise InvalidRequest("the prompt is empty: send at least one token of text")
    if len(ids) > cfg.max_input_length:
        raise InvalidRequest(
            f"the prompt has {len(ids)} tokens, more than the server's max_input_length {cfg.max_input_length}"
        )
    if min(ids) < 0 or max(ids) >= vocab_size:  # C loops; the list below only on failure
        bad = [i for i in ids if not 0 <= i < vocab_size]
        raise InvalidRequest(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")


def chat_template_input(chat: pb.ChatMessages) -> tuple[list[dict], list[dict] | None]:
    """The messages and tools as HF chat templates take them, or InvalidRequest. Tool calls'
    JSON-string arguments become objects, as templates render them with `tojson`."""
    if not chat.messages:
        raise InvalidRequest("messages is empty: send at least one message")
    if chat.continue_final_message and chat.messages[-1].role != "assistant":
        raise InvalidRequest("continue_final_message needs the last message to be the assistant's (the start of "
                             f"its reply), not {chat.messages[-1].role!r}")
    msgs = []
    for m in chat.messages:
        if m.role not in ("system", "user", "assistant", "tool"):
            raise InvalidRequest(f"message roles must be system, user, assistant or tool (got {m.role!r})")
        msg: dict = {"role": m.role, "content": m.content}
        if m.tool_calls_json:
            calls = _json_list(m.tool_calls_json, "tool_calls")
            for call in calls:
                function = call.get("function", call)
                if isinstance(function.get("arguments"), str):
                    with contextlib.suppress(json.JSONDecodeError):
                        function["arguments"] = json.loads(function["arguments"])
            msg["tool_calls"] = calls
        if m.role == "tool":
            msg.update(tool_call_id=m.tool_call_id, name=m.name)
        msgs.append(msg)
    try:
        tools = [plain_object(tool, f"tools[{i}]") for i, tool in enumerate(chat.tools)]
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    return msgs, tools or None


def _json_list(text: str, what: str) -> list[dict]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise InvalidRequest(f"{what} must be a JSON list of objects")
    return value
