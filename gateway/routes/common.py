"""What the routes share: the app's Backend as a FastAPI dependency, the request id, and the two
reply shapes (a JSON body, an SSE stream), both naming the id in X-Request-Id."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from litelang.gateway.backend import Backend


def _backend(http: Request) -> Backend:
    return http.app.state.backend


# a route parameter of this type gets the app's Backend (build_app sets it)
BackendDep = Annotated[Backend, Depends(_backend)]


def request_id(http: Request, prefix: str, sep: str = "-") -> str:
    """The caller's X-Request-Id (as vLLM takes it), or a fresh `<prefix>-<hex>` (a response's:
    `resp_<hex>`, as OpenAI spells it): the response's id and the scheduler's, so a gRPC Abort
    with it ends the request."""
    return http.headers.get("x-request-id") or f"{prefix}{sep}{uuid.uuid4().hex}"


def json_reply(body: dict, rid: str) -> JSONResponse:
    return JSONResponse(body, headers={"X-Request-Id": rid})


def sse_reply(events: AsyncIterator[str], rid: str) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"X-Request-Id": rid})
