"""A completion as the engine tracks it, from arrival to its final event."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field

from litelang.proto import litelang_pb2 as pb
from litelang.scheduler.messages import NewRequest, TopLogprobs
from litelang.scheduler.sampling_params import SamplingParams


class Phase(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    rid: int = 0                          # worker-protocol id; a new one at every (re)admission
    arrival: float = field(default_factory=time.monotonic)
    priority: int = 0                     # lower is served first (then arrival)
    phase: Phase = Phase.WAITING
    # KV state
    slots: list[int] = field(default_factory=list)  # slot of each context token with KV
    cached_tokens: int = 0                # prompt tokens served from the prefix cache
    tree_prefix_len: int = 0              # leading slots owned by the radix cache (matched prefix)
    tree_node: object = None              # radix node locked while running (end of its cached path)
    prefill_target: int = 0               # context tokens to compute before sampling (set at admission)
    pending_samples: int = 0              # steps in flight that will sample a token for it
    output_limit: int = 0                 # output tokens it may reach: max_new_tokens within the context (set at admission)
    # output state
    output_ids: list[int] = field(default_factory=list)
    text: str = ""                        # decoded output so far (stop strings cut off)
    emitted_chars: int = 0                # how much of text the client has been sent
    unsent_ids: list[int] = field(default_factory=list)       # generated, not yet in an event
    unsent_logprobs: list[float] = field(default_factory=list)
    unsent_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    stop_string: str = ""
    aborted: bool = False
    first_scheduled: float | None = None
    first_token: float | None = None
    finished_at: float | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # OutputEvents, when no sink takes them (tests)
    detokenizer: object = None            # IncrementalDetokenizer, set by the engine
    stop_token_set: frozenset[int] = frozenset()  # EOS (unless ignore_eos) and stop_token_ids; set by the engine
    stop_hold: int = 0                    # chars held back from streaming: a stop string may be forming
    # prompt_logprobs: the scores received so far (position p scores prompt token p + 1)
    prompt_scores: list[float] = field(default_factory=list)
    prompt_top: list[TopLogprobs] = field(default_factory=list)
    prompt_scores_sent: bool = False
    # structured outputs: the compiled format (a future until compiled), then this completion's matcher
    grammar: object = None                # concurrent.futures.Future of an xgrammar CompiledGrammar
    matcher: object = None                # structured.OutputMatcher, from admission on
    token_filter: object = None           # structured.TokenFilter (allowed_token_ids, bad_words): the matcher

    @classmethod
    def from_message(cls, new: NewRequest) -> Request:
        return cls(request_id=new.request_id, prompt_ids=new.prompt_ids, sampling=new.sampling,
                   arrival=new.arrival, priority=new.priority)

    @property
    def num_computed(self) -> int:
        """Context tokens whose KV is computed or scheduled (one slot each)."""
        return len(self.slots)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < self.prefill_target

    def context(self, start: int = 0, end: int | None = None) -> list[int]:
        """Prompt then output tokens [start:end]. The prompt list itself when that is all of it,
        a slice of it when the range lies in the prompt: no whole-context copy per call (prompts
        run to thousands of tokens, and a burst of them is scheduled while the GPU waits)."""
        n = len(self.prompt_ids)
        end = n + len(self.output_ids) if end is None else end
        if end <= n:
            return self.prompt_ids if start == 0 and end == n else self.prompt_ids[start:end]
        return (self.prompt_ids + self.output_ids)[start:end]

    @property
    def scores_prompt(self) -> bool:
        """Still scoring its prompt: its prefill computes every prompt token (no cached prefix)."""
        return self.sampling.prompt_logprobs is not None and len(self.prompt_scores) < len(self.prompt_ids) - 1

    @property
    def remaining_output(self) -> int:
        return self.sampling.max_new_tokens - len(self.output_ids)

    def usage(self) -> pb.Usage:
        return pb.Usage(
            prompt_tokens=len(self.prompt_ids), completion_tokens=len(self.output_ids), cached_tokens=self.cached_tokens
        )

    def timings(self) -> pb.Timings:
        ms = lambda t: (t - self.arrival) * 1000.0 if t is not None else 0.0  # noqa: E731
        return pb.Timings(queue_ms=ms(self.first_scheduled), ttft_ms=ms(self.first_token), total_ms=ms(self.finished_at))
