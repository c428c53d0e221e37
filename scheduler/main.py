"""`litelang-scheduler`: the client-facing gRPC server (this process, scheduler/frontend/) and the
engine that drives the workers (a child process, scheduler/engine/)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from litelang.configs.schema import add_config_args, config_from_args
from litelang.scheduler.frontend.server import serve
from litelang.utils.profiling import profiled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litelang-scheduler", description=__doc__)
    add_config_args(parser)
    cfg = config_from_args(parser.parse_args(argv))
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s scheduler %(levelname)s %(message)s")
    with profiled("scheduler"):
        return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
