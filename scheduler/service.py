"""The client-facing gRPC service (litelang.v1.Litelang), in the frontend process; the engine
runs in its own process behind an EngineClient.

Every RPC validates its input first: never-valid input is INVALID_ARGUMENT with a message that
says what to change; load problems come from the engine (RESOURCE_EXHAUSTED, UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid

import grpc

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.proto import litelang_pb2_grpc
from litelang.scheduler.engine import RejectedError
from litelang.scheduler.engine_process import EngineClient
from litelang.scheduler.request import OutputEvent, Request, TopLogprobs
from litelang.scheduler.tokenizer import Tokenizer
from litelang.scheduler.validation import InvalidRequest, check_prompt, resolve_sampling

log = logging.getLogger("litelang.scheduler")


class LitelangService(litelang_pb2_grpc.LitelangServicer):
    def __init__(self, cfg: LitelangConfig, engine: EngineClient, tokenizer: Tokenizer):
        self.cfg, self.engine, self.tokenizer = cfg, engine, tokenizer
        self._seeds = itertools.count(cfg.seed * 1_000_003 + 1)

    # ------------------------------------------------------------ helpers

    def _prompt_ids(self, request: pb.GenerateRequest) -> list[int]:
        kind = request.WhichOneof("input")
        if kind == "prompt":
            return self.tokenizer.encode(request.prompt)
        if kind == "input_ids":
            return list(request.input_ids.ids)
        if kind == "messages":
            msgs = [{"role": m.role, "content": m.content} for m in request.messages.messages]
            if not msgs:
                raise InvalidRequest("messages is empty: send at least one message")
            bad = [m["role"] for m in msgs if m["role"] not in ("system", "user", "assistant")]
            if bad:
                raise InvalidRequest(f"message roles must be system, user or assistant (got {bad[0]!r})")
            return self.tokenizer.apply_chat_template(msgs)
        raise InvalidRequest("no input: set one of prompt, input_ids or messages")

    def _new_request(self, request_id: str, prompt_ids: list[int], params: pb.SamplingParams) -> Request:
        sampling = resolve_sampling(params, self.cfg, default_seed=next(self._seeds))
        check_prompt(prompt_ids, self.cfg, self.engine.info.vocab_size if self.engine.info else 1 << 31)
        return Request(request_id=request_id or uuid.uuid4().hex, prompt_ids=prompt_ids, sampling=sampling)

    async def _start(self, request: pb.GenerateRequest, context) -> Request:
        try:
            req = self._new_request(request.request_id, self._prompt_ids(request), request.sampling)
            self.engine.submit(req)
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except RejectedError as e:
            await context.abort(e.code, str(e))
        return req

    async def _events(self, req: Request, context):
        """Yield the request's OutputEvents; abort it if the client goes away."""
        try:
            while True:
                ev = await next_events(req)
                if ev.error is not None:
                    await context.abort(grpc.StatusCode(_code(ev.error[0])), ev.error[1])
                yield ev
                if ev.final:
                    return
        except asyncio.CancelledError:
            self.engine.abort(req.request_id)
            raise

    # ------------------------------------------------------------ RPCs

    async def Generate(self, request, context):
        req = await self._start(request, context)
        ids, logprobs, tops = [], [], []
        async for ev in self._events(req, context):
            ids.extend(ev.token_ids)
            logprobs.extend(ev.logprobs)
            tops.extend(ev.top_logprobs)
        out = ev.outcome
        return pb.GenerateResponse(
            request_id=req.request_id, text=out.text, token_ids=ids, logprobs=logprobs, finish_reason=ev.finish_reason,
            usage=out.usage, timings=out.timings, stop_string=out.stop_string, top_logprobs=_top_messages(tops),
        )

    async def GenerateStream(self, request, context):
        req = await self._start(request, context)
        async for ev in self._events(req, context):
            chunk = pb.GenerateStreamChunk(request_id=req.request_id, text=ev.text, token_ids=ev.token_ids,
                                           logprobs=ev.logprobs, top_logprobs=_top_messages(ev.top_logprobs))
            if ev.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                chunk.finish_reason = ev.finish_reason
                chunk.usage.CopyFrom(ev.outcome.usage)
                chunk.timings.CopyFrom(ev.outcome.timings)
            yield chunk

    async def Chat(self, request_iterator, context):
        session = ChatSession(self, context)
        async for msg in session.run(request_iterator):
            yield msg

    async def Abort(self, request, context):
        aborted = [rid for rid in request.request_ids if self.engine.abort(rid)]
        return pb.AbortResponse(aborted=aborted)

    async def ModelInfo(self, request, context):
        info = self.engine.info
        if info is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the workers are not ready yet; retry shortly")
        return pb.ModelInfoResponse(
            model_path=self.cfg.model, model_type="qwen2", vocab_size=info.vocab_size,
            max_input_length=self.cfg.max_input_length, max_output_length=self.cfg.max_output_length,
            max_batch_size=self.cfg.max_batch_size, kv_capacity_tokens=self.engine.capacity, tp=self.cfg.tp,
            eos_token_ids=self.tokenizer.eos_token_ids, device=info.device, dtype=info.dtype,
        )

    async def GetStats(self, request, context):
        try:
            return pb.StatsResponse(**await self.engine.stats())
        except (RejectedError, asyncio.TimeoutError):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the engine did not answer; the server may be restarting")


async def next_events(req: Request) -> OutputEvent:
    """The next event, merged with any others already queued: a stream that fell behind the
    engine catches up in one message instead of one per token (sending costs more than merging)."""
    ev: OutputEvent = await req.events.get()
    while not ev.final and not req.events.empty():
        nxt: OutputEvent = req.events.get_nowait()
        if nxt.error is not None:
            return nxt
        ev = OutputEvent(text=ev.text + nxt.text, token_ids=ev.token_ids + nxt.token_ids,
                         logprobs=ev.logprobs + nxt.logprobs, top_logprobs=ev.top_logprobs + nxt.top_logprobs,
                         finish_reason=nxt.finish_reason, outcome=nxt.outcome)
    return ev


def _top_messages(tops: list[TopLogprobs]) -> list[pb.TopLogprobs]:
    return [pb.TopLogprobs(token_ids=ids, logprobs=values) for ids, values in tops]


def _code(value: int) -> tuple:
    return next(c.value for c in grpc.StatusCode if c.value[0] == value)


class ChatSession:
    """One Chat stream: the conversation so far, and at most one turn generating at a time."""

    def __init__(self, service: LitelangService, context):
        self.service, self.context = service, context
        self.session_id = uuid.uuid4().hex
        self.messages: list[dict[str, str]] = []
        self.defaults = pb.SamplingParams()
        self.opened = False
        self.turn = 0
        self.current: Request | None = None
        self.out: asyncio.Queue = asyncio.Queue()

    async def run(self, request_iterator):
        reader = asyncio.ensure_future(self._read(request_iterator))
        try:
            while True:
                msg = await self.out.get()
                if msg is None:
                    return
                yield msg
        finally:
            reader.cancel()
            if self.current is not None:
                self.service.engine.abort(self.current.request_id)

    async def _read(self, request_iterator) -> None:
        turn_task: asyncio.Task | None = None
        try:
            async for msg in request_iterator:
                kind = msg.WhichOneof("msg")
                if kind == "open":
                    if self.opened:
                        self._error(grpc.StatusCode.FAILED_PRECONDITION, "the session is already open")
                        continue
                    self.opened = True
                    self.defaults = msg.open.sampling
                    if msg.open.system_prompt:
                        self.messages.append({"role": "system", "content": msg.open.system_prompt})
                    self.out.put_nowait(pb.ChatServerMessage(opened=pb.SessionOpened(session_id=self.session_id)))
                elif kind == "user_turn":
                    if not self.opened:
                        self._error(grpc.StatusCode.FAILED_PRECONDITION, "send open before the first user turn")
                    elif self.current is not None:
                        self._error(grpc.StatusCode.FAILED_PRECONDITION, "a turn is still generating; cancel it or wait for its end")
                    else:
                        turn_task = asyncio.ensure_future(self._turn(msg.user_turn))
                elif kind == "cancel":
                    if self.current is not None:
                        self.service.engine.abort(self.current.request_id)
                elif kind == "close":
                    break
                else:
                    self._error(grpc.StatusCode.INVALID_ARGUMENT, "empty ChatClientMessage: set open, user_turn, cancel or close")
            if turn_task is not None:
                await turn_task
        finally:
            self.out.put_nowait(None)

    def _error(self, code: grpc.StatusCode, message: str) -> None:
        self.out.put_nowait(pb.ChatServerMessage(error=pb.TurnError(turn=self.turn, code=code.value[0], message=message)))

    async def _turn(self, user: pb.UserTurn) -> None:
        self.turn += 1
        params = pb.SamplingParams()
        params.CopyFrom(self.defaults)
        params.MergeFrom(user.sampling)
        svc = self.service
        try:
            if not user.content:
                raise InvalidRequest("the user turn is empty")
            ids = svc.tokenizer.apply_chat_template(self.messages + [{"role": "user", "content": user.content}])
            req = svc._new_request(f"{self.session_id}-{self.turn}", ids, params)
            svc.engine.submit(req)
        except InvalidRequest as e:
            self._error(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        except RejectedError as e:
            self._error(e.code, str(e))
            return
        self.current = req
        try:
            while True:
                ev = await next_events(req)
                if ev.error is not None:
                    self.out.put_nowait(pb.ChatServerMessage(error=pb.TurnError(turn=self.turn, code=ev.error[0], message=ev.error[1])))
                    return
                if ev.text or ev.token_ids:
                    self.out.put_nowait(pb.ChatServerMessage(chunk=pb.TurnChunk(
                        turn=self.turn, text=ev.text, token_ids=ev.token_ids, logprobs=ev.logprobs,
                        top_logprobs=_top_messages(ev.top_logprobs),
                    )))
                if ev.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                    out = ev.outcome
                    if ev.finish_reason != pb.FINISH_REASON_ABORTED:  # a cancelled turn leaves no trace
                        self.messages.append({"role": "user", "content": user.content})
                        self.messages.append({"role": "assistant", "content": out.text})
                    self.out.put_nowait(pb.ChatServerMessage(end=pb.TurnEnd(
                        turn=self.turn, text=out.text, finish_reason=ev.finish_reason,
                        usage=out.usage, timings=out.timings,
                    )))
                    return
        finally:
            self.current = None
