"""The engine's own process, and the frontend's handle on it.

The scheduler runs as two processes. The frontend (scheduler/main.py) serves the client gRPC
API: validation, tokenization and one stream message per request per token. The engine
process runs the scheduling loop that drives the workers. Apart, they do not share a GIL, so a
thousand stream sends cannot delay the next GPU step; when the frontend falls behind, its
streams catch up with multi-token messages (service.next_events).

They talk over a multiprocessing Pipe with pickled tuples:

    frontend -> engine   ("submit", [(request_id, prompt_ids, SamplingConfig, arrival, priority), ...])   all or none
                         ("abort", request_id)   ("stats", token)   ("stop",)
    engine -> frontend   ("events", [(request_id, OutputEvent), ...])   one message per step
                         ("state", healthy, InitResponse bytes, kv capacity)   when it changes
                         ("stats", token, {StatsResponse field: value})   ("stopped",)
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
from multiprocessing.connection import Connection

import grpc

from litelang.configs.schema import LitelangConfig
from litelang.proto import worker_pb2
from litelang.scheduler.engine import Engine, RejectedError
from litelang.scheduler.request import OutputEvent, Request
from litelang.scheduler.tokenizer import Tokenizer
from litelang.scheduler.worker_client import WorkerGroup
from litelang.tools.profiling import profiled

log = logging.getLogger("litelang.scheduler")


# ------------------------------------------------------------------ the engine process


def engine_main(cfg: LitelangConfig, conn: Connection) -> None:
    """Entry point of the engine process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the frontend, which stops us
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s engine %(levelname)s %(message)s")
    with profiled("engine"):
        asyncio.run(_serve_engine(cfg, conn))


async def _serve_engine(cfg: LitelangConfig, conn: Connection) -> None:
    tokenizer = Tokenizer(cfg.model)
    tokenizer.detokenizer()  # build its table now, not on the first request
    engine = Engine(cfg, tokenizer, WorkerGroup(cfg.worker_addresses()))
    gc.collect()
    gc.freeze()  # the tokenizer's tables live forever: keep them out of every later GC pass
    bridge = _EngineSide(engine, conn)
    _GarbagePolicy(engine)
    if cfg.metrics_port:
        engine.metrics.serve(cfg.metrics_port, cfg.host)
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), bridge.on_readable)
    # SIGTERM to the whole process group (launchers, tests) stops us the same orderly way as the
    # frontend's "stop": fail what is left with UNAVAILABLE, flush, exit
    loop.add_signal_handler(signal.SIGTERM, bridge.stop_requested.set)
    engine.start()
    await bridge.stop_requested.wait()
    loop.remove_reader(conn.fileno())
    await engine.stop()  # fails what is left with UNAVAILABLE
    bridge.close()


class _GarbagePolicy:
    """The engine process collects garbage at times it picks, not whenever allocations cross
    a threshold: an automatic pass lands between two steps, and on the H100 host single passes
    of 17-21 ms were measured there, each an idle GPU (BENCHMARKS.md). The steady step loop
    makes no cyclic garbage (0 objects over 200 steps of 128 streams, measured), so collecting
    when the engine goes idle suffices; under load that never lets up, a full pass runs every
    BUSY_STEPS steps, right after a step is sent, while the GPU has queued work."""

    BUSY_STEPS = 4096

    def __init__(self, engine: Engine):
        gc.disable()
        self.engine = engine
        self.steps_at_last = 0
        engine.on_idle = self.on_idle
        engine.on_sent = self.on_sent

    def on_idle(self) -> None:
        if self.engine.stats["steps"] != self.steps_at_last:  # anything allocated since the last pass
            self.collect()

    def on_sent(self) -> None:
        if self.engine.stats["steps"] - self.steps_at_last >= self.BUSY_STEPS:
            self.collect()

    def collect(self) -> None:
        gc.collect()
        self.steps_at_last = self.engine.stats["steps"]


class _EngineSide:
    """Commands from the pipe into the Engine; the Engine's events back, one message per step.
    A thread does the sends, so a slow frontend never blocks the engine loop on a full pipe."""

    def __init__(self, engine: Engine, conn: Connection):
        self.engine, self.conn = engine, conn
        self.stop_requested = asyncio.Event()
        self._events: list[tuple[str, OutputEvent]] = []
        self._state: tuple | None = None
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="engine-sender", daemon=True)
        self._sender.start()
        engine.sink = lambda r, ev: self._events.append((r.request_id, ev))
        engine.on_flush = self.flush

    def flush(self) -> None:
        if self._events:
            self._send(("events", self._events))
            self._events = []
        # every step passes here: compare cheaply, serialize only on a change (a new InitResponse
        # comes with a reconnect)
        info, healthy, capacity = self.engine.workers.info, self.engine.healthy, self.engine.capacity
        state = (healthy, id(info), capacity)
        if state != self._state:
            self._state = state
            self._send(("state", healthy, info.SerializeToString() if info is not None else b"", capacity))

    def on_readable(self) -> None:
        try:
            while self.conn.poll():
                self._handle(self.conn.recv())
        except (EOFError, OSError):  # the frontend is gone
            self.stop_requested.set()
        self.flush()

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "submit":
            reqs = [Request(request_id=rid, prompt_ids=ids, sampling=sampling, arrival=arrival, priority=priority)
                    for rid, ids, sampling, arrival, priority in msg[1]]
            try:
                self.engine.submit(*reqs)
            except RejectedError as e:
                error = (e.code.value[0], str(e))
                self._events.extend((r.request_id, OutputEvent(text="", token_ids=[], error=error)) for r in reqs)
        elif kind == "abort":
            self.engine.abort(msg[1])
        elif kind == "stats":
            self._send(("stats", msg[1], self.engine.snapshot()))
        elif kind == "stop":
            self.stop_requested.set()
        else:
            log.error("unknown message from the frontend: %r", kind)

    def close(self) -> None:
        self.flush()
        self._send(("stopped",))
        self._outgoing.put(None)
        self._sender.join(timeout=5.0)

    def _send(self, msg: tuple) -> None:
        self._outgoing.put(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def _send_loop(self) -> None:
        while (data := self._outgoing.get()) is not None:
            try:
                self.conn.send_bytes(data)
            except OSError:  # the frontend is gone; the reader sees EOF and stops the engine
                return


# ------------------------------------------------------------------ the frontend's handle


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
            self._send(("stop",))
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
        self._send(("submit", [(r.request_id, r.prompt_ids, r.sampling, r.arrival, r.priority) for r in reqs]))
        for req in reqs:
            self._requests[req.request_id] = req

    def abort(self, request_id: str) -> bool:
        """True if the request was in flight (its final event says how it ended)."""
        if request_id not in self._requests:
            return False
        self._send(("abort", request_id))
        return True

    async def stats(self) -> dict[str, int | bool]:
        token = next(self._tokens)
        future = self._stats[token] = asyncio.get_running_loop().create_future()
        self._send(("stats", token))
        try:
            return await asyncio.wait_for(future, 5.0)
        finally:
            self._stats.pop(token, None)

    def _send(self, msg: tuple) -> None:
        if self.died.is_set():
            raise RejectedError(grpc.StatusCode.UNAVAILABLE, "the engine process has exited; the server is going down")
        self._conn.send(msg)

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                self._handle(self._conn.recv())
        except (EOFError, OSError):
            self._engine_gone()

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "events":
            for request_id, ev in msg[1]:
                req = self._requests.get(request_id)
                if req is None:
                    continue
                req.events.put_nowait(ev)
                if ev.final:
                    del self._requests[request_id]
        elif kind == "state":
            _, self.healthy, info, self.capacity = msg
            self.info = worker_pb2.InitResponse.FromString(info) if info else None
        elif kind == "stats":
            future = self._stats.get(msg[1])
            if future is not None and not future.done():
                future.set_result(msg[2])
        elif kind == "stopped":
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
