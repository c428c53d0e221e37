"""The scheduler's side of the worker protocol: one Step stream per tensor-parallel rank.

Every rank receives the same StepRequest; all ranks must answer (they run the same collective
ops), and rank 0's sampled tokens are the result.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from litelang.proto import worker_pb2, worker_pb2_grpc

log = logging.getLogger("litelang.scheduler")


class WorkerError(RuntimeError):
    """A worker is unreachable or broke the stream: its in-flight requests are lost."""


class WorkerGroup:
    def __init__(self, addresses: list[str]):
        self.addresses = addresses
        self.info: worker_pb2.InitResponse | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._streams: list = []
        self.broken = asyncio.Event()  # a Step stream ended on its own (worker died), even while idle

    @property
    def connected(self) -> bool:
        return bool(self._streams)

    async def connect(self, timeout: float = 10.0) -> worker_pb2.InitResponse:
        """Init every rank and open its Step stream. Raises WorkerError if any rank fails."""
        await self.close()
        try:
            self._channels = [grpc.aio.insecure_channel(a) for a in self.addresses]
            stubs = [worker_pb2_grpc.WorkerStub(c) for c in self._channels]
            infos = await asyncio.gather(*(s.Init(worker_pb2.InitRequest(), timeout=timeout) for s in stubs))
            self._streams = [s.Step() for s in stubs]
            self.broken.clear()
            for stream in self._streams:
                stream.add_done_callback(self._on_stream_done)
        except grpc.aio.AioRpcError as e:
            await self.close()
            raise WorkerError(f"cannot initialise workers {self.addresses}: {e.code().name}: {e.details()}") from e
        info = infos[0]
        # with tp > 1 every rank holds its share of each slot; the usable pool is the smallest
        info.kv_slots = min(i.kv_slots for i in infos)
        self.info = info
        log.info("connected to %d worker(s): %d KV slots, %s %s, kernels=%s",
                 len(infos), info.kv_slots, info.device, info.dtype, info.kernels)
        return info

    async def send(self, request: worker_pb2.StepRequest) -> None:
        if not self._streams:
            raise WorkerError("not connected to the workers")
        try:
            if len(self._streams) == 1:  # no gather: it costs a task per stream, every step
                await self._streams[0].write(request)
            else:
                await asyncio.gather(*(s.write(request) for s in self._streams))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
            await self._broken(e)

    async def receive(self) -> worker_pb2.StepResponse:
        """The reply to the oldest step sent (every rank's; rank 0's tokens are the result)."""
        try:
            if len(self._streams) == 1:
                replies = [await self._streams[0].read()]
            else:
                replies = await asyncio.gather(*(s.read() for s in self._streams))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
            await self._broken(e)
        if any(r is grpc.aio.EOF for r in replies):
            await self.close()
            raise WorkerError("a worker closed its Step stream")
        return replies[0]

    async def _broken(self, e: Exception):
        detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
        await self.close()
        raise WorkerError(f"worker stream failed: {detail}") from e

    def _on_stream_done(self, call) -> None:
        if call in self._streams:  # not a stream close() is cancelling on purpose
            self.broken.set()

    async def close(self) -> None:
        streams, self._streams = self._streams, []
        for s in streams:
            s.cancel()
        for c in self._channels:
            await c.close()
        self._channels = []
