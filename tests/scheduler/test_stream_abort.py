"""The scheduler's streams abort what the client left, however the stream ends. gRPC cancels a
stream's handler wherever it waits: in our code (CancelledError) or in its own write of a chunk,
after which the handler's generators are only closed (GeneratorExit). Both must abort; here the
stream generators run against a fake engine that records aborts, so the close path is exact."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.scheduler.frontend.service import LitelangService
from litelang.scheduler.messages import OutputEvent


@dataclass
class FakeRequest:
    request_id: str
    events: asyncio.Queue = field(default_factory=asyncio.Queue)


class RecordingEngine:
    info = None

    def __init__(self) -> None:
        self.aborted: list[str] = []

    def abort(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        return True


def token(i: int) -> OutputEvent:
    return OutputEvent(text=f"t{i}", token_ids=[i])


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("ending", ["closed", "cancelled"])
def test_a_left_stream_aborts_every_completion(n, ending):
    engine = RecordingEngine()
    service = LitelangService(LitelangConfig(), engine, tokenizer=None)
    reqs = [FakeRequest(f"r/{i}") for i in range(n)]

    async def scenario():
        reqs[0].events.put_nowait(token(1))  # the others have nothing yet
        events = service._completion_events(reqs, context=None)
        await events.__anext__()  # one chunk out, the rest still generating
        assert engine.aborted == []
        if ending == "closed":  # gRPC cancelled the handler while it wrote that chunk
            await events.aclose()
        else:  # gRPC cancelled the handler while it waited for the next event
            task = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(scenario())
    assert sorted(set(engine.aborted)) == [r.request_id for r in reqs]


@pytest.mark.parametrize("n", [1, 2])
def test_a_stream_read_to_its_end_aborts_nothing_in_flight(n):
    """The finally's abort of a finished request is the engine's no-op; what matters is that the
    stream yields every event, finals included, before ending."""
    engine = RecordingEngine()
    service = LitelangService(LitelangConfig(), engine, tokenizer=None)
    reqs = [FakeRequest(f"r/{i}") for i in range(n)]

    async def scenario():
        for r in reqs:
            r.events.put_nowait(token(1))
            r.events.put_nowait(OutputEvent(text="", token_ids=[], finish_reason=pb.FINISH_REASON_LENGTH))
        return [ev async for ev in service._completion_events(reqs, context=None)]

    got = run(scenario())
    finals = sorted(i for i, ev in got if ev.final)
    assert finals == list(range(n)) and sum(len(ev.token_ids) for _, ev in got) == n
