"""The requests the engine holds and how they move: waiting in (priority, arrival) order, running
in the batch, back to waiting when paused, gone when finished."""

from __future__ import annotations

import collections
import time

import grpc

from litelang.scheduler.engine.request import Phase, Request
from litelang.scheduler.errors import RejectedError


class RequestQueue:
    def __init__(self, max_reqs: int, max_context: int):
        self.max_reqs = max_reqs
        # prompt + output tokens a request may reach: the config's lengths, capped by the workers'
        # (the model's positions) once they are connected
        self.max_context = max_context
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.by_id: dict[str, Request] = {}
        self.by_rid: dict[int, Request] = {}
        self.to_release: list[int] = []  # rids the worker may drop, sent with the next step
        self._next_rid = 1

    def check(self, reqs: tuple[Request, ...], kv_capacity: int) -> None:
        """RejectedError unless every one of reqs can be queued now and fits the pool one day."""
        ids = [r.request_id for r in reqs]
        for rid in ids:
            if rid in self.by_id or ids.count(rid) > 1:
                raise RejectedError(grpc.StatusCode.ALREADY_EXISTS, f"request_id {rid!r} is already in flight")
        if len(self.waiting) + len(reqs) > self.max_reqs:
            room = max(self.max_reqs - len(self.waiting), 0)
            detail = "" if len(reqs) == 1 else f" (room for {room} of this request's {len(reqs)} completions)"
            raise RejectedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the waiting queue is full ({self.max_reqs} requests, max_reqs){detail}; retry later",
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
            if need > kv_capacity:
                raise RejectedError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"prompt ({len(req.prompt_ids)} tokens) + max_new_tokens ({req.sampling.max_new_tokens}) needs {need} "
                    f"KV slots but the whole pool has {kv_capacity}; shorten the prompt or lower max_new_tokens",
                )

    def add(self, req: Request) -> None:
        """Into the waiting queue behind every request of its priority or a lower value (FCFS
        within a priority; the common all-default case appends)."""
        self.by_id[req.request_id] = req
        if not self.waiting or self.waiting[-1].priority <= req.priority:
            self.waiting.append(req)
            return
        at = next(i for i, r in enumerate(self.waiting) if r.priority > req.priority)
        self.waiting.insert(at, req)

    def admit(self, r: Request) -> None:
        """The head of the waiting queue joins the batch, with a fresh worker id (replies for an
        earlier admission are stale)."""
        assert self.waiting[0] is r
        self.waiting.popleft()
        r.rid = self._next_rid
        self._next_rid += 1
        self.by_rid[r.rid] = r
        r.phase = Phase.RUNNING
        r.first_scheduled = r.first_scheduled or time.monotonic()
        r.prefill_target = len(r.prompt_ids) + len(r.output_ids)
        r.output_limit = min(r.sampling.max_new_tokens, self.max_context - len(r.prompt_ids))
        self.running.append(r)

    def pause(self, r: Request) -> None:
        """Out of the batch, back into the waiting queue ahead of every request of its priority or
        a higher value: a paused request resumes before new ones of its priority."""
        self.running.remove(r)
        self.by_rid.pop(r.rid, None)
        r.phase = Phase.WAITING
        at = next((i for i, w in enumerate(self.waiting) if w.priority >= r.priority), len(self.waiting))
        self.waiting.insert(at, r)

    def retire(self, r: Request) -> None:
        """r has ended (running, or already taken out of the waiting queue): forget it, and have
        the worker drop it."""
        if r in self.running:
            self.running.remove(r)
            self.to_release.append(r.rid)
        r.phase = Phase.FINISHED
        self.forget(r)

    def forget(self, r: Request) -> None:
        self.by_id.pop(r.request_id, None)
        self.by_rid.pop(r.rid, None)

    def clear(self) -> list[Request]:
        """Empty the queue (the workers failed); returns what it held, running ones first."""
        held = list(self.running) + list(self.waiting)
        for r in held:
            r.phase = Phase.FINISHED
            self.forget(r)
        self.running.clear()
        self.waiting.clear()
        return held

    def take_releases(self) -> list[int]:
        rids = list(self.to_release)
        self.to_release.clear()
        return rids
