"""litelang's client: a Python API over the gRPC stubs (sync and asyncio) and the `litelang` CLI."""

from litelang.client.api import AsyncLitelangClient, LitelangClient, generate_request, sampling_params

__all__ = ["AsyncLitelangClient", "LitelangClient", "generate_request", "sampling_params"]
