"""The scheduler as the gateway's routes see it (one gRPC channel, the model's limits, a prompt's
text for echo), and errors in OpenAI's shape: {"error": {"message", "type", "param",
"code"}}, with gRPC codes mapped onto HTTP statuses (INVALID_ARGUMENT 400, RESOURCE_EXHAUSTED 429,
UNAVAILABLE 503, ...)."""

from __future__ import annotations

import grpc

from litelang.proto import litelang_pb2 as pb
from litelang.proto import litelang_pb2_grpc

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    @classmethod
    def from_rpc(cls, e: grpc.aio.AioRpcError) -> "HTTPError":
        return cls(HTTP_STATUS.get(e.code(), 500), e.details() or e.code().name, code=e.code().name)


class Backend:
    """The scheduler as the routes see it: one gRPC channel, and the model's limits."""

    def __init__(self, address: str, served_model_name: str = ""):
        self.address, self.served_model_name = address, served_model_name
        self.channel: grpc.aio.Channel | None = None
        self.stub: litelang_pb2_grpc.LitelangStub | None = None
        self._info: pb.ModelInfoResponse | None = None

    async def open(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = litelang_pb2_grpc.LitelangStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def info(self) -> pb.ModelInfoResponse:
        if self._info is None:
            self._info = await self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
        return self._info

    async def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return (await self.info()).model_path.rstrip("/").rsplit("/", 1)[-1]

    async def check_model(self, asked: str) -> str:
        """The served model's name; 404 for any other (an empty `model` means this one)."""
        name = await self.model_name()
        if asked and asked != name:
            raise HTTPError(404, f"The model `{asked}` does not exist (this server serves `{name}`).", "model",
                            "model_not_found")
        return name

    async def prompt_text(self, request: pb.GenerateRequest) -> str:
        """A completion request's prompt as text (for echo): token ids are detokenized, once, before
        the reply starts."""
        if request.WhichOneof("input") == "prompt":
            return request.prompt
        reply = await self.stub.Detokenize(pb.DetokenizeRequest(token_ids=request.input_ids.ids), timeout=10)
        return reply.text
