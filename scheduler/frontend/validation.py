"""Turning client SamplingParams into a SamplingConfig (and chat messages into a chat template's
input), or a message a person can act on."""

from __future__ import annotations

import contextlib
import json
import math

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.scheduler.request import SamplingConfig


# the worker masks stop tokens before min_new_tokens with a fixed-width table: EOS ids + these
MAX_STOP_TOKEN_IDS = 14
# alternatives per generated token, as OpenAI allows
MAX_TOP_LOGPROBS = 20
# completions per request (SamplingParams.n)
MAX_COMPLETIONS = 64
# logit_bias: tokens per request and the size of a bias, as OpenAI allows (the worker keeps a
# fixed-width table per running request: worker/sampler.py MAX_LOGIT_BIAS)
MAX_LOGIT_BIAS = 300
MAX_BIAS_VALUE = 100.0
# bad_words: words per request and characters per word
MAX_BAD_WORDS = 100
MAX_BAD_WORD_CHARS = 100


class InvalidRequest(ValueError):
    """Never valid, whatever the server's load: INVALID_ARGUMENT."""


def _finite(name: str, value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise InvalidRequest(f"{name} must be a finite number (got {value})")
    return value


def resolve_sampling(params: pb.SamplingParams, cfg: LitelangConfig, default_seed: int) -> SamplingConfig:
    s = SamplingConfig(max_new_tokens=min(256, cfg.max_output_length), seed=default_seed)
    if params.HasField("temperature"):
        s.temperature = _finite("temperature", params.temperature)
        if s.temperature < 0:
            raise InvalidRequest(f"temperature must be >= 0 (got {s.temperature}); use 0 for greedy decoding")
    if params.HasField("top_p"):
        s.top_p = _finite("top_p", params.top_p)
        if not 0 < s.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1] (got {s.top_p})")
    if params.HasField("top_k"):
        s.top_k = params.top_k
        if s.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0, 0 meaning off (got {s.top_k})")
    if params.HasField("min_p"):
        s.min_p = _finite("min_p", params.min_p)
        if not 0 <= s.min_p <= 1:
            raise InvalidRequest(f"min_p must be in [0, 1] (got {s.min_p})")
    if params.HasField("repetition_penalty"):
        s.repetition_penalty = _finite("repetition_penalty", params.repetition_penalty)
        if s.repetition_penalty <= 0:
            raise InvalidRequest(f"repetition_penalty must be > 0, 1 meaning off (got {s.repetition_penalty})")
    for name in ("frequency_penalty", "presence_penalty"):
        if params.HasField(name):
            value = _finite(name, getattr(params, name))
            if not -2 <= value <= 2:
                raise InvalidRequest(f"{name} must be in [-2, 2] (got {value})")
            setattr(s, name, value)
    if params.HasField("max_new_tokens"):
        if params.max_new_tokens <= 0:
            raise InvalidRequest(f"max_new_tokens must be >= 1 (got {params.max_new_tokens})")
        if params.max_new_tokens > cfg.max_output_length:
            raise InvalidRequest(
                f"max_new_tokens {params.max_new_tokens} exceeds the server's max_output_length {cfg.max_output_length}"
            )
        s.max_new_tokens = params.max_new_tokens
    if params.min_new_tokens < 0 or params.min_new_tokens > s.max_new_tokens:
        raise InvalidRequest(f"min_new_tokens must be in [0, max_new_tokens={s.max_new_tokens}] (got {params.min_new_tokens})")
    s.min_new_tokens = params.min_new_tokens
    if any(not stop for stop in params.stop):
        raise InvalidRequest("stop strings must not be empty")
    s.stop = list(params.stop)
    if len(params.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequest(f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids (got {len(params.stop_token_ids)})")
    s.stop_token_ids = list(params.stop_token_ids)
    s.ignore_eos = params.ignore_eos
    if params.HasField("seed"):
        s.seed = params.seed
    s.skip_special_tokens = params.skip_special_tokens
    s.include_stop_str_in_output = params.include_stop_str_in_output
    s.logprobs = params.logprobs
    s.top_logprobs = _top_logprobs(params)
    s.logit_bias = _logit_bias(params)
    if any(t < 0 for t in params.allowed_token_ids):
        raise InvalidRequest("allowed_token_ids must be token ids (>= 0)")
    s.allowed_token_ids = sorted(set(params.allowed_token_ids))
    if len(params.bad_words) > MAX_BAD_WORDS or any(not w.strip() or len(w) > MAX_BAD_WORD_CHARS for w in params.bad_words):
        raise InvalidRequest(f"bad_words takes at most {MAX_BAD_WORDS} words, each not blank and at most "
                             f"{MAX_BAD_WORD_CHARS} characters")
    s.bad_words = list(params.bad_words)
    if params.HasField("prompt_logprobs"):
        if not 0 <= params.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"prompt_logprobs must be in [0, {MAX_TOP_LOGPROBS}] (got {params.prompt_logprobs}): "
                                 "0 scores each prompt token, N adds the N most likely tokens")
        s.prompt_logprobs = params.prompt_logprobs
    return s


def _logit_bias(params: pb.SamplingParams) -> dict[int, float]:
    """Checked here except the ids' upper bound (check_vocabulary_ids, once the vocabulary is known)."""
    bias = dict(params.logit_bias)
    if len(bias) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"logit_bias has {len(bias)} tokens; at most {MAX_LOGIT_BIAS}")
    for token, value in bias.items():
        if token < 0:
            raise InvalidRequest(f"logit_bias token id {token} is negative")
        if not -MAX_BIAS_VALUE <= _finite(f"logit_bias[{token}]", value) <= MAX_BIAS_VALUE:
            raise InvalidRequest(f"logit_bias[{token}] = {value} is outside [-{MAX_BIAS_VALUE:g}, {MAX_BIAS_VALUE:g}]")
    return bias


def _top_logprobs(params: pb.SamplingParams) -> int:
    """OpenAI's range, and only beside logprobs: the alternatives ride with each token's logprob."""
    n = params.top_logprobs
    if not 0 <= n <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}] (got {n}); 0 means none")
    if n and not params.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true (the alternatives come with each token's logprob)")
    return n


def completion_count(params: pb.SamplingParams) -> int:
    """SamplingParams.n, checked: each completion is a request of its own in the engine."""
    if not params.HasField("n"):
        return 1
    if not 1 <= params.n <= MAX_COMPLETIONS:
        raise InvalidRequest(f"n must be in [1, {MAX_COMPLETIONS}] (got {params.n}): the number of completions")
    return params.n


def check_vocabulary_ids(sampling: SamplingConfig, vocab_size: int) -> None:
    """The upper bound of the token ids a request names (logit_bias, allowed_token_ids), once the
    vocabulary is known."""
    for field, ids in (("logit_bias token ids", sampling.logit_bias), ("allowed_token_ids", sampling.allowed_token_ids)):
        bad = sorted(t for t in ids if t >= vocab_size)
        if bad:
            raise InvalidRequest(f"{field} {bad[:5]} are outside the vocabulary [0, {vocab_size})")


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
    return msgs, _json_list(chat.tools_json, "tools") if chat.tools_json else None


def _json_list(text: str, what: str) -> list[dict]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise InvalidRequest(f"{what} must be a JSON list of objects")
    return value
