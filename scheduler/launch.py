"""`litelang-launch CONFIG.yaml`: start the workers and the scheduler as separate processes.

Waits until each reports healthy (gRPC health checking), starts the OpenAI-compatible gateway
when `openai_port` is set, prints the address, restarts a worker that dies (the scheduler fails
that worker's requests with UNAVAILABLE and reconnects), and on Ctrl-C or SIGTERM stops every
process it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from litelang.configs.schema import LitelangConfig, add_config_args, config_from_args


class LaunchError(RuntimeError):
    pass


def is_serving(address: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Group:
    """The processes of one deployment, each in its own process group so stopping is thorough."""

    def __init__(self, cfg: LitelangConfig, config_file: Path):
        self.cfg, self.config_file = cfg, config_file
        self.workers: list[subprocess.Popen | None] = [None] * cfg.tp
        self.scheduler: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None
        self.stopping = lambda: False  # set by main: a signal arrived

    def _spawn(self, module: str, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", module, "--config", str(self.config_file), *extra]
        return subprocess.Popen(cmd, start_new_session=True)

    def start_worker(self, rank: int) -> None:
        self.workers[rank] = self._spawn("litelang.worker.main", "--rank", str(rank))

    def wait_healthy(self, name: str, proc: subprocess.Popen, address: str, check=is_serving) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while not check(address):
            if self.stopping():
                raise LaunchError(f"interrupted while waiting for {name}")
            if proc.poll() is not None:
                raise LaunchError(f"{name} exited with code {proc.returncode} before becoming healthy")
            if time.monotonic() > deadline:
                raise LaunchError(f"{name} not healthy on {address} after {self.cfg.startup_timeout_s:.0f}s")
            time.sleep(0.5)

    def start(self) -> None:
        addresses = self.cfg.worker_addresses()
        for rank in range(self.cfg.tp):
            self.start_worker(rank)
        for rank, address in enumerate(addresses):
            self.wait_healthy(f"worker {rank}", self.workers[rank], address)
            print(f"litelang-launch: worker {rank} healthy on {address}", flush=True)
        self.scheduler = self._spawn("litelang.scheduler.main")
        self.wait_healthy("scheduler", self.scheduler, self.cfg.address)
        if self.cfg.openai_port:
            self.gateway = self._spawn("litelang.gateway.main")
            url = f"http://{self.cfg.host}:{self.cfg.openai_port}/health"
            self.wait_healthy("the OpenAI gateway", self.gateway, url, check=http_ok)

    def watch(self, stopping) -> int:
        """Restart dead workers until asked to stop; returns the exit code."""
        while not stopping():
            if self.scheduler.poll() is not None:
                print(f"litelang-launch: scheduler exited with code {self.scheduler.returncode}", file=sys.stderr)
                return 1
            if self.gateway is not None and self.gateway.poll() is not None:
                print(f"litelang-launch: the OpenAI gateway exited with code {self.gateway.returncode}", file=sys.stderr)
                return 1
            for rank, proc in enumerate(self.workers):
                if proc.poll() is not None:
                    print(f"litelang-launch: worker {rank} exited ({proc.returncode}); restarting the group", file=sys.stderr)
                    # NCCL cannot heal a partial group: restart every rank
                    self._stop_procs(self.workers)
                    for r in range(self.cfg.tp):
                        self.start_worker(r)
                    break
            time.sleep(0.5)
        return 0

    @staticmethod
    def _stop_procs(procs, timeout: float = 10.0) -> None:
        live = [p for p in procs if p is not None and p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            if p is None:
                continue
            try:
                os.killpg(p.pid, signal.SIGKILL)  # whatever is left of each process group
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()

    def stop(self) -> None:
        self._stop_procs([self.gateway])
        self._stop_procs([self.scheduler])
        self._stop_procs(self.workers)


def ready_hint(cfg: LitelangConfig) -> str:
    """A line a person can paste into another terminal to see a reply."""
    address = "" if cfg.address == "127.0.0.1:50051" else f" --address {cfg.address}"
    return (f'try, in another terminal: litelang{address} generate "def fibonacci(n):" '
            "--max-new-tokens 48 --temperature 0   (Ctrl-C here stops the server)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litelang-launch", description=__doc__)
    parser.add_argument("config_file", metavar="CONFIG.yaml", help="deployment config (see configs/default.yaml)")
    add_config_args(parser)  # any key can be overridden by a flag
    args = parser.parse_args(argv)
    args.config = args.config or args.config_file
    try:
        cfg = config_from_args(args)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    if not (Path(cfg.model) / "config.json").exists():
        parser.error(f"model directory {cfg.model} has no config.json (run `make model` for the default model)")

    stop_requested = False

    def on_signal(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    with tempfile.TemporaryDirectory(prefix="litelang-") as tmp:
        resolved = Path(tmp) / "config.yaml"  # children read exactly what the launcher resolved
        resolved.write_text(yaml.safe_dump(cfg.to_dict()))
        group = Group(cfg, resolved)
        group.stopping = lambda: stop_requested
        try:
            group.start()
            print(f"litelang is serving {cfg.model} on {cfg.address}", flush=True)
            if cfg.openai_port:
                print(f"OpenAI-compatible API on http://{cfg.host}:{cfg.openai_port}/v1", flush=True)
            print(ready_hint(cfg), flush=True)
            code = group.watch(group.stopping)
        except LaunchError as e:
            print(f"litelang-launch: {e}", file=sys.stderr)
            code = 1
        finally:
            group.stop()
            print("litelang-launch: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
