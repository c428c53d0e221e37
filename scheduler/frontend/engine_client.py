"""The frontend's end of the pipe to the engine process (which it starts): requests go out as
scheduler/messages.py's messages, each request's events come back onto its own queue."""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc

from litelang.configs.schema import LitelangConfig
from litelang.proto import worker_pb2
from litelang.scheduler.engine.process import engine_main
from litelang.scheduler.errors import RejectedError
from litelang.scheduler.messages import (
    Abort, EngineState, Events, NewRequest, OutputEvent, StatsQuery, StatsReply, Stop, Stopped, Submit,
)

log = logging.getLogger("litelang.scheduler")


@dataclass
class Request(NewRequest):
    """A request as the frontend follows it: what it sent, and the queue its events arrive on
    (which stays in this process)."""

    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def message(self) -> NewRequest:
        return NewRequest(self.request_id, self.prompt_ids, self.sampling, self.priority, self.arrival)


class EngineClient:
    """The engine as the RPC layer sees it: submit, abort and stats, with each request's events
    arriving on its Request.events queue. Rejections the engine decides (queue full, too long
    for the pool) arrive as the request's one error event."""

    def __init__(self, cfg: LitelangConfig):
        self.cfg = cfg
        self.healthy = False
        self.info: worker_pb2.InitResponse | None = None
        self.capacity = 0
        self.died = asyncio.Event()  # set if the engine process exits unasked
        self._requests: dict[str, Request] = {}  # submitted, final event not yet received
        self._stats: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._conn: Connection | None = None
        self._proc = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process running grpc threads
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=engine_main, args=(self.cfg, child_conn), name="litelang-engine", daemon=True)
        self._proc.start()
        child_conn.close()
        asyncio.get_running_loop().add_reader(self._conn.fileno(), self._on_readable)

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the engine to fail what is left (UNAVAILABLE) and exit; wait for it."""
        self._stopping = True
        if self._proc is None:
            return
        if not self.died.is_set():
            self._send(Stop())
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("the engine process did not stop in %.0f s; killing it", timeout)
        await asyncio.get_running_loop().run_in_executor(None, self._join)

    def _join(self) -> None:
        self._proc.join(10.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def submit(self, *reqs: Request) -> None:
        """Send one request, or a request's n completions, to be queued all or none."""
        for req in reqs:
            if req.request_id in self._requests:
                raise RejectedError(grpc.StatusCode.ALREADY_EXISTS, f"request_id {req.request_id!r} is already in flight")
        if not self.healthy:
            raise RejectedError(grpc.StatusCode.UNAVAILABLE, "the workers are not ready (starting or restarting); retry shortly")
        self._send(Submit([r.message() for r in reqs]))
        for req in reqs:
            self._requests[req.request_id] = req

    def abort(self, request_id: str) -> bool:
        """True if the request was in flight (its final event says how it ended)."""
        if request_id not in self._requests:
            return False
        self._send(Abort(request_id))
        return True

    async def stats(self) -> dict[str, int | bool]:
        token = next(self._tokens)
        future = self._stats[token] = asyncio.get_running_loop().create_future()
        self._send(StatsQuery(token))
        try:
            return await asyncio.wait_for(future, 5.0)
        finally:
            self._stats.pop(token, None)

    def _send(self, msg: Submit | Abort | StatsQuery | Stop) -> None:
        if self.died.is_set():
            raise RejectedError(grpc.StatusCode.UNAVAILABLE, "the engine process has exited; the server is going down")
        self._conn.send(msg)

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                self._handle(self._conn.recv())
        except (EOFError, OSError):
            self._engine_gone()

    def _handle(self, msg: Events | EngineState | StatsReply | Stopped) -> None:
        if isinstance(msg, Events):
            for request_id, ev in msg.events:
                req = self._requests.get(request_id)
                if req is None:
                    continue
                req.events.put_nowait(ev)
                if ev.final:
                    del self._requests[request_id]
        elif isinstance(msg, EngineState):
            self.healthy, self.capacity = msg.healthy, msg.kv_capacity
            self.info = worker_pb2.InitResponse.FromString(msg.worker_info) if msg.worker_info else None
        elif isinstance(msg, StatsReply):
            future = self._stats.get(msg.token)
            if future is not None and not future.done():
                future.set_result(msg.stats)
        elif isinstance(msg, Stopped):
            self._stopped.set()

    def _engine_gone(self) -> None:
        asyncio.get_running_loop().remove_reader(self._conn.fileno())
        self.healthy = False
        if not self._stopping:
            log.error("the engine process exited unexpectedly; failing %d requests", len(self._requests))
        for req in self._requests.values():
            req.events.put_nowait(OutputEvent(
                text="", token_ids=[], error=(grpc.StatusCode.UNAVAILABLE.value[0], "the scheduler's engine stopped; retry the request"),
            ))
        self._requests.clear()
        for future in self._stats.values():
            if not future.done():
                future.set_exception(RejectedError(grpc.StatusCode.UNAVAILABLE, "the engine process has exited"))
        self._stopped.set()
        self.died.set()
