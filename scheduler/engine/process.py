"""The engine's own process: the Engine loop, its end of the pipe to the frontend, and when it
collects garbage.

The scheduler runs as two processes. The frontend (scheduler/frontend/) serves the client gRPC
API: validation, tokenization and one stream message per request per token. This process runs
the scheduling loop that drives the workers. Apart, they do not share a GIL, so a thousand
stream sends cannot delay the next GPU step; when the frontend falls behind, its streams catch
up with multi-token messages (frontend/service.next_events). What crosses the pipe is
scheduler/messages.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
import queue
import signal
import threading
from multiprocessing.connection import Connection

from litelang.configs.schema import LitelangConfig
from litelang.scheduler.engine.loop import Engine
from litelang.scheduler.engine.request import Request
from litelang.scheduler.engine.worker_client import WorkerGroup
from litelang.scheduler.errors import RejectedError
from litelang.scheduler.messages import (
    Abort, EngineState, Events, OutputEvent, StatsQuery, StatsReply, Stop, Stopped, Submit,
)
from litelang.scheduler.tokenizer import Tokenizer
from litelang.utils.profiling import profiled

log = logging.getLogger("litelang.scheduler")


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
    """Messages from the pipe into the Engine; the Engine's events back, one message per step.
    A thread does the sends, so a slow frontend never blocks the engine loop on a full pipe."""

    def __init__(self, engine: Engine, conn: Connection):
        self.engine, self.conn = engine, conn
        self.stop_requested = asyncio.Event()
        self._events: list[tuple[str, OutputEvent]] = []
        self._state: tuple | None = None
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="engine-sender", daemon=True)
        self._sender.start()
        engine.output.sink = lambda r, ev: self._events.append((r.request_id, ev))
        engine.on_flush = self.flush

    def flush(self) -> None:
        if self._events:
            self._send(Events(self._events))
            self._events = []
        # every step passes here: compare cheaply, serialize only on a change (a new InitResponse
        # comes with a reconnect)
        info, healthy, capacity = self.engine.workers.info, self.engine.healthy, self.engine.kv.capacity
        state = (healthy, id(info), capacity)
        if state != self._state:
            self._state = state
            self._send(EngineState(healthy, info.SerializeToString() if info is not None else b"", capacity))

    def on_readable(self) -> None:
        try:
            while self.conn.poll():
                self._handle(self.conn.recv())
        except (EOFError, OSError):  # the frontend is gone
            self.stop_requested.set()
        self.flush()

    def _handle(self, msg: Submit | Abort | StatsQuery | Stop) -> None:
        if isinstance(msg, Submit):
            reqs = [Request.from_message(new) for new in msg.requests]
            try:
                self.engine.submit(*reqs)
            except RejectedError as e:
                error = (e.code.value[0], str(e))
                self._events.extend((r.request_id, OutputEvent(text="", token_ids=[], error=error)) for r in reqs)
        elif isinstance(msg, Abort):
            self.engine.abort(msg.request_id)
        elif isinstance(msg, StatsQuery):
            self._send(StatsReply(msg.token, self.engine.snapshot()))
        elif isinstance(msg, Stop):
            self.stop_requested.set()
        else:
            log.error("unknown message from the frontend: %r", msg)

    def close(self) -> None:
        self.flush()
        self._send(Stopped())
        self._outgoing.put(None)
        self._sender.join(timeout=5.0)

    def _send(self, msg: Events | EngineState | StatsReply | Stopped) -> None:
        self._outgoing.put(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def _send_loop(self) -> None:
        while (data := self._outgoing.get()) is not None:
            try:
                self.conn.send_bytes(data)
            except OSError:  # the frontend is gone; the reader sees EOF and stops the engine
                return
