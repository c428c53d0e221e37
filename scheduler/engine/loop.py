"""The scheduling loop: admit, batch, step the workers, stream tokens back.

Runs as one asyncio task in the engine process (scheduler/engine_process.py), apart from the
client-facing gRPC server, so per-stream gRPC work never delays the next step. Each
iteration builds one StepRequest: a decode token for every running request past its prefill,
the next prefill chunk of requests still reading their prompt, and new requests admitted FCFS
while the batch, the prefill budget and the KV estimate allow.

Overlap: step N+1 is sent before step N's tokens are processed (the worker feeds each request
its last sampled token from the GPU), so the GPU does not wait for this loop. The price: a
request that stops at step N (EOS, stop string) also ran in step N+1; that token is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
from typing import Callable

import grpc

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.proto import worker_pb2
from litelang.scheduler.admission import PeakCheck
from litelang.scheduler.kv_allocator import SlotAllocator
from litelang.scheduler.metrics import Metrics
from litelang.scheduler.radix_cache import RadixCache
from litelang.scheduler.request import OutcomeDetails, OutputEvent, Phase, Request, TopLogprobs
from litelang.scheduler.structured import GrammarCompiler, OutputMatcher, TokenFilter, add_token_mask, bad_word_token_ids
from litelang.scheduler.tokenizer import Tokenizer
from litelang.scheduler.worker_client import WorkerError, WorkerGroup
from litelang.tools.profiling import StepTrace

log = logging.getLogger("litelang.scheduler")

# check every slot (not just the counts) whenever the engine goes idle; O(pool size)
CHECK_SLOTS_WHEN_IDLE = os.environ.get("LITELANG_CHECK_SLOTS", "") == "1"
# A step reading this many prompt tokens runs long (~4 ms and up at 1.5B on an H100) beside the
# engine's time per step, so no step is queued behind it: a request arriving meanwhile then
# waits for that step only, not for the ones queued after it too.
LONG_STEP_TOKENS = int(os.environ.get("LITELANG_LONG_STEP_TOKENS", "512"))


class RejectedError(Exception):
    """A request the server cannot take now; carries the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class Engine:
    def __init__(self, cfg: LitelangConfig, tokenizer: Tokenizer, workers: WorkerGroup):
        self.cfg, self.tokenizer, self.workers = cfg, tokenizer, workers
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.by_id: dict[str, Request] = {}
        self.by_rid: dict[int, Request] = {}
        self.allocator = SlotAllocator(0)
        self.cache: RadixCache | None = None
        self.healthy = False
        self.stats = collections.Counter()
        self.metrics = Metrics()
        self._to_release: list[int] = []
        self._step_masks: dict[bytes, int] = {}  # the step being built: its distinct token masks -> index
        # per step sent whose reply is not processed yet: the prompt tokens it reads
        self._inflight: collections.deque[int] = collections.deque()
        # prompt + output tokens a request may reach: the config's lengths, capped by the workers'
        # (the model's positions) once they are connected
        self.max_context = cfg.max_context
        self.vocab_size = 0  # the model's, once the workers are connected
        self._grammars: GrammarCompiler | None = None  # structured outputs: made on first use
        self._next_rid = 1
        self._step_id = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.trace = StepTrace("engine")  # LITELANG_STEP_TRACE_DIR: per-step timestamps
        # where events go: by default each request's own queue; the engine process sends them
        # to the frontend instead, batched per step (`on_flush`)
        self.sink: Callable[[Request, OutputEvent], None] = _to_queue
        self.on_flush: Callable[[], None] = lambda: None
        self.on_idle: Callable[[], None] = lambda: None  # the loop is about to sleep until work arrives
        self.on_sent: Callable[[], None] = lambda: None  # a step was just sent (the GPU has work queued)

    # ------------------------------------------------------------ public API

    def start(self) -> None:
        """Run the loop as a task of the current event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.workers.close()
        self.trace.close()
        if self._grammars is not None:
            self._grammars.close()
        self._fail_all(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        self._flush()

    @property
    def capacity(self) -> int:
        return self.allocator.capacity

    def submit(self, *reqs: Request) -> None:
        """Queue validated requests (one, or a request's n completions) all or none: raise
        RejectedError at once if any cannot be queued (never admit to fail later, never queue
        part of a request)."""
        self._check(reqs)
        for req in reqs:
            self._enqueue(req)
        self._wake.set()

    def _check(self, reqs: tuple[Request, ...]) -> None:
        if not self.healthy:
            raise RejectedError(grpc.StatusCode.UNAVAILABLE, "the workers are not ready (starting or restarting); retry shortly")
        ids = [r.request_id for r in reqs]
        for rid in ids:
            if rid in self.by_id or ids.count(rid) > 1:
                raise RejectedError(grpc.StatusCode.ALREADY_EXISTS, f"request_id {rid!r} is already in flight")
        if len(self.waiting) + len(reqs) > self.cfg.max_reqs:
            room = max(self.cfg.max_reqs - len(self.waiting), 0)
            detail = "" if len(reqs) == 1 else f" (room for {room} of this request's {len(reqs)} completions)"
            raise RejectedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the waiting queue is full ({self.cfg.max_reqs} requests, max_reqs){detail}; retry later",
            )
        for req in reqs:
            if len(req.prompt_ids) >= self.max_context:
                raise RejectedError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the prompt has {len(req.prompt_ids)} tokens but this server's context holds {self.max_context} "
                    f"(prompt and output together, the model's positions or max_input_length + max_output_length); "
                    f"send at most {self.max_context - 1} prompt tokens",
                )
            need = len(req.prompt_ids) + req.sampling.max_new_tokens
            if need > self.capacity:
                raise RejectedError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"prompt ({len(req.prompt_ids)} tokens) + max_new_tokens ({req.sampling.max_new_tokens}) needs {need} "
                    f"KV slots but the whole pool has {self.capacity}; shorten the prompt or lower max_new_tokens",
                )

    def _enqueue(self, req: Request) -> None:
        self.by_id[req.request_id] = req
        s = req.sampling
        req.detokenizer = self.tokenizer.detokenizer(s.skip_special_tokens)
        eos = () if s.ignore_eos else self.tokenizer.eos_token_ids
        req.stop_token_set = frozenset((*eos, *s.stop_token_ids))
        req.stop_hold = max((len(x) for x in s.stop), default=1) - 1
        if s.allowed_token_ids or s.bad_words:  # masks like a format's (a format's too, ANDed: _format_ready)
            req.token_filter = TokenFilter(self.vocab_size, s.allowed_token_ids,
                                           bad_word_token_ids(self.tokenizer.encode, s.bad_words))
        if s.output_format is not None:
            self._compile_format(req)
        elif req.token_filter is not None:
            req.matcher = req.token_filter
        self._queue(req)
        self.stats["requests_received"] += 1

    def _compile_format(self, req: Request) -> None:
        """Start compiling the request's format off the loop; it is admitted once that is done
        (the loop wakes up for it)."""
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer.hf, self.vocab_size, self.tokenizer.eos_token_ids)
        req.grammar = self._grammars.compile(req.sampling.output_format)
        loop = asyncio.get_running_loop()
        req.grammar.add_done_callback(lambda _: loop.call_soon_threadsafe(self._wake.set))

    def _format_ready(self, r: Request) -> bool:
        """Whether r may be admitted as far as its format goes: none, or compiled (its matcher
        made). A format that failed to compile fails the request."""
        if r.grammar is None or r.matcher is not None:
            return True
        if not r.grammar.done():
            return False
        error = r.grammar.exception()
        if error is not None:
            self.waiting.remove(r)
            self._fail(r, grpc.StatusCode.INVALID_ARGUMENT, f"structured_output does not compile: {error}")
            return False
        r.matcher = OutputMatcher(r.grammar.result())
        if r.token_filter is not None:
            r.token_filter.inner, r.matcher = r.matcher, r.token_filter
        return True

    def _queue(self, req: Request) -> None:
        """Into the waiting queue behind every request of its priority or a lower value (FCFS
        within a priority; the common all-default case appends)."""
        if not self.waiting or self.waiting[-1].priority <= req.priority:
            self.waiting.append(req)
            return
        at = next(i for i, r in enumerate(self.waiting) if r.priority > req.priority)
        self.waiting.insert(at, req)

    def _requeue(self, req: Request) -> None:
        """Back into the waiting queue ahead of every request of its priority or a higher value:
        a paused request resumes before new ones of its priority."""
        at = next((i for i, r in enumerate(self.waiting) if r.priority >= req.priority), len(self.waiting))
        self.waiting.insert(at, req)

    def abort(self, request_id: str) -> bool:
        req = self.by_id.get(request_id)
        if req is None or req.phase is Phase.FINISHED:
            return False
        req.aborted = True
        if req.phase is Phase.WAITING:
            self.waiting.remove(req)
            self._finish(req, pb.FINISH_REASON_ABORTED)
        self._flush()
        self._wake.set()  # running ones are finished at the top of the next iteration
        return True

    def _emit(self, r: Request, ev: OutputEvent) -> None:
        self.sink(r, ev)

    def _flush(self) -> None:
        """End of a batch of events (a step's, an abort's): let the sink send them together."""
        self.on_flush()

    def snapshot(self) -> dict[str, int | bool]:
        """The figures of the GetStats RPC (field name -> value)."""
        kv = self.kv_counts()
        names = ("requests_finished", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "steps",
                 "gpu_busy_ms", "gpu_gap_ms", "retractions")
        return dict(
            waiting=len(self.waiting), running=len(self.running), kv_capacity=kv["capacity"], kv_free=kv["free"],
            kv_cached=kv["cached"], kv_in_use=kv["in_use"], worker_healthy=self.healthy,
            **{name: self.stats[name] for name in names},
        )

    def kv_counts(self) -> dict[str, int]:
        free = self.allocator.num_free
        cached = self.cache.size if self.cache else 0
        return {"capacity": self.capacity, "free": free, "cached": cached, "in_use": self.capacity - free - cached}

    def _reset_kv(self, capacity: int) -> None:
        self.allocator = SlotAllocator(capacity)
        self.cache = RadixCache() if self.cfg.use_radix_cache else None

    @property
    def _available(self) -> int:
        """Slots that can be handed out now: free, or held only by unlocked cache entries."""
        return self.allocator.num_free + (self.cache.evictable if self.cache else 0)

    def _allocate(self, n: int) -> list[int]:
        short = n - self.allocator.num_free
        if short > 0 and self.cache is not None:
            self.allocator.free(self.cache.evict(short))
        return self.allocator.allocate(n)

    def _match_prefix(self, r: Request) -> None:
        """Reuse the cached KV of r's longest cached prefix (always computing its last token)."""
        if self.cache is None:
            return
        context = r.context()
        # a prompt being scored is computed in full: every position's logits are needed
        slots, node = self.cache.match(context, end=0 if r.scores_prompt else len(context) - 1)
        self.cache.lock(node)
        r.slots, r.tree_prefix_len, r.tree_node = slots, len(slots), node
        r.cached_tokens = max(r.cached_tokens, min(len(slots), len(r.prompt_ids)))

    def _cache_scheduled(self, r: Request) -> None:
        """Put r's scheduled context into the radix cache now, not at finish, so requests
        admitted later (in this step too) share it at once: GPU order makes its KV ready before
        they read it. It hangs below r's own locked path; skipped when another request already
        cached a continuation of that path: the duplicate slots stay r's own until it finishes."""
        if self.cache is None or r.tree_node is None:
            return
        start, end = r.tree_prefix_len, len(r.slots)
        leaf = self.cache.extend(r.tree_node, r.context(start, end), r.slots[start:end])
        if leaf is None:
            return
        self.cache.lock(leaf)
        self.cache.unlock(r.tree_node)
        r.tree_node, r.tree_prefix_len = leaf, end

    def _release_kv(self, r: Request) -> None:
        """Hand r's KV to the radix cache (or the free list), keeping no slot twice."""
        if self.cache is None:
            self.allocator.free(r.slots)
        else:
            ids = r.context(0, len(r.slots))
            known = len(ids)
            present = self.cache.insert(ids, r.slots[:known])
            # between the matched prefix and `present`, our slots duplicate KV the tree already has;
            # past `known`, slots of steps still in flight hold KV of tokens never seen here. Both
            # can be reused at once: any new owner writes them in a later step, so after the GPU
            # has finished with them here.
            self.allocator.free(r.slots[r.tree_prefix_len : present] + r.slots[known:])
            if r.tree_node is not None:
                self.cache.unlock(r.tree_node)
        r.slots, r.tree_prefix_len, r.tree_node = [], 0, None

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while True:
            self._flush()
            if not self.workers.connected:
                await self._connect()
                continue
            for req in [r for r in self.running if r.aborted]:
                self._finish(req, pb.FINISH_REASON_ABORTED)
            idle = not self.running and not self.waiting and not self._inflight
            if idle:
                self.check_invariant(full=CHECK_SLOTS_WHEN_IDLE)
                self.metrics.gauges(0, 0, self.kv_counts())  # else they would show the last step's
                self._wake.clear()
            else:
                step = self._schedule()
                if not (step.extends or step.decode_rids):
                    self._restore_release(step)
                    if not self._inflight:
                        self._wake.clear()  # about to sleep until something changes
            if idle:
                await self._go_idle()
                continue
            try:
                if step.extends or step.decode_rids:
                    await self.workers.send(step)
                    self.trace.mark(step.step_id, "sent")
                    self.on_sent()
                    self._inflight.append(sum(len(e.token_ids) for e in step.extends))
                elif not self._inflight:  # nothing runnable until something arrives
                    await self._go_idle()
                    continue
                if not (step.extends or step.decode_rids):  # nothing new to run: wait for the oldest step
                    await self._receive()
                while self._pipeline_full():
                    await self._receive()
            except WorkerError as e:
                log.error("%s; failing %d running requests", e, len(self.running))
                self.healthy = False
                self._inflight.clear()
                self._fail_all(grpc.StatusCode.UNAVAILABLE, f"a worker failed ({e}); retry the request")

    def _pipeline_full(self) -> bool:
        """Whether to process a reply before scheduling again: up to `pipeline_depth` steps stay in
        flight, but nothing is queued behind a long one (docs/ARCHITECTURE.md, overlap)."""
        return bool(self._inflight) and (len(self._inflight) >= self.cfg.pipeline_depth
                                         or max(self._inflight) >= LONG_STEP_TOKENS)

    async def _receive(self) -> None:
        reply = await self.workers.receive()
        self.trace.mark(reply.step_id, "reply")
        self._inflight.popleft()
        self._process(reply)
        self.trace.mark(reply.step_id, "processed")

    async def _go_idle(self) -> None:
        """End the batch of events (_flush), run the idle hook (the garbage policy), sleep until work."""
        self._flush()
        self.on_idle()
        await self._idle_wait()

    async def _idle_wait(self) -> None:
        """Sleep until a request arrives or a worker's stream breaks (a worker can die while idle).
        _wake was cleared on this loop after the last check for work, and submits run on this
        loop too, so one cannot slip in between."""
        wake = asyncio.ensure_future(self._wake.wait())
        broken = asyncio.ensure_future(self.workers.broken.wait())
        await asyncio.wait([wake, broken], return_when=asyncio.FIRST_COMPLETED)
        wake.cancel()
        broken.cancel()
        if self.workers.broken.is_set() and self.workers.connected:
            log.error("a worker's Step stream ended while idle; reconnecting")
            self.healthy = False
            await self.workers.close()
            self._fail_all(grpc.StatusCode.UNAVAILABLE, "a worker failed; retry the request")

    def _restore_release(self, step: worker_pb2.StepRequest) -> None:
        """An empty step is not sent: keep its releases for the next one."""
        self._to_release[:0] = list(step.release)

    async def _connect(self) -> None:
        try:
            info = await self.workers.connect()
        except WorkerError as e:
            log.warning("%s; retrying", e)
            await asyncio.sleep(1.0)
            return
        self._reset_kv(int(info.kv_slots))
        self.max_context = min(self.cfg.max_context, int(info.max_context) or self.cfg.max_context)
        self.vocab_size = int(info.vocab_size)
        self._to_release.clear()
        self._inflight.clear()
        self.healthy = True

    # ------------------------------------------------------------ scheduling

    def _schedule(self) -> worker_pb2.StepRequest:
        step = worker_pb2.StepRequest(step_id=self._step_id)
        self._step_id += 1
        self.trace.mark(step.step_id, "schedule")
        budget = self.cfg.max_prefill_tokens
        self._step_masks = {}

        # 1. one decode slot per request past its prefill whose tokens in flight do not already
        # reach its output limit; retract the newest of the highest priority value until they
        # fit. (The filter is `not r.in_prefill` written out: it runs for every running request
        # every step.)
        while True:
            decoding = [r for r in self.running
                        if len(r.slots) >= r.prefill_target and len(r.output_ids) + r.pending_samples < r.output_limit
                        and not (r.matcher and r.pending_samples)]  # a format's mask needs the last token
            if len(decoding) <= self._available or len(self.running) <= 1:
                break
            self._retract(max(reversed(self.running), key=lambda r: r.priority))
        if decoding:
            slots = self._allocate(len(decoding))
            for r, slot in zip(decoding, slots):
                r.slots.append(slot)
                r.pending_samples += 1
            step.decode_rids.extend([r.rid for r in decoding])
            step.decode_slots.extend(slots)
            for r in decoding:
                if r.matcher:
                    add_token_mask(step, r.rid, r.matcher.allowed(), self._step_masks)

        # 2. next chunks of prompts being read
        for r in self.running:
            if r.in_prefill and budget > 0:
                budget -= self._add_extend(step, r, budget, is_new=False)

        # 3. admit new requests FCFS
        peak = PeakCheck(self.capacity, self.cfg.busy_scale, lambda: [
            (r.prefill_target + len(r.output_ids), r.remaining_output) for r in self.running])
        while self.waiting and len(self.running) < self.cfg.max_batch_size and budget > 0:
            r = self.waiting[0]
            if not self._format_ready(r):
                if r.phase is Phase.FINISHED:  # its format failed: the next one may go
                    continue
                break
            if not self._fits(r, budget, peak):
                break
            self.waiting.popleft()
            r.rid = self._next_rid  # fresh per admission: replies for an earlier admission are stale
            self._next_rid += 1
            self.by_rid[r.rid] = r
            self._match_prefix(r)
            r.phase = Phase.RUNNING
            r.first_scheduled = r.first_scheduled or time.monotonic()
            r.prefill_target = len(r.prompt_ids) + len(r.output_ids)
            r.output_limit = min(r.sampling.max_new_tokens, self.max_context - len(r.prompt_ids))
            self.running.append(r)
            taken = self._add_extend(step, r, budget, is_new=True)
            if taken == 0:  # locking its prefix left no room: undo and retry next step
                self._unadmit(r)
                break
            budget -= taken
            peak.add(r.prefill_target + len(r.output_ids), r.remaining_output)

        step.release.extend(self._to_release)
        self._to_release.clear()
        return step

    def _unadmit(self, r: Request) -> None:
        self.running.remove(r)
        self.by_rid.pop(r.rid, None)
        self._release_kv(r)
        r.phase = Phase.WAITING
        self._requeue(r)

    def _fits(self, cand: Request, budget: int, peak: PeakCheck) -> bool:
        target = len(cand.prompt_ids) + len(cand.output_ids)
        if min(budget, target) > self._available:
            return False
        return peak.fits(target, cand.remaining_output, used=self.capacity - self._available)

    def _add_extend(self, step: worker_pb2.StepRequest, r: Request, budget: int, is_new: bool) -> int:
        start, target = r.num_computed, r.prefill_target
        take = min(budget, target - start, self._available)
        if take <= 0:
            return 0
        slots = self._allocate(take)
        r.slots.extend(slots)
        self._cache_scheduled(r)
        r.pending_samples += start + take == target
        ext = step.extends.add(
            rid=r.rid, token_ids=r.context(start, start + take), slots=slots, prefix_len=start,
            sample=start + take == target, is_new=is_new, prefix_slots=r.slots[:start] if is_new else [],
        )
        if r.matcher and ext.sample:
            add_token_mask(step, r.rid, r.matcher.allowed(), self._step_masks)
        if r.scores_prompt and start < len(r.prompt_ids) - 1:
            end = start + take
            ext.score, ext.score_top_n = True, r.sampling.prompt_logprobs
            ext.score_next_token = r.prompt_ids[end] if end < len(r.prompt_ids) else -1
        if is_new:
            s = r.sampling
            ext.sampling.CopyFrom(worker_pb2.Sampling(
                temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                repetition_penalty=s.repetition_penalty, frequency_penalty=s.frequency_penalty,
                presence_penalty=s.presence_penalty, seed=s.seed, top_logprobs=s.top_logprobs,
                bias_token_ids=sorted(s.logit_bias), bias_values=[s.logit_bias[t] for t in sorted(s.logit_bias)],
            ))
            if s.min_new_tokens:  # the worker masks stop tokens until the minimum is reached
                ext.sampling.suppress_until = len(r.prompt_ids) + s.min_new_tokens
                ext.sampling.suppress_token_ids.extend(sorted(r.stop_token_set))
            if s.repetition_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
                ext.prompt_ids.extend(r.prompt_ids)
                ext.generated_ids.extend(r.output_ids)
        return take

    def _retract(self, r: Request) -> None:
        """Pause a request to free its KV; it resumes first, recomputing its context."""
        log.info("retracting request %s (%d slots) to make room", r.request_id, len(r.slots))
        self.running.remove(r)
        self._release_kv(r)
        r.phase = Phase.WAITING
        r.pending_samples = 0
        self._to_release.append(r.rid)
        self.by_rid.pop(r.rid, None)
        self._requeue(r)
        self.stats["retractions"] += 1
        self.metrics.retractions.inc()

    # ------------------------------------------------------------ results

    def _process(self, reply: worker_pb2.StepResponse) -> None:
        self.metrics.gauges(len(self.waiting), len(self.running), self.kv_counts())
        self.stats["steps"] += 1
        self.stats["gpu_busy_ms"] += reply.gpu_ms
        self.stats["gpu_gap_ms"] += reply.gpu_gap_ms
        now, accepted, by_rid = time.monotonic(), 0, self.by_rid
        if reply.score_rids:
            self._take_prompt_scores(reply)
        tops = _top_rows(reply) if reply.top_n else itertools.repeat(None)
        for rid, token, logprob, top in zip(reply.rids, reply.token_ids, reply.logprobs, tops):
            r = by_rid.get(rid)
            if r is not None and r.phase is Phase.RUNNING:  # else stale: stopped or retracted meanwhile
                r.pending_samples -= 1
                self._append_token(r, token, logprob, now, top)
                accepted += 1
        self.stats["generated_tokens"] += accepted
        self.metrics.generated_tokens.inc(accepted)

    def _take_prompt_scores(self, reply: worker_pb2.StepResponse) -> None:
        """Keep each scored position that continues a request's prompt scores (a chunk scored
        again after a retraction, or a position past the prompt, is skipped)."""
        n, offset = reply.score_top_n, 0
        for rid, first, count in zip(reply.score_rids, reply.score_first_positions, reply.score_counts):
            r = self.by_rid.get(rid)
            for k in range(count):
                p = first + k
                if r is not None and p == len(r.prompt_scores) and p < len(r.prompt_ids) - 1:
                    r.prompt_scores.append(reply.score_logprobs[offset + k])
                    if r.sampling.prompt_logprobs:
                        row = (offset + k) * n
                        m = r.sampling.prompt_logprobs
                        r.prompt_top.append((list(reply.score_top_ids[row : row + m]),
                                             list(reply.score_top_logprobs[row : row + m])))
            offset += count

    def _emit_first(self, r: Request, ev: OutputEvent) -> None:
        """_emit, with the prompt's scores on the request's first event when it asked for them."""
        if r.sampling.prompt_logprobs is not None and not r.prompt_scores_sent:
            r.prompt_scores_sent = True
            ev.prompt_logprobs = r.prompt_scores
            ev.prompt_top_logprobs = r.prompt_top if r.sampling.prompt_logprobs else None
        self._emit(r, ev)

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
            self._fail(r, grpc.StatusCode.INTERNAL, f"token {token} does not fit the structured_output format")
            return
        if (token in r.stop_token_set and n > s.min_new_tokens) or (r.matcher and r.matcher.complete):
            finish = pb.FINISH_REASON_EOS
        else:
            piece = r.detokenizer.add(token)
            if piece:
                before = len(r.text)
                r.text += piece
                if s.stop and n > s.min_new_tokens and self._cut_stop_string(r, before):
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
            self._finish(r, finish)
            return
        if len(r.unsent_ids) < self.cfg.stream_interval:
            return
        # hold back the text a stop string may be forming in
        end = max(r.emitted_chars, len(r.text) - r.stop_hold) if r.stop_hold else len(r.text)
        self._emit_first(r, OutputEvent(text=r.text[r.emitted_chars : end], token_ids=r.unsent_ids,
                                        logprobs=r.unsent_logprobs, top_logprobs=r.unsent_top_logprobs))
        r.emitted_chars = end
        r.unsent_ids, r.unsent_logprobs, r.unsent_top_logprobs = [], [], []

    def _cut_stop_string(self, r: Request, before: int) -> bool:
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

    def _finish(self, r: Request, reason: int) -> None:
        if r in self.running:
            self.running.remove(r)
            self._to_release.append(r.rid)
        self._release_kv(r)
        r.phase = Phase.FINISHED
        r.finish_reason = reason
        r.finished_at = time.monotonic()
        text = r.text[r.emitted_chars :]
        r.emitted_chars = len(r.text)
        self._forget(r)
        self.stats["requests_finished"] += 1
        self.stats["prompt_tokens"] += len(r.prompt_ids)
        self.stats["cached_prompt_tokens"] += r.cached_tokens
        self.metrics.finished(r, pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower())
        outcome = OutcomeDetails(usage=r.usage(), timings=r.timings(), text=r.text, stop_string=r.stop_string)
        self._emit_first(r, OutputEvent(text=text, token_ids=r.unsent_ids, logprobs=r.unsent_logprobs,
                                        top_logprobs=r.unsent_top_logprobs, finish_reason=reason, outcome=outcome))
        r.unsent_ids, r.unsent_logprobs, r.unsent_top_logprobs = [], [], []

    def _forget(self, r: Request) -> None:
        self.by_id.pop(r.request_id, None)
        self.by_rid.pop(r.rid, None)

    def _fail(self, r: Request, code: grpc.StatusCode, message: str) -> None:
        """End a request (running, or taken out of the waiting queue) with an error, its KV freed."""
        if r in self.running:
            self.running.remove(r)
            self._to_release.append(r.rid)
        self._release_kv(r)
        r.phase = Phase.FINISHED
        self._forget(r)
        self._emit(r, OutputEvent(text="", token_ids=[], error=(code.value[0], message)))

    def _fail_all(self, code: grpc.StatusCode, message: str) -> None:
        for r in list(self.running) + list(self.waiting):
            r.phase = Phase.FINISHED
            self._forget(r)
            self._emit(r, OutputEvent(text="", token_ids=[], error=(code.value[0], message)))
        self.running.clear()
        self.waiting.clear()
        self._reset_kv(self.capacity)

    def check_invariant(self, full: bool = True) -> None:
        """free + cached + in use == capacity; with `full`, also that every slot is accounted for
        exactly once (O(capacity): tests and LITELANG_CHECK_SLOTS=1, not production idles)."""
        own = [s for r in self.running for s in r.slots[r.tree_prefix_len :]]
        cached_count = self.cache.size if self.cache else 0
        if not full:
            if self.allocator.num_free + cached_count + len(own) != self.capacity:
                raise AssertionError(
                    f"KV slot leak: {self.allocator.num_free} free + {cached_count} cached + {len(own)} in use "
                    f"!= {self.capacity} capacity"
                )
            return
        cached = self.cache.all_slots() if self.cache else []
        free = self.allocator.free_slots()
        total = len(free) + len(cached) + len(own)
        if total != self.capacity or len(set(free) | set(own) | set(cached)) != self.capacity:
            raise AssertionError(
                f"KV slot leak: {len(free)} free + {len(cached)} cached + {len(own)} in use != {self.capacity} "
                "capacity, or a slot is counted twice"
            )


def _to_queue(r: Request, ev: OutputEvent) -> None:
    r.events.put_nowait(ev)


def _top_rows(reply: worker_pb2.StepResponse) -> list[TopLogprobs]:
    """The reply's [len(rids), top_n] row-major alternatives (worker.proto), one row per token."""
    n, ids, values = reply.top_n, list(reply.top_ids), list(reply.top_logprobs)
    return [(ids[i : i + n], values[i : i + n]) for i in range(0, len(ids), n)]
