"""`litelang-openai`: the OpenAI-compatible HTTP API on host:openai_port, in front of the
scheduler at host:port (the same config keys as every litelang process)."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from litelang.configs.schema import add_config_args, config_from_args
from litelang.gateway.app import build_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litelang-openai", description=__doc__)
    add_config_args(parser)
    try:
        cfg = config_from_args(parser.parse_args(argv))
    except (ValueError, OSError) as e:
        parser.error(str(e))
    if not cfg.openai_port:
        parser.error("openai_port is 0 (off): give --openai-port PORT")
    app = build_app(cfg.address, cfg.served_model_name, cfg.api_key or os.environ.get("LITELANG_API_KEY", ""),
                    cfg.allowed_origins)
    # the asyncio loop (grpc.aio's); uvicorn takes httptools' HTTP parser when it is installed
    uvicorn.run(app, host=cfg.host, port=cfg.openai_port, log_level=cfg.log_level.lower(), loop="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
