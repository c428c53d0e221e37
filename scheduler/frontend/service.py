"""The client-facing gRPC service (litelang.v1.Litelang), in the frontend process; the engine
runs in its own process behind an EngineClient (frontend/engine_client.py).

Every RPC validates its input first: never-valid input is INVALID_ARGUMENT with a message that
says what to change; load problems come from the engine (RESOURCE_EXHAUSTED, UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.proto import litelang_pb2_grpc
from litelang.scheduler.errors import InvalidRequest, RejectedError
from litelang.scheduler.frontend.engine_client import EngineClient, Request
from litelang.scheduler.frontend.validation import chat_template_input, check_prompt, truncated_prompt
from litelang.scheduler.messages import OutputEvent, TopLogprobs
from litelang.scheduler.sampling_params import SamplingParams, completion_count
from litelang.scheduler.tokenizer import Tokenizer

log = logging.getLogger("litelang.scheduler")

# token ids -> each one's bytes (Tokenizer.token_bytes): what a logprobs reply spells tokens with
TokenBytes = Callable[[Sequence[int]], list[bytes]]


class LitelangService(litelang_pb2_grpc.LitelangServicer):
    def __init__(self, cfg: LitelangConfig, engine: EngineClient, tokenizer: Tokenizer):
        self.cfg, self.engine, self.tokenizer = cfg, engine, tokenizer
        self._seeds = itertools.count(cfg.seed * 1_000_003 + 1)
        self._groups: dict[str, list[str]] = {}  # request_id of an n > 1 request -> its completions' ids

    # ------------------------------------------------------------ helpers

    def _prompt_ids(self, request: pb.GenerateRequest | pb.TokenizeRequest) -> list[int]:
        kind = request.WhichOneof("input")
        if request.suffix:
            if kind != "prompt":
                raise InvalidRequest("suffix needs a text prompt (fill in the middle: the model writes what goes "
                                     f"between prompt and suffix), not {kind or 'no input'}")
            return self.tokenizer.encode_fill_in_middle(request.prompt, request.suffix)
        if kind == "prompt":
            return self.tokenizer.encode(request.prompt)
        if kind == "input_ids":
            return list(request.input_ids.ids)
        if kind == "messages":
            msgs, tools = chat_template_input(request.messages)
            return self.tokenizer.apply_chat_template(msgs, tools, request.messages.continue_final_message)
        raise InvalidRequest("no input: set one of prompt, input_ids or messages")

    def _new_requests(self, request_id: str, prompt_ids: list[int], params: pb.SamplingParams,
                      n: int = 1) -> list[Request]:
        """The request's n completions, validated once (ids `<id>/<index>` when n > 1; completion
        i of a seeded request draws with seed + i)."""
        vocab_size = self.engine.info.vocab_size if self.engine.info else 1 << 31
        prompt_ids = truncated_prompt(prompt_ids, params)
        check_prompt(prompt_ids, self.cfg, vocab_size)
        seeds = [next(self._seeds) for _ in range(n)]  # each completion's default seed
        first = SamplingParams.from_wire(params, self.cfg, seeds[0], vocab_size)
        samplings = [first] + [first.sibling(i, seeds[i], params.HasField("seed")) for i in range(1, n)]
        return [Request(request_id=request_id if n == 1 else f"{request_id}/{index}", prompt_ids=prompt_ids,
                        sampling=sampling) for index, sampling in enumerate(samplings)]

    async def _start(self, request: pb.GenerateRequest, context) -> tuple[str, list[Request]]:
        """Submit the request's completions: one engine Request each (ids `<id>/<index>` when
        n > 1, so siblings admitted together share the prompt's KV through the prefix cache).
        Returns the request id and the completions."""
        try:
            n = completion_count(request.sampling)
            prompt_ids = self._prompt_ids(request)
            request_id = request.request_id or uuid.uuid4().hex
            if n > 1 and request_id in self._groups:
                raise RejectedError(grpc.StatusCode.ALREADY_EXISTS, f"request_id {request_id!r} is already in flight")
            reqs = self._new_requests(request_id, prompt_ids, request.sampling, n)
            for req in reqs:
                req.priority = request.priority
            self.engine.submit(*reqs)  # all n or none
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except RejectedError as e:
            await context.abort(e.code, str(e))
        if n > 1:
            self._groups[request_id] = [r.request_id for r in reqs]
        return request_id, reqs

    def _spelling(self, req: Request) -> TokenBytes | None:
        """Token bytes ride beside the generated tokens only when logprobs are asked for."""
        return self.tokenizer.token_bytes if req.sampling.logprobs else None

    def _abort_all(self, reqs: list[Request]) -> None:
        for r in reqs:
            self.engine.abort(r.request_id)

    def _completion_events(self, reqs: list[Request], context):
        """(index, event) for every completion's events as they arrive: an async iterator."""
        return self._events(reqs[0], context) if len(reqs) == 1 else self._merged_events(reqs, context)

    async def _events(self, req: Request, context):
        """Yield (0, event) for the request's OutputEvents; abort it if the client goes away.

        The abort sits in `finally`, not in an `except CancelledError`: gRPC cancels a stream
        wherever its handler waits, and while it waits to write a chunk this generator is not
        cancelled but closed later (GeneratorExit), and the request would run to its end."""
        try:
            while True:
                ev = await next_events(req)
                if ev.error is not None:
                    await context.abort(grpc.StatusCode(_code(ev.error[0])), ev.error[1])
                yield 0, ev
                if ev.final:
                    return
        finally:
            self.engine.abort(req.request_id)  # a no-op once the request has ended

    async def _merged_events(self, reqs: list[Request], context):
        """_events over n > 1 completions, interleaved as they arrive. An error in one fails the
        RPC and aborts the others; so does the client going away."""
        waits = {asyncio.ensure_future(next_events(r)): i for i, r in enumerate(reqs)}
        try:
            while waits:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for fut in sorted(done, key=waits.__getitem__):
                    i = waits.pop(fut)
                    ev = fut.result()
                    if ev.error is not None:
                        self._abort_all(reqs)
                        await context.abort(grpc.StatusCode(_code(ev.error[0])), ev.error[1])
                    yield i, ev
                    if not ev.final:
                        waits[asyncio.ensure_future(next_events(reqs[i]))] = i
        finally:  # as in _events: however the stream ends, nothing of it runs on
            for fut in waits:
                fut.cancel()
            self._abort_all(reqs)

    # ------------------------------------------------------------ RPCs

    async def Generate(self, request, context):
        request_id, reqs = await self._start(request, context)
        outputs = [_Collected() for _ in reqs]
        try:
            async with contextlib.aclosing(self._completion_events(reqs, context)) as events:
                async for i, ev in events:
                    outputs[i].add(ev)
        finally:
            if len(reqs) > 1:
                self._groups.pop(request_id, None)
        completions = [out.completion(i, self._spelling(reqs[0])) for i, out in enumerate(outputs)]
        first, outcome = completions[0], outputs[0].last.outcome
        reply = pb.GenerateResponse(
            request_id=request_id, text=first.text, token_ids=first.token_ids, logprobs=first.logprobs,
            finish_reason=first.finish_reason, stop_string=first.stop_string, top_logprobs=first.top_logprobs,
            usage=outcome.usage, timings=outcome.timings, token_bytes=first.token_bytes,
        )
        if outputs[0].prompt is not None:
            reply.prompt_token_ids.extend(reqs[0].prompt_ids)
            reply.prompt_token_bytes.extend(self.tokenizer.token_bytes(reqs[0].prompt_ids))
            reply.prompt_logprobs.extend(outputs[0].prompt.prompt_logprobs)
            reply.prompt_top_logprobs.extend(_top_messages(outputs[0].prompt.prompt_top_logprobs or [],
                                                           self.tokenizer.token_bytes))
        if len(outputs) > 1:
            reply.completions.extend(completions)
            _merge_usage(reply, [out.last.outcome for out in outputs])
        return reply

    async def GenerateStream(self, request, context):
        request_id, reqs = await self._start(request, context)
        try:
            async with contextlib.aclosing(self._completion_events(reqs, context)) as events:
                async for i, ev in events:
                    yield _stream_chunk(request_id, reqs[0], i, ev, self.tokenizer)
        finally:
            if len(reqs) > 1:
                self._groups.pop(request_id, None)

    async def Chat(self, request_iterator, context):
        session = ChatSession(self, context)
        async with contextlib.aclosing(session.run(request_iterator)) as messages:  # see _events
            async for msg in messages:
                yield msg

    async def Abort(self, request, context):
        aborted = []
        for rid in request.request_ids:  # an n > 1 request: all its completions
            if [child for child in self._groups.get(rid, [rid]) if self.engine.abort(child)]:
                aborted.append(rid)
        return pb.AbortResponse(aborted=aborted)

    async def ModelInfo(self, request, context):
        info = self.engine.info
        if info is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the workers are not ready yet; retry shortly")
        return pb.ModelInfoResponse(
            model_path=self.cfg.model, model_type=info.model_type, vocab_size=info.vocab_size,
            max_input_length=self.cfg.max_input_length, max_output_length=self.cfg.max_output_length,
            max_batch_size=self.cfg.max_batch_size, kv_capacity_tokens=self.engine.capacity, tp=self.cfg.tp,
            eos_token_ids=self.tokenizer.eos_token_ids, device=info.device, dtype=info.dtype,
        )

    async def Tokenize(self, request, context):
        try:
            ids = self._prompt_ids(request)
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.TokenizeResponse(token_ids=ids, tokens=self.tokenizer.hf.convert_ids_to_tokens(ids))

    async def Detokenize(self, request, context):
        ids = list(request.token_ids)
        vocab_size = self.engine.info.vocab_size if self.engine.info else len(self.tokenizer.hf)
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
        return pb.DetokenizeResponse(text=self.tokenizer.decode(ids, request.skip_special_tokens),
                                     tokens=self.tokenizer.hf.convert_ids_to_tokens(ids),
                                     token_bytes=self.tokenizer.token_bytes(ids))

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
        first = ev if ev.prompt_logprobs is not None else nxt
        ev = OutputEvent(text=ev.text + nxt.text, token_ids=ev.token_ids + nxt.token_ids,
                         logprobs=ev.logprobs + nxt.logprobs, top_logprobs=ev.top_logprobs + nxt.top_logprobs,
                         finish_reason=nxt.finish_reason, outcome=nxt.outcome,
                         prompt_logprobs=first.prompt_logprobs, prompt_top_logprobs=first.prompt_top_logprobs)
    return ev


@dataclass
class _Collected:
    """One completion's events gathered into what a GenerateResponse reports."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[TopLogprobs] = field(default_factory=list)
    last: OutputEvent | None = None
    prompt: OutputEvent | None = None  # the event that carried prompt_logprobs

    def add(self, ev: OutputEvent) -> None:
        if ev.prompt_logprobs is not None:
            self.prompt = ev
        self.token_ids.extend(ev.token_ids)
        self.logprobs.extend(ev.logprobs)
        self.tops.extend(ev.top_logprobs)
        self.last = ev

    def completion(self, index: int, spell: TokenBytes | None) -> pb.Completion:
        out = self.last.outcome
        return pb.Completion(index=index, text=out.text, token_ids=self.token_ids, finish_reason=self.last.finish_reason,
                             stop_string=out.stop_string, logprobs=self.logprobs, top_logprobs=_top_messages(self.tops, spell),
                             token_bytes=spell(self.token_ids) if spell else [])


def _merge_usage(reply: pb.GenerateResponse, outcomes: list) -> None:
    """n > 1: tokens generated by all completions, the prompt once; the earliest start, the last end."""
    reply.usage.completion_tokens = sum(o.usage.completion_tokens for o in outcomes)
    reply.timings.queue_ms = min(o.timings.queue_ms for o in outcomes)
    reply.timings.ttft_ms = min(o.timings.ttft_ms for o in outcomes)
    reply.timings.total_ms = max(o.timings.total_ms for o in outcomes)


def _stream_chunk(request_id: str, first: Request, index: int, ev: OutputEvent,
                  tokenizer: Tokenizer) -> pb.GenerateStreamChunk:
    """The tokenizer spells the prompt's tokens when they are scored, and the generated ones when
    `first` asks for logprobs (its siblings ask as it does)."""
    spell = tokenizer.token_bytes if first.sampling.logprobs else None
    chunk = pb.GenerateStreamChunk(request_id=request_id, text=ev.text, token_ids=ev.token_ids, index=index,
                                   logprobs=ev.logprobs, top_logprobs=_top_messages(ev.top_logprobs, spell),
                                   token_bytes=spell(ev.token_ids) if spell else [])
    if ev.prompt_logprobs is not None:
        chunk.prompt_token_ids.extend(first.prompt_ids)
        chunk.prompt_token_bytes.extend(tokenizer.token_bytes(first.prompt_ids))
        chunk.prompt_logprobs.extend(ev.prompt_logprobs)
        chunk.prompt_top_logprobs.extend(_top_messages(ev.prompt_top_logprobs or [], tokenizer.token_bytes))
    if ev.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
        chunk.finish_reason = ev.finish_reason
        chunk.stop_string = ev.outcome.stop_string
        chunk.usage.CopyFrom(ev.outcome.usage)
        chunk.timings.CopyFrom(ev.outcome.timings)
    return chunk


def _top_messages(tops: list[TopLogprobs], spell: TokenBytes | None = None) -> list[pb.TopLogprobs]:
    """spell: each alternative's bytes too (None: ids and logprobs only)."""
    return [pb.TopLogprobs(token_ids=ids, logprobs=values, token_bytes=spell(ids) if spell else [])
            for ids, values in tops]


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
            if completion_count(params) != 1:
                raise InvalidRequest("n must be 1 in a chat: a turn has one reply (use Generate for n completions)")
            if params.HasField("prompt_logprobs"):
                raise InvalidRequest("prompt_logprobs is for Generate and GenerateStream (a chat turn's prompt is the "
                                     "whole conversation)")
            ids = svc.tokenizer.apply_chat_template(self.messages + [{"role": "user", "content": user.content}])
            [req] = svc._new_requests(f"{self.session_id}-{self.turn}", ids, params)
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
                    spell = svc._spelling(req)
                    self.out.put_nowait(pb.ChatServerMessage(chunk=pb.TurnChunk(
                        turn=self.turn, text=ev.text, token_ids=ev.token_ids, logprobs=ev.logprobs,
                        top_logprobs=_top_messages(ev.top_logprobs, spell),
                        token_bytes=spell(ev.token_ids) if spell else [],
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
