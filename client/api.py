"""A small Python API over the generated stubs: sync and asyncio, streaming as iterators.

    from litelang import LitelangClient
    with LitelangClient("127.0.0.1:50051") as c:
        print(c.generate("def fibonacci(n):", max_new_tokens=48).text)
        for piece in c.generate_stream("Hello", max_new_tokens=16):
            print(piece.text, end="", flush=True)

Replies are the proto messages. With logprobs=True each token_ids entry has its logprobs entry;
top_logprobs=N (needs logprobs) adds top_logprobs[i].token_ids / .logprobs, the N most likely
tokens at that position, most likely first (GenerateResponse, GenerateStreamChunk, TurnChunk).
n=N (Generate, GenerateStream) asks for N completions: GenerateResponse.completions, and each
GenerateStreamChunk's index says which completion it continues.
"""

from __future__ import annotations

import json
from typing import AsyncIterator, Iterator

import grpc

from litelang.proto import litelang_pb2 as pb
from litelang.proto import litelang_pb2_grpc
from litelang.proto.json_values import json_object

SAMPLING_FIELDS = {f.name for f in pb.SamplingParams.DESCRIPTOR.fields}


def sampling_params(**kwargs) -> pb.SamplingParams:
    """SamplingParams from keyword arguments; None leaves a field unset (server default)."""
    unknown = set(kwargs) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling parameters {sorted(unknown)}; known: {sorted(SAMPLING_FIELDS)}")
    return pb.SamplingParams(**{k: v for k, v in kwargs.items() if v is not None})


def generate_request(
    prompt: str | list[int] | list[dict[str, str]], request_id: str = "", priority: int = 0, suffix: str = "",
    **sampling
) -> pb.GenerateRequest:
    """A GenerateRequest from text, token ids, or chat messages ([{"role":..., "content":...}]).
    priority: lower is served first. suffix (with text): fill in the middle between prompt and suffix."""
    req = pb.GenerateRequest(request_id=request_id, priority=priority, suffix=suffix,
                             sampling=sampling_params(**sampling))
    if isinstance(prompt, str):
        req.prompt = prompt
    elif prompt and isinstance(prompt[0], dict):
        req.messages.CopyFrom(chat_messages(prompt))
    else:
        req.input_ids.ids.extend(prompt)
    return req


def tokenize_request(prompt: str | list[dict[str, str]], suffix: str = "") -> pb.TokenizeRequest:
    if isinstance(prompt, str):
        return pb.TokenizeRequest(prompt=prompt, suffix=suffix)
    return pb.TokenizeRequest(messages=chat_messages(prompt))


def chat_messages(messages: list[dict], tools: list[dict] | None = None,
                  continue_final_message: bool = False) -> pb.ChatMessages:
    """Messages as OpenAI writes them ({"role", "content"}; an assistant's "tool_calls", a tool
    result's "tool_call_id" and "name"), the tools offered (JSON-like dicts, sent as structure:
    proto/json_values.py), and whether the last (assistant) message is a reply to continue."""
    return pb.ChatMessages(
        messages=[pb.ChatMessage(role=m["role"], content=m.get("content") or "",
                                 tool_calls_json=json.dumps(m["tool_calls"]) if m.get("tool_calls") else "",
                                 tool_call_id=m.get("tool_call_id") or "", name=m.get("name") or "")
                  for m in messages],
        tools=[json_object(tool) for tool in tools or []], continue_final_message=continue_final_message)


class ChatSession:
    """A multi-turn conversation over the bidirectional Chat stream (sync)."""

    def __init__(self, stub: litelang_pb2_grpc.LitelangStub, system_prompt: str = "", **sampling):
        import queue

        self._outbox: queue.Queue = queue.Queue()
        self._outbox.put(pb.ChatClientMessage(open=pb.OpenSession(system_prompt=system_prompt, sampling=sampling_params(**sampling))))
        self._replies = stub.Chat(iter(self._outbox.get, None))
        opened = next(self._replies)
        if opened.WhichOneof("msg") == "error":
            raise RuntimeError(opened.error.message)
        self.session_id = opened.opened.session_id

    def send(self, content: str, **sampling) -> Iterator[pb.ChatServerMessage]:
        """Send a user turn; yield its chunks, then its TurnEnd (or TurnError)."""
        self._outbox.put(pb.ChatClientMessage(user_turn=pb.UserTurn(content=content, sampling=sampling_params(**sampling))))
        for msg in self._replies:
            yield msg
            if msg.WhichOneof("msg") in ("end", "error"):
                return

    def cancel(self) -> None:
        self._outbox.put(pb.ChatClientMessage(cancel=pb.CancelTurn()))

    def close(self) -> None:
        self._outbox.put(pb.ChatClientMessage(close=pb.CloseSession()))
        self._outbox.put(None)
        for _ in self._replies:  # drain until the server ends the stream
            pass


class LitelangClient:
    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = None):
        self.channel = grpc.insecure_channel(address)
        self.stub = litelang_pb2_grpc.LitelangStub(self.channel)
        self.timeout = timeout

    def __enter__(self) -> "LitelangClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def generate(self, prompt, request_id: str = "", priority: int = 0, suffix: str = "",
                 **sampling) -> pb.GenerateResponse:
        return self.stub.Generate(generate_request(prompt, request_id, priority, suffix, **sampling), timeout=self.timeout)

    def generate_stream(self, prompt, request_id: str = "", priority: int = 0, suffix: str = "",
                        **sampling) -> Iterator[pb.GenerateStreamChunk]:
        return self.stub.GenerateStream(generate_request(prompt, request_id, priority, suffix, **sampling), timeout=self.timeout)

    def chat(self, system_prompt: str = "", **sampling) -> ChatSession:
        return ChatSession(self.stub, system_prompt, **sampling)

    def abort(self, *request_ids: str) -> list[str]:
        return list(self.stub.Abort(pb.AbortRequest(request_ids=request_ids)).aborted)

    def model_info(self) -> pb.ModelInfoResponse:
        return self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=self.timeout)

    def tokenize(self, prompt: str | list[dict[str, str]], suffix: str = "") -> pb.TokenizeResponse:
        """The server's token ids (and vocabulary entries) for text or chat messages (with a
        suffix: the fill-in-the-middle prompt)."""
        return self.stub.Tokenize(tokenize_request(prompt, suffix), timeout=self.timeout)

    def detokenize(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        request = pb.DetokenizeRequest(token_ids=token_ids, skip_special_tokens=skip_special_tokens)
        return self.stub.Detokenize(request, timeout=self.timeout).text

    def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str]:
        """Each id's vocabulary entry (as TokenizeResponse.tokens spells them)."""
        return list(self.stub.Detokenize(pb.DetokenizeRequest(token_ids=token_ids), timeout=self.timeout).tokens)

    def stats(self) -> pb.StatsResponse:
        return self.stub.GetStats(pb.StatsRequest(), timeout=self.timeout)


class AsyncLitelangClient:
    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = None):
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = litelang_pb2_grpc.LitelangStub(self.channel)
        self.timeout = timeout

    async def __aenter__(self) -> "AsyncLitelangClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def generate(self, prompt, request_id: str = "", priority: int = 0, suffix: str = "",
                       **sampling) -> pb.GenerateResponse:
        return await self.stub.Generate(generate_request(prompt, request_id, priority, suffix, **sampling), timeout=self.timeout)

    async def generate_stream(self, prompt, request_id: str = "", priority: int = 0, suffix: str = "",
                              **sampling) -> AsyncIterator[pb.GenerateStreamChunk]:
        call = self.stub.GenerateStream(generate_request(prompt, request_id, priority, suffix, **sampling), timeout=self.timeout)
        async for chunk in call:
            yield chunk

    async def abort(self, *request_ids: str) -> list[str]:
        return list((await self.stub.Abort(pb.AbortRequest(request_ids=request_ids))).aborted)

    async def model_info(self) -> pb.ModelInfoResponse:
        return await self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=self.timeout)

    async def tokenize(self, prompt: str | list[dict[str, str]], suffix: str = "") -> pb.TokenizeResponse:
        return await self.stub.Tokenize(tokenize_request(prompt, suffix), timeout=self.timeout)

    async def detokenize(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        request = pb.DetokenizeRequest(token_ids=token_ids, skip_special_tokens=skip_special_tokens)
        return (await self.stub.Detokenize(request, timeout=self.timeout)).text

    async def convert_ids_to_tokens(self, token_ids: list[int]) -> list[str]:
        return list((await self.stub.Detokenize(pb.DetokenizeRequest(token_ids=token_ids), timeout=self.timeout)).tokens)

    async def stats(self) -> pb.StatsResponse:
        return await self.stub.GetStats(pb.StatsRequest(), timeout=self.timeout)
