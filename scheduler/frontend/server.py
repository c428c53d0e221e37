"""The frontend process's gRPC server: the Litelang service, health and reflection, and the
engine process it starts and stops."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2, litelang_pb2_grpc
from litelang.scheduler.frontend.engine_client import EngineClient
from litelang.scheduler.frontend.service import LitelangService
from litelang.scheduler.tokenizer import Tokenizer

log = logging.getLogger("litelang.scheduler")


async def serve(cfg: LitelangConfig) -> int:
    tokenizer = Tokenizer(cfg.model)
    engine = EngineClient(cfg)
    server = grpc.aio.server()
    litelang_pb2_grpc.add_LitelangServicer_to_server(LitelangService(cfg, engine, tokenizer), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        litelang_pb2.DESCRIPTOR.services_by_name["Litelang"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
    if server.add_insecure_port(cfg.address) == 0:
        raise SystemExit(f"cannot listen on {cfg.address}: is another server using the port?")
    await server.start()
    engine.start()  # serves the Prometheus metrics (metrics_port) too

    async def track_health() -> None:
        """SERVING once the workers answered Init; NOT_SERVING while they are down."""
        last = None
        while True:
            status = health_pb2.HealthCheckResponse.SERVING if engine.healthy else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                await health_servicer.set("", status)
                last = status
                log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            await asyncio.sleep(0.2)

    health_task = asyncio.ensure_future(track_health())
    log.info("litelang scheduler listening on %s (workers: %s)", cfg.address, ", ".join(cfg.worker_addresses()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    died = asyncio.ensure_future(engine.died.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), died], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down")
    health_task.cancel()
    await engine.stop()
    await server.stop(grace=1.0)
    return 1 if died.done() else 0
