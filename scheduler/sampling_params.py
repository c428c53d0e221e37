"""One request's sampling parameters, defined once: their defaults and limits, how they are read
from the client's pb.SamplingParams (every check a request can fail, as InvalidRequest) and how
they are written as the worker's Sampling. A new parameter is a field, a limit, a line in each."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.proto import worker_pb2
from litelang.scheduler.errors import InvalidRequest
from litelang.scheduler.output_format import OutputFormat, output_format

DEFAULT_MAX_NEW_TOKENS = 256  # capped by the server's max_output_length
# the worker masks stop tokens before min_new_tokens with a fixed-width table: EOS ids + these
MAX_STOP_TOKEN_IDS = 14
MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI allows
MAX_COMPLETIONS = 64  # SamplingParams.n: each completion is a request of its own in the engine
# logit_bias: tokens per request and the size of a bias, as OpenAI allows (the worker keeps a
# fixed-width table per running request: worker/sampler.py MAX_LOGIT_BIAS)
MAX_LOGIT_BIAS = 300
MAX_BIAS_VALUE = 100.0
MAX_BAD_WORDS = 100  # bad_words: words per request and characters per word
MAX_BAD_WORD_CHARS = 100


@dataclass
class SamplingParams:
    """One completion's parameters, every default resolved and every value checked. It crosses
    the frontend/engine pipe inside messages.NewRequest."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int = 0
    skip_special_tokens: bool = False
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token (needs logprobs)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    prompt_logprobs: int | None = None  # score the prompt, with this many alternatives (None: off)
    include_stop_str_in_output: bool = False
    output_format: OutputFormat | None = None  # structured outputs: what the text must match
    allowed_token_ids: list[int] = field(default_factory=list)  # only these may be generated (empty: all)
    bad_words: list[str] = field(default_factory=list)  # never generated (engine/structured.py: TokenFilter)

    @property
    def penalized(self) -> bool:
        """The worker counts the context's tokens: it is sent the prompt and the output so far."""
        return self.repetition_penalty != 1.0 or bool(self.frequency_penalty) or bool(self.presence_penalty)

    @classmethod
    def from_wire(cls, wire: pb.SamplingParams, cfg: LitelangConfig, default_seed: int,
                  vocab_size: int = 1 << 31) -> SamplingParams:
        """The client's parameters checked against LIMITS and the server's config: InvalidRequest
        says what to change. Unset optional fields keep the defaults above; default_seed is the
        seed of a request that names none."""
        s = cls(max_new_tokens=min(DEFAULT_MAX_NEW_TOKENS, cfg.max_output_length), seed=default_seed)
        for name, limit in OPTIONAL_NUMBERS.items():
            if wire.HasField(name):
                setattr(s, name, limit.check(name, getattr(wire, name)))
        if wire.HasField("max_new_tokens"):
            s.max_new_tokens = LIMITS["max_new_tokens"].check("max_new_tokens", wire.max_new_tokens)
            if s.max_new_tokens > cfg.max_output_length:
                raise InvalidRequest(f"max_new_tokens {s.max_new_tokens} exceeds the server's max_output_length "
                                     f"{cfg.max_output_length}")
        if not 0 <= wire.min_new_tokens <= s.max_new_tokens:
            raise InvalidRequest(f"min_new_tokens must be in [0, max_new_tokens={s.max_new_tokens}] "
                                 f"(got {wire.min_new_tokens})")
        s.min_new_tokens = wire.min_new_tokens
        if any(not stop for stop in wire.stop):
            raise InvalidRequest("stop strings must not be empty")
        s.stop = list(wire.stop)
        if len(wire.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise InvalidRequest(f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids (got {len(wire.stop_token_ids)})")
        s.stop_token_ids = list(wire.stop_token_ids)
        if wire.HasField("seed"):
            s.seed = wire.seed
        s.ignore_eos, s.skip_special_tokens = wire.ignore_eos, wire.skip_special_tokens
        s.include_stop_str_in_output, s.logprobs = wire.include_stop_str_in_output, wire.logprobs
        s.top_logprobs = LIMITS["top_logprobs"].check("top_logprobs", wire.top_logprobs)
        if s.top_logprobs and not s.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true (the alternatives come with each token's logprob)")
        s.logit_bias = _logit_bias(wire)
        if any(t < 0 for t in wire.allowed_token_ids):
            raise InvalidRequest("allowed_token_ids must be token ids (>= 0)")
        s.allowed_token_ids = sorted(set(wire.allowed_token_ids))
        for what, ids in (("logit_bias token ids", s.logit_bias), ("allowed_token_ids", s.allowed_token_ids)):
            bad = sorted(t for t in ids if t >= vocab_size)
            if bad:
                raise InvalidRequest(f"{what} {bad[:5]} are outside the vocabulary [0, {vocab_size})")
        if len(wire.bad_words) > MAX_BAD_WORDS or any(not w.strip() or len(w) > MAX_BAD_WORD_CHARS for w in wire.bad_words):
            raise InvalidRequest(f"bad_words takes at most {MAX_BAD_WORDS} words, each not blank and at most "
                                 f"{MAX_BAD_WORD_CHARS} characters")
        s.bad_words = list(wire.bad_words)
        if wire.HasField("prompt_logprobs"):
            s.prompt_logprobs = LIMITS["prompt_logprobs"].check("prompt_logprobs", wire.prompt_logprobs)
        if wire.HasField("structured_output"):
            if s.min_new_tokens:
                raise InvalidRequest("min_new_tokens cannot be combined with structured_output: the format decides "
                                     "where the output may end")
            s.output_format = output_format(wire.structured_output)
        return s

    def sibling(self, index: int, default_seed: int, seeded: bool) -> SamplingParams:
        """Completion `index` > 0 of an n > 1 request: a seeded request's completion i draws with
        seed + i, an unseeded one with its own default seed; the prompt is scored once, by 0."""
        seed = (self.seed + index) % 2**64 if seeded else default_seed
        return dataclasses.replace(self, seed=seed, prompt_logprobs=None)

    def to_worker(self, prompt_len: int, stop_token_ids: Iterable[int]) -> worker_pb2.Sampling:
        """The worker's Sampling (worker.proto). stop_token_ids: the request's whole stop set, masked
        on the worker until min_new_tokens tokens are out."""
        bias_ids = sorted(self.logit_bias)
        out = worker_pb2.Sampling(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty, seed=self.seed, top_logprobs=self.top_logprobs,
            bias_token_ids=bias_ids, bias_values=[self.logit_bias[t] for t in bias_ids],
        )
        if self.min_new_tokens:
            out.suppress_until = prompt_len + self.min_new_tokens
            out.suppress_token_ids.extend(sorted(stop_token_ids))
        return out


@dataclass(frozen=True)
class Limit:
    """A numeric parameter's valid range, and the message that says so."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    meaning: str = ""  # what a special value means, appended to the message

    def check(self, name: str, value):
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            raise InvalidRequest(f"{name} must be a finite number (got {value})")
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if below or (self.high is not None and value > self.high):
            raise InvalidRequest(f"{name} must be {self._range()} (got {value}){self.meaning}")
        return value

    def _range(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


# optional fields of the client's message taken as they are once checked (unset: the default above)
OPTIONAL_NUMBERS: dict[str, Limit] = {
    "temperature": Limit(0, meaning="; use 0 for greedy decoding"),
    "top_p": Limit(0, 1, low_open=True),
    "top_k": Limit(0, meaning="; 0 means off"),
    "min_p": Limit(0, 1),
    "repetition_penalty": Limit(0, low_open=True, meaning="; 1 means off"),
    "frequency_penalty": Limit(-2, 2),
    "presence_penalty": Limit(-2, 2),
}
LIMITS: dict[str, Limit] = {
    **OPTIONAL_NUMBERS,
    "max_new_tokens": Limit(1),
    "top_logprobs": Limit(0, MAX_TOP_LOGPROBS, meaning="; 0 means none"),
    "prompt_logprobs": Limit(0, MAX_TOP_LOGPROBS,
                             meaning=": 0 scores each prompt token, N adds the N most likely tokens"),
    "n": Limit(1, MAX_COMPLETIONS, meaning=": the number of completions"),
    "truncate_prompt_tokens": Limit(1, meaning=": the number of the prompt's last tokens to keep"),
}


def completion_count(wire: pb.SamplingParams) -> int:
    """SamplingParams.n, checked (unset: 1)."""
    return LIMITS["n"].check("n", wire.n) if wire.HasField("n") else 1


def _logit_bias(wire: pb.SamplingParams) -> dict[int, float]:
    bias = dict(wire.logit_bias)
    if len(bias) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"logit_bias has {len(bias)} tokens; at most {MAX_LOGIT_BIAS}")
    for token, value in bias.items():
        if token < 0:
            raise InvalidRequest(f"logit_bias token id {token} is negative")
        if not -MAX_BIAS_VALUE <= Limit().check(f"logit_bias[{token}]", value) <= MAX_BIAS_VALUE:
            raise InvalidRequest(f"logit_bias[{token}] = {value} is outside [-{MAX_BIAS_VALUE:g}, {MAX_BIAS_VALUE:g}]")
    return bias
