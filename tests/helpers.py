"""Test helpers importable from any test module (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def make_tiny_qwen2(path: Path, tie: bool = True, seed: int = 0, **overrides) -> Path:
    """Save a random Qwen2 (2 layers, hidden 64, 4 heads / 2 kv heads) with HF transformers."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kwargs = dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=10000.0, tie_word_embeddings=tie, rms_norm_eps=1e-6,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**kwargs)).eval()
    with torch.no_grad():  # HF inits biases to zero; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------
# Real processes: a worker and a scheduler (or litelang-launch) on free loopback ports.
# ---------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")

_live_groups: set = set()  # groups not stopped yet: killed at interpreter exit whatever happens


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (conftest.free_port, without repeats)."""
    from conftest import free_port  # tests/ is on sys.path; imported late (conftest imports us)

    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def port_is_listened_on(port: int) -> bool:
    """True while some process listens on 127.0.0.1:port (a bind with SO_REUSEADDR fails)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return True
    return False


def health_status(address: str, timeout: float = 1.0) -> str | None:
    """grpc.health.v1 status name of the server at address ('SERVING', ...), None if unreachable."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError:
        return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2, on_timeout=lambda: ""):
    """Poll predicate() until it returns something truthy; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{on_timeout()}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> bool:
    """Signal proc's process group (it was started with its own session), then SIGKILL what is
    left. Returns whether proc exited by itself within timeout."""
    exited = True
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            exited = False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return exited


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LoopbackAddresses:
    """The scheduler's and the (first) worker's gRPC addresses, from their ports on 127.0.0.1."""

    port: int
    worker_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def worker_address(self) -> str:
        return f"127.0.0.1:{self.worker_port}"


class ServerGroup(LoopbackAddresses):
    """One worker (tp=1) and one scheduler as separate OS processes, configured by flags.

        with ServerGroup(model_dir, log_dir, kv_slots=512, max_input_length=64) as g:
            g.client.generate("def f():", max_new_tokens=8)

    `config` keys are LitelangConfig fields (passed as --flag value). start() waits until the
    scheduler's grpc health says SERVING; stop() terminates both process groups and asserts that
    no process of the group is left and nothing listens on its ports.
    """

    def __init__(self, model: str | Path, log_dir: Path, client_timeout: float = 180.0, **config):
        self.model = str(Path(model).resolve())
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port, self.worker_port = free_ports(2)
        self.config = {"device": "cpu", "log_level": "info", **config}
        self.client_timeout = client_timeout
        self.worker: subprocess.Popen | None = None
        self.scheduler: subprocess.Popen | None = None
        self.client = None
        self._pids: set[int] = set()  # every pid this group started (workers restart)
        self._worker_starts = 0

    # ---- flags

    def flags(self) -> list[str]:
        out = ["--model", self.model, "--port", str(self.port), "--worker-base-port", str(self.worker_port)]
        for key, value in self.config.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + key.replace("_", "-"))
            else:
                out += [flag, str(value)]
        return out

    def _spawn(self, module: str, log_name: str) -> subprocess.Popen:
        log = open(self.log_dir / log_name, "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *self.flags()], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=child_env(), start_new_session=True,
            )
        finally:
            log.close()
        self._pids.add(proc.pid)
        return proc

    def logs(self) -> str:
        return (f"\n--- worker log ---\n{tail(self.log_dir / 'worker.log')}"
                f"\n--- scheduler log ---\n{tail(self.log_dir / 'scheduler.log')}")

    # ---- lifecycle

    def start_worker(self) -> subprocess.Popen:
        self._worker_starts += 1
        self.worker = self._spawn("litelang.worker.main", "worker.log")
        return self.worker

    def start(self, timeout: float = 300.0) -> "ServerGroup":
        from litelang.client.api import LitelangClient

        _live_groups.add(self)
        self.start_worker()
        self.scheduler = self._spawn("litelang.scheduler.main", "scheduler.log")
        self.wait_serving(timeout)
        self.client = LitelangClient(self.address, timeout=self.client_timeout)
        return self

    def wait_serving(self, timeout: float = 300.0) -> None:
        def serving() -> bool:
            for name, proc in (("worker", self.worker), ("scheduler", self.scheduler)):
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"{name} exited with code {proc.returncode}{self.logs()}")
            return health_status(self.address) == "SERVING"

        wait_for(serving, timeout, f"scheduler {self.address} to be SERVING", on_timeout=self.logs)

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        assert self.worker is not None and self.worker.poll() is None, "the worker is not running"
        os.kill(self.worker.pid, sig)
        self.worker.wait(timeout=30)

    def all_pids(self) -> set[int]:
        pids = set(self._pids)
        for proc in (self.worker, self.scheduler):
            if proc is not None:
                pids.update(descendants(proc.pid))
        return pids

    def stop(self) -> None:
        """SIGTERM both process groups (SIGKILL after a grace period); assert nothing is left."""
        _live_groups.discard(self)
        if self.client is not None:
            self.client.close()
            self.client = None
        pids = self.all_pids()
        stubborn = [name for name, proc in (("scheduler", self.scheduler), ("worker", self.worker))
                    if proc is not None and not kill_tree(proc)]
        left = [pid for pid in pids if alive(pid)]
        for pid in left:  # don't leak them into later tests, but do fail
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left after stopping the group: {left}"
        assert not stubborn, f"{stubborn} ignored SIGTERM and had to be killed{self.logs()}"
        wait_for(lambda: not port_is_listened_on(self.port) and not port_is_listened_on(self.worker_port),
                 10, f"ports {self.port}, {self.worker_port} to be released")

    def __enter__(self) -> "ServerGroup":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@atexit.register
def _kill_live_groups() -> None:
    for group in list(_live_groups):
        for proc in (group.scheduler, group.worker):
            if proc is not None:
                with contextlib.suppress(Exception):
                    kill_tree(proc, signal.SIGKILL, timeout=5)


@contextlib.contextmanager
def server_group(model: str | Path, log_dir: Path, **config):
    """A started ServerGroup for a fixture: `yield from` this in a module-scoped fixture."""
    group = ServerGroup(model, log_dir, **config)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def is_idle(stats) -> bool:
    """Nothing runs or waits and no KV slot is held by a request: every slot is free or only in
    the (evictable) prefix cache, so free + cached == capacity. Without a prefix cache (or once it
    is empty) that is kv_free == kv_capacity."""
    return (stats.running == 0 and stats.waiting == 0 and stats.kv_in_use == 0
            and stats.kv_free + stats.kv_cached == stats.kv_capacity and stats.kv_capacity > 0)


def wait_idle(client, timeout: float = 60.0):
    """Poll GetStats until the server is idle (is_idle); return the stats."""
    last = []

    def idle():
        s = client.stats()
        last[:] = [s]
        return s if is_idle(s) else None

    return wait_for(idle, timeout, "the server to be idle with every KV slot free or cached",
                    on_timeout=lambda: f"; last stats: {last[0] if last else None}")


def make_tiny_qwen2_with_tokenizer(path: Path, tokenizer_dir: Path, **overrides) -> Path:
    """A tiny random Qwen2 (loads in a second) that the scheduler can serve: the real vocabulary
    size and the real checkpoint's tokenizer files beside the weights."""
    import shutil

    make_tiny_qwen2(path, **{"vocab_size": 151936, "max_position_embeddings": 8192, **overrides})
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).exists():
            shutil.copyfile(Path(tokenizer_dir) / name, Path(path) / name)
    return path


def config_dir(tmp_path: Path, model: Path, **changes) -> Path:
    """A directory holding only the model's config.json with `changes` (None deletes a key):
    enough for everything that must fail before the weights are read."""
    import json

    config = json.loads((model / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@contextlib.contextmanager
def openai_gateway(group, log_dir: Path, *flags: str, env: dict | None = None):
    """`litelang-openai` (the installed console script) in front of the group's scheduler: its
    base URL; stopped (and its port released) on exit."""
    from litelang.scheduler.launch import http_ok

    script = Path(sys.executable).parent / "litelang-openai"
    assert script.exists(), f"{script} is missing: install litelang with `pip install -e .`"
    [port] = free_ports(1)
    log = open(log_dir / "gateway.log", "wb")
    proc = subprocess.Popen([str(script), "--port", str(group.port), "--openai-port", str(port),
                             "--log-level", "warning", *flags],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**child_env(), **(env or {})},
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, f"the gateway exited with code {proc.returncode}"
        return http_ok(f"{url}/health")

    try:
        wait_for(healthy, 60, "the gateway's /health to answer 200")
        yield f"{url}/v1"
    finally:
        assert kill_tree(proc), "the gateway ignored SIGTERM"
        log.close()
        wait_for(lambda: not port_is_listened_on(port), 10, f"port {port} to be released")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from the Prometheus text on 127.0.0.1:port/metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# Kernel tests


def make_pool(device, dtype, kv_heads, head_dim, contexts, max_context=256, seed=0):
    """A KV pool and req->slot table with shuffled slots; rows 1 and 2 share a 20-token prefix
    (as the radix cache shares one). Request b uses row req_rows[b] (not b)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = len(contexts) + 3
    num_slots = rows * max_context + 16
    k_pool = torch.randn(num_slots, kv_heads, head_dim, generator=g).to(device, dtype)
    v_pool = torch.randn(num_slots, kv_heads, head_dim, generator=g).to(device, dtype)
    req_to_slot = torch.randperm(num_slots, generator=g)[: rows * max_context].view(rows, max_context)
    req_rows = torch.randperm(rows, generator=g)[: len(contexts)]
    if len(contexts) > 2:
        req_to_slot[req_rows[2], :20] = req_to_slot[req_rows[1], :20]
    return k_pool, v_pool, req_to_slot.to(device, torch.int32), req_rows.to(device, torch.int32)
