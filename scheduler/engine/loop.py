"""The engine loop: schedule a step, send it to the workers, receive the oldest reply, process it.

Runs as one asyncio task in the engine process (engine/process.py), apart from the client-facing
gRPC server, so per-stream gRPC work never delays the next step. What a step holds is the
Scheduler's choice (engine/scheduler.py); what its replies do, the OutputProcessor's.

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
from typing import Callable

import grpc

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.scheduler.engine.kv.slots import KVSlots
from litelang.scheduler.engine.metrics import Metrics
from litelang.scheduler.engine.output import OutputProcessor
from litelang.scheduler.engine.queue import RequestQueue
from litelang.scheduler.engine.request import Phase, Request
from litelang.scheduler.engine.scheduler import Scheduler
from litelang.scheduler.engine.step_writer import StepWriter
from litelang.scheduler.engine.structured import RequestFormats
from litelang.scheduler.engine.worker_client import WorkerError, WorkerGroup
from litelang.scheduler.errors import RejectedError
from litelang.scheduler.tokenizer import Tokenizer
from litelang.utils.profiling import StepTrace

log = logging.getLogger("litelang.scheduler")

# check every slot (not just the counts) whenever the engine goes idle; O(pool size)
CHECK_SLOTS_WHEN_IDLE = os.environ.get("LITELANG_CHECK_SLOTS", "") == "1"
# A step reading this many prompt tokens runs long (~4 ms and up at 1.5B on an H100) beside the
# engine's time per step, so no step is queued behind it: a request arriving meanwhile then
# waits for that step only, not for the ones queued after it too.
LONG_STEP_TOKENS = int(os.environ.get("LITELANG_LONG_STEP_TOKENS", "512"))


class Engine:
    def __init__(self, cfg: LitelangConfig, tokenizer: Tokenizer, workers: WorkerGroup):
        self.cfg, self.workers = cfg, workers
        self.healthy = False
        self.stats = collections.Counter()
        self.metrics = Metrics()
        self._wake = asyncio.Event()
        self.queue = RequestQueue(cfg.max_reqs, cfg.max_context)
        self.kv = KVSlots(cfg.use_radix_cache)
        self.formats = RequestFormats(tokenizer, self._wake)
        self.output = OutputProcessor(tokenizer, cfg.stream_interval, self.queue, self.kv, self.stats, self.metrics)
        self.scheduler = Scheduler(cfg, self.queue, self.kv, self.formats, self.output, self.stats, self.metrics)
        # per step sent whose reply is not processed yet: the prompt tokens it reads
        self.inflight: collections.deque[int] = collections.deque()
        self._step_ids = itertools.count()
        self._task: asyncio.Task | None = None
        self.trace = StepTrace("engine")  # LITELANG_STEP_TRACE_DIR: per-step timestamps
        self.on_flush: Callable[[], None] = lambda: None  # end of a batch of events (a step's, an abort's)
        self.on_idle: Callable[[], None] = lambda: None  # the loop is about to sleep until work arrives
        self.on_sent: Callable[[], None] = lambda: None  # a step was just sent (the GPU has work queued)

    # ------------------------------------------------------------ what the engine process calls

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
        self.formats.close()
        self.output.fail_all(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        self.on_flush()

    def submit(self, *reqs: Request) -> None:
        """Queue validated requests (one, or a request's n completions) all or none: raise
        RejectedError at once if any cannot be queued (never admit to fail later, never queue
        part of a request)."""
        if not self.healthy:
            raise RejectedError(grpc.StatusCode.UNAVAILABLE, "the workers are not ready (starting or restarting); retry shortly")
        self.queue.check(reqs, self.kv.capacity)
        for req in reqs:
            self.output.prepare(req)
            self.formats.prepare(req)
            self.queue.add(req)
            self.stats["requests_received"] += 1
        self._wake.set()

    def abort(self, request_id: str) -> bool:
        req = self.queue.by_id.get(request_id)
        if req is None or req.phase is Phase.FINISHED:
            return False
        req.aborted = True
        if req.phase is Phase.WAITING:
            self.queue.waiting.remove(req)
            self.output.finish(req, pb.FINISH_REASON_ABORTED)
        self.on_flush()
        self._wake.set()  # running ones are finished at the top of the next iteration
        return True

    def snapshot(self) -> dict[str, int | bool]:
        """The figures of the GetStats RPC (field name -> value)."""
        kv = self.kv.counts()
        names = ("requests_finished", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "steps",
                 "gpu_busy_ms", "gpu_gap_ms", "retractions")
        return dict(
            waiting=len(self.queue.waiting), running=len(self.queue.running), kv_capacity=kv["capacity"],
            kv_free=kv["free"], kv_cached=kv["cached"], kv_in_use=kv["in_use"], worker_healthy=self.healthy,
            **{name: self.stats[name] for name in names},
        )

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while True:
            self.on_flush()
            if not self.workers.connected:
                await self._connect()
                continue
            for req in [r for r in self.queue.running if r.aborted]:
                self.output.finish(req, pb.FINISH_REASON_ABORTED)
            if not (self.queue.running or self.queue.waiting or self.inflight):
                await self._sleep()
                continue
            step = self._schedule()
            try:
                if step.empty:
                    await self._wait_for_work(step)
                else:
                    await self._send(step)
                while self._pipeline_full():
                    await self._receive()
            except WorkerError as e:
                self._workers_failed(e)

    def _schedule(self) -> StepWriter:
        step_id = next(self._step_ids)
        self.trace.mark(step_id, "schedule")
        return self.scheduler.schedule(step_id)

    async def _send(self, step: StepWriter) -> None:
        await self.workers.send(step.step)
        self.trace.mark(step.step.step_id, "sent")
        self.on_sent()
        self.inflight.append(step.prompt_tokens)

    async def _receive(self) -> None:
        reply = await self.workers.receive()
        self.trace.mark(reply.step_id, "reply")
        self.inflight.popleft()
        self.output.process(reply)
        self.trace.mark(reply.step_id, "processed")

    async def _wait_for_work(self, step: StepWriter) -> None:
        """Nothing new can run (waiting requests that do not fit yet, formats still compiling):
        take the oldest reply, or sleep until something changes when none is in flight."""
        self.scheduler.keep_releases(step)
        if self.inflight:
            await self._receive()
        else:
            self._wake.clear()
            await self._go_idle()

    def _pipeline_full(self) -> bool:
        """Whether to process a reply before scheduling again: up to `pipeline_depth` steps stay in
        flight, but nothing is queued behind a long one (docs/ARCHITECTURE.md, overlap)."""
        return bool(self.inflight) and (len(self.inflight) >= self.cfg.pipeline_depth
                                        or max(self.inflight) >= LONG_STEP_TOKENS)

    async def _sleep(self) -> None:
        """No request and no step in flight: check the pool, show it idle, sleep until work."""
        self.kv.check_invariant(self.queue.running, full=CHECK_SLOTS_WHEN_IDLE)
        self.metrics.gauges(0, 0, self.kv.counts())  # else they would show the last step's
        self._wake.clear()
        await self._go_idle()

    async def _go_idle(self) -> None:
        """End the batch of events, run the idle hook (the garbage policy), sleep until work."""
        self.on_flush()
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
            self.output.fail_all(grpc.StatusCode.UNAVAILABLE, "a worker failed; retry the request")

    def _workers_failed(self, e: WorkerError) -> None:
        log.error("%s; failing %d running requests", e, len(self.queue.running))
        self.healthy = False
        self.inflight.clear()
        self.output.fail_all(grpc.StatusCode.UNAVAILABLE, f"a worker failed ({e}); retry the request")

    async def _connect(self) -> None:
        try:
            info = await self.workers.connect()
        except WorkerError as e:
            log.warning("%s; retrying", e)
            await asyncio.sleep(1.0)
            return
        self.kv.reset(int(info.kv_slots))
        self.queue.max_context = min(self.cfg.max_context, int(info.max_context) or self.cfg.max_context)
        self.formats.vocab_size = int(info.vocab_size)
        self.queue.to_release.clear()
        self.inflight.clear()
        self.healthy = True
