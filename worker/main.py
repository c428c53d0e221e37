"""`litelang-worker`: one tensor-parallel rank as a gRPC server."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from litelang.configs.schema import add_config_args, config_from_args
from litelang.proto import worker_pb2_grpc
from litelang.worker.service import WorkerService
from litelang.worker.setup import build_runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litelang-worker", description=__doc__)
    add_config_args(parser)
    parser.add_argument("--rank", type=int, default=0, help="tensor-parallel rank of this worker")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    logging.basicConfig(level=cfg.log_level.upper(), format=f"%(asctime)s worker[{args.rank}] %(levelname)s %(message)s")
    if not 0 <= args.rank < cfg.tp:
        parser.error(f"--rank must be in [0, {cfg.tp})")

    health_servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = cfg.worker_addresses()[args.rank]
    port = address.rsplit(":", 1)[1]
    server.add_insecure_port(f"0.0.0.0:{port}" if cfg.workers else address)
    service = WorkerService(cfg, args.rank)
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()  # answer health checks (NOT_SERVING) while the weights load

    service.runner = build_runner(cfg, args.rank)
    gc.collect()
    gc.freeze()  # the model's objects live forever: keep them out of every later GC pass
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    logging.info("serving on %s", address)

    def stop(signum, frame):
        server.stop(grace=1.0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
