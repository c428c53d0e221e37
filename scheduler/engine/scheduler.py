"""What each step computes: a decode token for every running request past its prefill (retracting
requests while the pool cannot hold them all), the next prefill chunk of requests still reading
their prompt, and new requests admitted FCFS within a priority while the batch, the prefill
budget and the KV estimate (admission.PeakCheck) allow."""

from __future__ import annotations

import collections
import logging

import grpc

from litelang.configs.schema import LitelangConfig
from litelang.scheduler.engine.admission import PeakCheck
from litelang.scheduler.engine.kv.slots import KVSlots
from litelang.scheduler.engine.metrics import Metrics
from litelang.scheduler.engine.output import OutputProcessor
from litelang.scheduler.engine.queue import RequestQueue
from litelang.scheduler.engine.request import Request
from litelang.scheduler.engine.step_writer import StepWriter
from litelang.scheduler.engine.structured import RequestFormats
from litelang.scheduler.errors import InvalidRequest

log = logging.getLogger("litelang.scheduler")


class Scheduler:
    def __init__(self, cfg: LitelangConfig, queue: RequestQueue, kv: KVSlots, formats: RequestFormats,
                 output: OutputProcessor, stats: collections.Counter, metrics: Metrics):
        self.cfg, self.queue, self.kv, self.formats, self.output = cfg, queue, kv, formats, output
        self.stats, self.metrics = stats, metrics

    def schedule(self, step_id: int) -> StepWriter:
        step = StepWriter(step_id)
        budget = self.cfg.max_prefill_tokens
        self._decode(step)
        for r in self.queue.running:
            if r.in_prefill and budget > 0:
                budget -= self._extend(step, r, budget, is_new=False)
        self._admit(step, budget)
        step.release(self.queue.take_releases())
        return step

    def keep_releases(self, step: StepWriter) -> None:
        """An empty step is not sent: its releases go with the next one."""
        self.queue.to_release[:0] = step.take_back_releases()

    def _decode(self, step: StepWriter) -> None:
        """One decode slot per request past its prefill whose tokens in flight do not already
        reach its output limit; retract the newest of the highest priority value until they fit.
        (The filter is `not r.in_prefill` written out: it runs for every running request every step.)"""
        running = self.queue.running
        while True:
            decoding = [r for r in running
                        if len(r.slots) >= r.prefill_target and len(r.output_ids) + r.pending_samples < r.output_limit
                        and not (r.matcher and r.pending_samples)]  # a format's mask needs the last token
            if len(decoding) <= self.kv.available or len(running) <= 1:
                break
            self.retract(max(reversed(running), key=lambda r: r.priority))
        if decoding:
            slots = self.kv.allocate(len(decoding))
            for r, slot in zip(decoding, slots):
                r.slots.append(slot)
                r.pending_samples += 1
            step.decode(decoding, slots)

    def _admit(self, step: StepWriter, budget: int) -> None:
        q = self.queue
        peak = PeakCheck(self.kv.capacity, self.cfg.busy_scale, lambda: [
            (r.prefill_target + len(r.output_ids), r.remaining_output) for r in q.running])
        while q.waiting and len(q.running) < self.cfg.max_batch_size and budget > 0:
            r = q.waiting[0]
            try:
                if not self.formats.ready(r):
                    break
            except InvalidRequest as e:  # its format failed: the next one may go
                q.waiting.popleft()
                self.output.fail(r, grpc.StatusCode.INVALID_ARGUMENT, str(e))
                continue
            if not self._fits(r, budget, peak):
                break
            q.admit(r)
            self.kv.match_prefix(r)
            taken = self._extend(step, r, budget, is_new=True)
            if taken == 0:  # locking its prefix left no room: undo and retry next step
                q.pause(r)
                self.kv.release(r)
                break
            budget -= taken
            peak.add(r.prefill_target + len(r.output_ids), r.remaining_output)

    def _fits(self, cand: Request, budget: int, peak: PeakCheck) -> bool:
        target = len(cand.prompt_ids) + len(cand.output_ids)
        if min(budget, target) > self.kv.available:
            return False
        return peak.fits(target, cand.remaining_output, used=self.kv.capacity - self.kv.available)

    def _extend(self, step: StepWriter, r: Request, budget: int, is_new: bool) -> int:
        """Schedule r's next prompt chunk, as much as the budget and the pool allow; returns its size."""
        start, target = r.num_computed, r.prefill_target
        take = min(budget, target - start, self.kv.available)
        if take <= 0:
            return 0
        slots = self.kv.allocate(take)
        r.slots.extend(slots)
        self.kv.cache_scheduled(r)
        r.pending_samples += start + take == target
        step.extend(r, start, slots, is_new)
        return take

    def retract(self, r: Request) -> None:
        """Pause a request to free its KV; it resumes first, recomputing its context."""
        log.info("retracting request %s (%d slots) to make room", r.request_id, len(r.slots))
        self.kv.release(r)
        r.pending_samples = 0
        self.queue.to_release.append(r.rid)
        self.queue.pause(r)
        self.stats["retractions"] += 1
        self.metrics.retractions.inc()
