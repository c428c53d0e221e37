"""What probes and scrapers ask: GET /health (and vLLM's /ping, GET or POST: SageMaker's probe)
answers 200 while the scheduler serves and 503 otherwise, /version, and /metrics (the gateway's
own, gateway/metrics.py)."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import litelang
from litelang.gateway.routes.common import BackendDep

router = APIRouter()


@router.get("/health")
@router.get("/ping")
@router.post("/ping")
async def health(backend: BackendDep):
    stub = health_pb2_grpc.HealthStub(backend.channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        serving = False
    return JSONResponse({"status": "ok" if serving else "unavailable"}, status_code=200 if serving else 503)


@router.get("/version")
async def version():
    return {"version": litelang.__version__}


@router.get("/metrics")
async def metrics(http: Request):
    return Response(generate_latest(http.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
