"""OpenAI's request bodies (and vLLM's extra sampling fields), validated by pydantic and turned
into litelang GenerateRequests. The scheduler validates values (ranges, lengths, the vocabulary);
here we check only what its protocol cannot express."""

from __future__ import annotations

import json
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from litelang.client.api import chat_messages
from litelang.gateway.forced_tools import forced_schema
from litelang.proto import litelang_pb2 as pb


class RequestError(ValueError):
    """A request the gateway refuses before it reaches the scheduler: HTTP 400."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` object: one of these."""

    model_config = ConfigDict(extra="forbid")

    json_: str | dict | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


def _format_of(json_schema=None, regex=None, choice=None, grammar=None, json_object=None) -> pb.StructuredOutput | None:
    given = {k: v for k, v in dict(json_schema=json_schema, regex=regex, choice=choice, grammar=grammar,
                                   json_object=json_object).items() if v is not None}
    if not given:
        return None
    if len(given) > 1:
        raise RequestError(f"give one structured output format, not {sorted(given)}", "structured_outputs")
    [(kind, value)] = given.items()
    if kind == "json_schema" and not isinstance(value, str):
        value = json.dumps(value)
    if kind == "choice":
        return pb.StructuredOutput(choice=pb.ChoiceList(choices=value))
    return pb.StructuredOutput(**{kind: value})


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both endpoints share. Unknown fields are ignored, as OpenAI's SDKs send new ones."""

    model_config = ConfigDict(extra="ignore")
    # the body's names of SamplingParams fields named otherwise, for errors about their values
    field_names: ClassVar[dict[str, str]] = {"min_new_tokens": "min_tokens", "max_new_tokens": "max_tokens"}

    model: str = ""
    n: int = 1
    temperature: float | None = None  # None: OpenAI's default, 1.0
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extra sampling fields
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    skip_special_tokens: bool = True  # OpenAI's text never shows <|im_end|>
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: int | None = None
    priority: int = 0  # vLLM's: lower is served first
    # vLLM's structured outputs: the object, or the older guided_* fields (chat also takes
    # OpenAI's response_format)
    structured_outputs: StructuredOutputs | None = None
    guided_json: str | dict | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def output_formats(self) -> list[pb.StructuredOutput]:
        """The formats this body asks for (the scheduler takes one: more is refused by the caller)."""
        formats = [_format_of(self.guided_json, self.guided_regex, self.guided_choice, self.guided_grammar)]
        if self.structured_outputs is not None:
            o = self.structured_outputs
            formats.append(_format_of(o.json_, o.regex, o.choice, o.grammar, o.json_object))
        return [f for f in formats if f is not None]

    def with_format(self, params: pb.SamplingParams, *more: pb.StructuredOutput | None) -> pb.SamplingParams:
        formats = self.output_formats() + [f for f in more if f is not None]
        if len(formats) > 1:
            raise RequestError("give one structured output format (response_format, structured_outputs or one "
                               "guided_* field)", "structured_outputs")
        if formats:
            params.structured_output.CopyFrom(formats[0])
        return params

    def sampling(self, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> pb.SamplingParams:
        if self.n < 1:
            raise RequestError(f"n must be >= 1 (got {self.n})", "n")
        try:
            bias = {int(token): value for token, value in (self.logit_bias or {}).items()}
        except ValueError:
            raise RequestError("logit_bias keys must be token ids (integers, as strings)", "logit_bias") from None
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        params = pb.SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            stop=stops, ignore_eos=self.ignore_eos, skip_special_tokens=self.skip_special_tokens, logprobs=logprobs,
            include_stop_str_in_output=self.include_stop_str_in_output,
        )
        fields = dict(stop_token_ids=self.stop_token_ids or [], allowed_token_ids=self.allowed_token_ids or [],
                      bad_words=self.bad_words or [], min_new_tokens=self.min_tokens,
                      top_logprobs=top_logprobs, logit_bias=bias, n=None if self.n == 1 else self.n,
                      max_new_tokens=max_tokens)
        fields.update({name: getattr(self, name) for name in
                       ("top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p", "repetition_penalty",
                        "truncate_prompt_tokens")})
        for name, value in fields.items():
            if value is None:  # unset: the server's default
                continue
            try:
                if isinstance(value, dict):
                    getattr(params, name).update(value)
                elif isinstance(value, list):
                    getattr(params, name).extend(value)
                else:
                    setattr(params, name, value)
            except (ValueError, TypeError):  # outside the wire type's range (a negative seed, say)
                field = self.field_names.get(name, name)
                raise RequestError(f"{field} {value!r} is out of range", field) from None
        return params

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None  # legacy: N most likely tokens at each position (0 = the token's own only)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def generate_requests(self) -> list[pb.GenerateRequest]:
        """One GenerateRequest per prompt (a list of strings or of token-id lists is a batch)."""
        if self.suffix and self.echo:
            raise RequestError("echo cannot be combined with suffix", "echo")
        if self.best_of is not None and self.best_of != self.n:
            raise RequestError("best_of must equal n (litelang returns every completion it samples)", "best_of")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise RequestError(f"logprobs must be in [0, 20] (got {self.logprobs})", "logprobs")
        want_logprobs = self.logprobs is not None
        params = self.with_format(self.sampling(self.max_tokens, want_logprobs, self.logprobs or 0))
        if self.echo and want_logprobs:  # the prompt's own scores, as OpenAI's echo gives them
            params.prompt_logprobs = self.logprobs or 0
        prompts = self.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise RequestError("prompt is empty", "prompt")
        out = []
        for prompt in prompts:
            if isinstance(prompt, str):
                out.append(pb.GenerateRequest(prompt=prompt, sampling=params, priority=self.priority,
                                              suffix=self.suffix or ""))
            elif self.suffix:
                raise RequestError("suffix (fill in the middle) needs text prompts, not token ids", "suffix")
            else:
                out.append(pb.GenerateRequest(input_ids=pb.TokenIds(ids=prompt), sampling=params, priority=self.priority))
        return out


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None       # tool: the call this result answers
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


def message_dicts(messages: list[ChatMessage]) -> list[dict]:
    """The messages as litelang's client takes them (client.api.chat_messages): "developer" is
    the system role's newer name, which Qwen2's chat template does not know."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(), "tool_calls": m.tool_calls,
             "tool_call_id": m.tool_call_id, "name": m.name} for m in messages]


class ResponseFormat(BaseModel):
    """OpenAI's response_format: text, json_object, or json_schema {name, schema, strict}."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict | None = None

    def output_format(self) -> pb.StructuredOutput | None:
        if self.type == "json_object":
            return pb.StructuredOutput(json_object=True)
        if self.type == "json_schema":
            schema = (self.json_schema or {}).get("schema")
            if not isinstance(schema, dict):
                raise RequestError("response_format json_schema needs json_schema.schema, a JSON Schema object",
                                   "response_format")
            return pb.StructuredOutput(json_schema=json.dumps(schema))
        return None


def forced_tool_format(tools: list[dict], name: str | None, other_format: bool, format_field: str,
                       single: bool = False) -> pb.StructuredOutput:
    """The format that forces a call of the offered tools (chat's shape; forced_tools.py): the
    named one, or (name None: "required") any. Refused without tools, with a name not offered, or
    beside another format (other_format; format_field: the endpoint's own field that sets one)."""
    names = {t.get("function", {}).get("name") for t in tools} - {None}
    if not names:
        raise RequestError("tool_choice forces a tool call: offer the tools in `tools`", "tool_choice")
    if name is not None and name not in names:
        raise RequestError(f"tool_choice names {name!r}, which is not an offered tool (offered: "
                           f"{', '.join(sorted(names))})", "tool_choice")
    if other_format:
        raise RequestError(f"tool_choice forces a call with a structured output format: give no {format_field}, "
                           "structured_outputs or guided_* field with it (one format per request)", "tool_choice")
    return pb.StructuredOutput(json_schema=json.dumps(forced_schema(tools, name, single)))


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None  # false: one call at most (a "required" array of one)
    continue_final_message: bool = False  # vLLM's: continue the last (assistant) message, a prefilled reply

    @property
    def uses_tools(self) -> bool:
        """Tools offered to the model (and its reply parsed for calls)."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def tool_names(self) -> set[str]:
        return {t.get("function", {}).get("name") for t in self.tools or []} - {None}

    @property
    def one_call(self) -> bool:
        """parallel_tool_calls false: one call at most."""
        return self.parallel_tool_calls is False

    @property
    def forces_call(self) -> bool:
        """tool_choice "required" or a named function: the reply is a forced call (forced_tools.py)."""
        return self.tool_choice == "required" or isinstance(self.tool_choice, dict)

    @property
    def forced_name(self) -> str | None:
        """The function a named tool_choice forces (None for "required" and the rest)."""
        function = self.tool_choice.get("function") if isinstance(self.tool_choice, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        return name if isinstance(name, str) else None

    def forced_format(self) -> pb.StructuredOutput | None:
        """The format that forces tool_choice's call, or None when the model answers freely."""
        if self.tool_choice in (None, "auto", "none"):
            return None
        if not self.forces_call:
            raise RequestError(f"tool_choice must be none, auto, required or {{\"type\": \"function\", \"function\": "
                               f"{{\"name\": ...}}}} (got {self.tool_choice!r})", "tool_choice")
        if self.tool_names and isinstance(self.tool_choice, dict) and (
                self.tool_choice.get("type") != "function" or self.forced_name is None):
            raise RequestError('a named tool_choice is {"type": "function", "function": {"name": ...}}',
                               "tool_choice")
        other = bool(self.output_formats() or (self.response_format and self.response_format.output_format()))
        return forced_tool_format(self.tools or [], self.forced_name, other, "response_format", single=self.one_call)

    def generate_request(self, max_output_length: int) -> pb.GenerateRequest:
        forced = self.forced_format()
        if self.top_logprobs and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        # no limit given: as much as the server allows (OpenAI: up to the context)
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        params = self.with_format(self.sampling(max_output_length if limit is None else limit, self.logprobs,
                                                self.top_logprobs or 0),
                                  forced or (self.response_format and self.response_format.output_format()))
        chat = chat_messages(message_dicts(self.messages), self.tools if self.uses_tools else None,
                             self.continue_final_message)
        return pb.GenerateRequest(messages=chat, sampling=params, priority=self.priority)


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's): text, or chat messages rendered with the chat template."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    prompt: str | None = None
    messages: list[ChatMessage] | None = None

    def litelang(self) -> pb.TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise RequestError("give exactly one of prompt and messages", "prompt")
        if self.prompt is not None:
            return pb.TokenizeRequest(prompt=self.prompt)
        return pb.TokenizeRequest(messages=chat_messages(message_dicts(self.messages)))


class DetokenizeRequest(BaseModel):
    """POST /detokenize (vLLM's)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    tokens: list[int]
