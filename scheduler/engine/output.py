"""A step's sampled tokens into each request's output: detokenized text, the stop rules (stop
tokens, stop strings, the output limit, a completed format), the events the client streams, and
the end of a request (finished or failed) with its KV handed back."""

from __future__ import annotations

import collections
import itertools
import logging
import time
from typing import Callable

import grpc

from litelang.proto import litelang_pb2 as pb
from litelang.proto import worker_pb2
from litelang.scheduler.engine.kv.slots import KVSlots
from litelang.scheduler.engine.metrics import Metrics
from litelang.scheduler.engine.prompt_scores import attach_prompt_scores, take_prompt_scores
from litelang.scheduler.engine.queue import RequestQueue
from litelang.scheduler.engine.request import Phase, Request
from litelang.scheduler.messages import OutcomeDetails, OutputEvent, TopLogprobs
from litelang.scheduler.tokenizer import Tokenizer

log = logging.getLogger("litelang.scheduler")


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, stream_interval: int, queue: RequestQueue, kv: KVSlots,
                 stats: collections.Counter, metrics: Metrics):
        self.tokenizer, self.stream_interval = tokenizer, stream_interval
        self.queue, self.kv, self.stats, self.metrics = queue, kv, stats, metrics
        # where events go: by default each request's own queue; the engine process sends them to
        # the frontend instead, batched per step
        self.sink: Callable[[Request, OutputEvent], None] = _to_queue

    def prepare(self, req: Request) -> None:
        """At submit: what the stop rules need, resolved once (not per token)."""
        s = req.sampling
        req.detokenizer = self.tokenizer.detokenizer(s.skip_special_tokens)
        eos = () if s.ignore_eos else self.tokenizer.eos_token_ids
        req.stop_token_set = frozenset((*eos, *s.stop_token_ids))
        req.stop_hold = max((len(x) for x in s.stop), default=1) - 1

    def process(self, reply: worker_pb2.StepResponse) -> None:
        q = self.queue
        self.metrics.gauges(len(q.waiting), len(q.running), self.kv.counts())
        self.stats["steps"] += 1
        self.stats["gpu_busy_ms"] += reply.gpu_ms
        self.stats["gpu_gap_ms"] += reply.gpu_gap_ms
        now, accepted, by_rid = time.monotonic(), 0, q.by_rid
        if reply.score_rids:
            take_prompt_scores(reply, by_rid)
        tops = _top_rows(reply) if reply.top_n else itertools.repeat(None)
        for rid, token, logprob, top in zip(reply.rids, reply.token_ids, reply.logprobs, tops):
            r = by_rid.get(rid)
            if r is not None and r.phase is Phase.RUNNING:  # else stale: stopped or retracted meanwhile
                r.pending_samples -= 1
                self._append_token(r, token, logprob, now, top)
                accepted += 1
        self.stats["generated_tokens"] += accepted
        self.metrics.generated_tokens.inc(accepted)

    def _append_token(self, r: Request, token: int, logprob: float, now: float,
                      top: TopLogprobs | None = None) -> None:
        """Per token of every running request, between two steps: kept to the few checks each
        token needs (the stop set is resolved at submit, the output limit at admission).
        top: the step's alternatives at this position (top_n of them, when any were asked for)."""
        s = r.sampling
        if r.first_token is None:
            r.first_token = now
        r.output_ids.append(token)
        n = len(r.output_ids)
        finish = pb.FINISH_REASON_UNSPECIFIED
        if r.matcher and not r.matcher.accept(token):  # cannot happen while the worker applies the mask
            log.error("request %s: token %d breaks its format; failing it", r.request_id, token)
            self.fail(r, grpc.StatusCode.INTERNAL, f"token {token} does not fit the structured_output format")
            return
        if (token in r.stop_token_set and n > s.min_new_tokens) or (r.matcher and r.matcher.complete):
            finish = pb.FINISH_REASON_EOS
        else:
            piece = r.detokenizer.add(token)
            if piece:
                before = len(r.text)
                r.text += piece
                if s.stop and n > s.min_new_tokens and _cut_stop_string(r, before):
                    finish = pb.FINISH_REASON_STOP_STRING
            if not finish and n >= r.output_limit:
                finish = pb.FINISH_REASON_LENGTH
        r.unsent_ids.append(token)
        if s.logprobs:
            r.unsent_logprobs.append(logprob)
            if s.top_logprobs:
                n = s.top_logprobs
                r.unsent_top_logprobs.append((top[0][:n], top[1][:n]))
        if finish:
            self.finish(r, finish)
            return
        if len(r.unsent_ids) < self.stream_interval:
            return
        # hold back the text a stop string may be forming in
        end = max(r.emitted_chars, len(r.text) - r.stop_hold) if r.stop_hold else len(r.text)
        self._emit_first(r, OutputEvent(text=r.text[r.emitted_chars : end], token_ids=r.unsent_ids,
                                        logprobs=r.unsent_logprobs, top_logprobs=r.unsent_top_logprobs))
        r.emitted_chars = end
        r.unsent_ids, r.unsent_logprobs, r.unsent_top_logprobs = [], [], []

    def _emit_first(self, r: Request, ev: OutputEvent) -> None:
        attach_prompt_scores(r, ev)
        self.sink(r, ev)

    def finish(self, r: Request, reason: int) -> None:
        """End r with a finish reason: its last text and tokens, and the outcome."""
        self.queue.retire(r)
        self.kv.release(r)
        r.finish_reason = reason
        r.finished_at = time.monotonic()
        text = r.text[r.emitted_chars :]
        r.emitted_chars = len(r.text)
        self.stats["requests_finished"] += 1
        self.stats["prompt_tokens"] += len(r.prompt_ids)
        self.stats["cached_prompt_tokens"] += r.cached_tokens
        self.metrics.finished(r, pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower())
        outcome = OutcomeDetails(usage=r.usage(), timings=r.timings(), text=r.text, stop_string=r.stop_string)
        self._emit_first(r, OutputEvent(text=text, token_ids=r.unsent_ids, logprobs=r.unsent_logprobs,
                                        top_logprobs=r.unsent_top_logprobs, finish_reason=reason, outcome=outcome))
        r.unsent_ids, r.unsent_logprobs, r.unsent_top_logprobs = [], [], []

    def fail(self, r: Request, code: grpc.StatusCode, message: str) -> None:
        """End a request (running, or taken out of the waiting queue) with an error, its KV freed."""
        self.queue.retire(r)
        self.kv.release(r)
        self.sink(r, _error(code, message))

    def fail_all(self, code: grpc.StatusCode, message: str) -> None:
        """End every request with an error and start from an empty pool (the workers failed)."""
        for r in self.queue.clear():
            self.sink(r, _error(code, message))
        self.kv.reset(self.kv.capacity)


def _cut_stop_string(r: Request, before: int) -> bool:
    """Whether the text grown past `before` now holds a stop string; if so, cut the text there."""
    longest = max(len(x) for x in r.sampling.stop)
    start = max(0, before - longest + 1)
    hits = [(r.text.find(x, start), x) for x in r.sampling.stop]
    hits = [(i, x) for i, x in hits if i >= 0]
    if not hits:
        return False
    index, stop = min(hits)
    r.text = r.text[:index + len(stop)] if r.sampling.include_stop_str_in_output else r.text[:index]
    r.stop_string = stop
    return True


def _error(code: grpc.StatusCode, message: str) -> OutputEvent:
    return OutputEvent(text="", token_ids=[], error=(code.value[0], message))


def _to_queue(r: Request, ev: OutputEvent) -> None:
    r.events.put_nowait(ev)


def _top_rows(reply: worker_pb2.StepResponse) -> list[TopLogprobs]:
    """The reply's [len(rids), top_n] row-major alternatives (worker.proto), one row per token."""
    n, ids, values = reply.top_n, list(reply.top_ids), list(reply.top_logprobs)
    return [(ids[i : i + n], values[i : i + n]) for i in range(0, len(ids), n)]
