"""What crosses the pipe between the frontend process and the engine process, and nothing else:
these dataclasses, pickled, one object a message. Both ends import this module, not each other.

frontend -> engine: Submit, Abort, StatsQuery, Stop.
engine -> frontend: Events (one message per step), EngineState (when it changes), StatsReply, Stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from litelang.proto import litelang_pb2 as pb
from litelang.scheduler.sampling_params import SamplingParams

# one position's most likely tokens: (token ids, their logprobs), most likely first
TopLogprobs = tuple[list[int], list[float]]


# ------------------------------------------------------------------ frontend -> engine


@dataclass
class NewRequest:
    """One completion to generate: tokenized, validated, its sampling resolved."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    priority: int = 0  # lower is served first (then arrival)
    arrival: float = field(default_factory=time.monotonic)  # one clock for every process on the host


@dataclass
class Submit:
    """Queue these all or none (a request's n completions); a rejection comes back as each
    one's error event."""

    requests: list[NewRequest]


@dataclass
class Abort:
    request_id: str


@dataclass
class StatsQuery:
    token: int  # echoed in the StatsReply


@dataclass
class Stop:
    """Fail what is left with UNAVAILABLE, answer Stopped, exit."""


# ------------------------------------------------------------------ engine -> frontend


@dataclass
class OutcomeDetails:
    """What the final response reports besides the tokens (the frontend sees only events, never
    the engine's Request)."""

    usage: pb.Usage
    timings: pb.Timings
    text: str          # the whole output text, stop string cut off
    stop_string: str


@dataclass
class OutputEvent:
    """New text/tokens of one request, and on its last event the outcome."""

    text: str
    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)  # one per token id (if asked for)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)  # one per token id (if asked for)
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    error: tuple[int, str] | None = None  # (grpc.StatusCode value, message) when the request failed
    outcome: OutcomeDetails | None = None  # set on the final event of a request that finished
    # with prompt_logprobs, on the request's first event: one per prompt token after the first
    prompt_logprobs: list[float] | None = None
    prompt_top_logprobs: list[TopLogprobs] | None = None

    @property
    def final(self) -> bool:
        return self.error is not None or self.finish_reason != pb.FINISH_REASON_UNSPECIFIED


@dataclass
class Events:
    """A step's events (or an abort's), in order: (request_id, event)."""

    events: list[tuple[str, OutputEvent]]


@dataclass
class EngineState:
    """Sent when it changes: whether the workers serve, their InitResponse (serialized; empty
    before the first connect) and the KV pool's size."""

    healthy: bool
    worker_info: bytes
    kv_capacity: int


@dataclass
class StatsReply:
    token: int
    stats: dict[str, int | bool]  # StatsResponse field -> value


@dataclass
class Stopped:
    """The engine failed what was left and is exiting."""
