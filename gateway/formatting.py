"""litelang replies as OpenAI's response bodies: finish reasons, usage, and both logprob
layouts (the chat `content` list and the legacy completions columns)."""

from __future__ import annotations

from collections.abc import Sequence

from litelang.proto import litelang_pb2 as pb

FINISH_REASONS = {
    pb.FINISH_REASON_EOS: "stop",
    pb.FINISH_REASON_STOP_STRING: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_ABORTED: "abort",  # as vLLM reports an aborted request
}


def finish_reason(reason: int) -> str | None:
    return FINISH_REASONS.get(reason)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def token_text(raw: bytes) -> str:
    """A token as OpenAI spells it: its text, or `bytes:\\x..` when it is part of a character."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def chat_logprobs(token_ids: Sequence[int], logprobs: Sequence[float], tops: Sequence[pb.TopLogprobs],
                  token_bytes: dict[int, bytes]) -> dict:
    """`choices[i].logprobs` of a chat completion (or of one stream chunk)."""

    def entry(token: int, logprob: float) -> dict:
        raw = token_bytes[token]
        return {"token": token_text(raw), "logprob": logprob, "bytes": list(raw)}

    content = []
    for i, (token, logprob) in enumerate(zip(token_ids, logprobs)):
        item = entry(token, logprob)
        item["top_logprobs"] = ([entry(t, x) for t, x in zip(tops[i].token_ids, tops[i].logprobs)]
                                if i < len(tops) else [])
        content.append(item)
    return {"content": content}


def completion_logprobs(token_ids: Sequence[int], logprobs: Sequence[float | None],
                        tops: Sequence[pb.TopLogprobs | None], token_bytes: dict[int, bytes],
                        text_offset: int) -> dict:
    """`choices[i].logprobs` of a legacy completion: parallel columns, `text_offset` counting
    characters from `text_offset` (the text before these tokens in the choice). No `tops` (none
    asked for): a None at each position."""
    tokens = [token_text(token_bytes[t]) for t in token_ids]
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token)
    top_columns = [None if top is None else {token_text(token_bytes[t]): x for t, x in zip(top.token_ids, top.logprobs)}
                   for top in tops] if tops else [None] * len(tokens)
    return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": top_columns, "text_offset": offsets}


def token_bytes_of(token_ids: Sequence[int], token_bytes: Sequence[bytes],
                   tops: Sequence[pb.TopLogprobs | None]) -> dict[int, bytes]:
    """id -> bytes, from what a logprobs reply carries beside its ids (the scheduler spells each
    token and each alternative), for the layouts above."""
    known = dict(zip(token_ids, token_bytes))
    for top in tops:
        if top is not None:
            known.update(zip(top.token_ids, top.token_bytes))
    return known


def completions_of(reply: pb.GenerateResponse) -> list[pb.Completion]:
    """Every completion of a reply: n > 1 lists them; n = 1 has its one in the reply's own fields."""
    if reply.completions:
        return list(reply.completions)
    return [pb.Completion(index=0, text=reply.text, token_ids=reply.token_ids, finish_reason=reply.finish_reason,
                          stop_string=reply.stop_string, logprobs=reply.logprobs, top_logprobs=reply.top_logprobs,
                          token_bytes=reply.token_bytes)]
