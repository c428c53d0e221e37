"""The OpenAI-compatible HTTP API (FastAPI), wired: the Backend (the scheduler's gRPC API), the
API key, OpenAI-shaped errors, the metrics and CORS middlewares, and the routes (gateway/routes/,
one module per endpoint). The gateway holds no model state: it can run anywhere that reaches the
scheduler."""

from __future__ import annotations

import contextlib
import secrets

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from litelang.gateway.backend import Backend, HTTPError
from litelang.gateway.metrics import HTTPMetrics
from litelang.gateway.protocol import RequestError
from litelang.gateway.routes import chat, completions, health, models, responses, tokens

ROUTES = (health, models, completions, chat, responses, tokens)
# routes left open when an API key is set: probes, scrapers, and what a deployment checks first
OPEN_PATHS = ("/health", "/ping", "/metrics", "/version")


def build_app(address: str, served_model_name: str = "", api_key: str = "",
              allowed_origins: list[str] | None = None) -> FastAPI:
    """api_key: when set, every route but OPEN_PATHS asks for `Authorization: Bearer <api_key>`.
    allowed_origins: the browser origins CORS lets call the API (as vLLM's default, any: the key
    is a header, not a cookie)."""
    backend = Backend(address, served_model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.open()
        yield
        await backend.close()

    async def require_api_key(request: Request) -> None:
        if api_key and request.url.path not in OPEN_PATHS and request.method != "OPTIONS":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                raise HTTPError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                                code="invalid_api_key")

    app = FastAPI(title="litelang OpenAI-compatible API", lifespan=lifespan,
                  dependencies=[Depends(require_api_key)])
    app.state.backend = backend
    app.state.metrics_registry = CollectorRegistry()
    _add_error_handlers(app)
    for module in ROUTES:
        app.include_router(module.router)
    paths = {route.path for module in ROUTES for route in module.router.routes}
    app.add_middleware(HTTPMetrics, registry=app.state.metrics_registry, routes=paths)
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=allowed_origins, allow_methods=["*"], allow_headers=["*"])
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal in OpenAI's error shape (backend.py): the gateway's own, the scheduler's gRPC
    statuses, and pydantic's (400, as OpenAI answers a malformed body, not FastAPI's 422)."""

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, e: HTTPError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, e: RequestError):
        return JSONResponse(HTTPError(400, str(e), e.param).body(), status_code=400)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def on_rpc_error(request: Request, e: grpc.aio.AioRpcError):
        err = HTTPError.from_rpc(e)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in p['loc'][1:]) or 'body'}: {p['msg']}" for p in e.errors())
        return JSONResponse(HTTPError(400, f"invalid request: {problems}").body(), status_code=400)
