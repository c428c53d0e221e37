"""`litelang-scheduler`: the client-facing gRPC server that drives the workers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from litelang.configs.schema import LitelangConfig, add_config_args, config_from_args
from litelang.proto import litelang_pb2, litelang_pb2_grpc
from litelang.scheduler.engine import Engine
from litelang.scheduler.service import LitelangService
from litelang.scheduler.tokenizer import Tokenizer
from litelang.scheduler.worker_client import WorkerGroup
from litelang.tools.profiling import profiled

log = logging.getLogger("litelang.scheduler")


async def serve(cfg: LitelangConfig) -> None:
    tokenizer = Tokenizer(cfg.model)
    engine = Engine(cfg, tokenizer, WorkerGroup(cfg.worker_addresses()))
    server = grpc.aio.server()
    litelang_pb2_grpc.add_LitelangServicer_to_server(LitelangService(cfg, engine), server)
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
    if cfg.metrics_port:
        engine.metrics.serve(cfg.metrics_port, cfg.host)
    engine.start_in_thread()

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
    await stop.wait()
    log.info("shutting down")
    health_task.cancel()
    await engine.stop()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litelang-scheduler", description=__doc__)
    add_config_args(parser)
    cfg = config_from_args(parser.parse_args(argv))
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s scheduler %(levelname)s %(message)s")
    with profiled("scheduler"):
        asyncio.run(serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
