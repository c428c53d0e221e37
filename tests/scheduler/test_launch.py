"""`litelang-launch CONFIG.yaml` as a person runs it: it brings a worker and a scheduler up as
separate processes, prints the serving line, restarts a worker that dies, and on SIGTERM or
SIGINT stops every process it started (checked with psutil) and frees its ports.

A tiny random Qwen2 with the real tokenizer keeps this fast: it loads in about a second."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest
import yaml

from helpers import (
    REPO_ROOT, alive, child_env, descendants, free_ports, health_status, make_tiny_qwen2_with_tokenizer,
    port_is_listened_on, wait_for,
)
from litelang.client.api import LitelangClient, generate_request
from litelang.proto import litelang_pb2 as pb

pytestmark = pytest.mark.slow


def launch_command() -> list[str]:
    """The installed console script (beside this interpreter), as a person would run it."""
    script = Path(sys.executable).parent / "litelang-launch"
    if not script.exists():
        pytest.fail(f"{script} is missing: install litelang with `pip install -e .`")
    return [str(script)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, default_model_dir) -> Path:
    return make_tiny_qwen2_with_tokenizer(tmp_path_factory.mktemp("tiny_tok_qwen2"), default_model_dir)


class Launcher:
    """litelang-launch in its own session; its output collected line by line."""

    def __init__(self, model: Path, tmp: Path, **extra):
        self.port, self.worker_port = free_ports(2)
        self.config = tmp / "deploy.yaml"
        self.config.write_text(yaml.safe_dump({
            "model": str(model), "device": "cpu", "host": "127.0.0.1", "port": self.port,
            "worker_base_port": self.worker_port, "kv_slots": 8192, "max_batch_size": 4,
            "max_input_length": 256, "max_output_length": 4096, "startup_timeout_s": 120, **extra,
        }))
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._new_lines: queue.Queue = queue.Queue()
        self.seen_pids: set[int] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def worker_address(self) -> str:
        return f"127.0.0.1:{self.worker_port}"

    def start(self) -> "Launcher":
        self.proc = subprocess.Popen(
            [*launch_command(), str(self.config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, cwd=REPO_ROOT, env=child_env(), start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new_lines.put(line)

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and self._new_lines.empty():
                time.sleep(0.2)  # let the reader drain the pipe
                if not any(text in line for line in self.lines):
                    raise AssertionError(f"litelang-launch exited ({self.proc.returncode}) without printing "
                                         f"{text!r}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from litelang-launch after {timeout:.0f}s:\n{self.output()[-4000:]}")
            with contextlib.suppress(queue.Empty):
                self._new_lines.get(timeout=0.2)

    def children(self) -> dict[int, str]:
        """pid -> command line of every live descendant of the launcher."""
        out = {}
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                out[pid] = " ".join(psutil.Process(pid).cmdline())
        self.seen_pids.update(out)
        return out

    def worker_pids(self) -> list[int]:
        return [pid for pid, cmd in self.children().items() if "litelang.worker.main" in cmd]

    def stop_and_check(self, sig: int, expect_rc: int | None = 0) -> None:
        """Send sig to the launcher; it must exit, leave no process and free its ports."""
        self.children()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"litelang-launch did not exit within 60s of {signal.Signals(sig).name}")
        if expect_rc is not None:
            assert rc == expect_rc, f"exit code {rc}:\n{self.output()[-4000:]}"
        self.wait_line("litelang-launch: stopped", 10)
        left = [pid for pid in self.seen_pids if alive(pid)]
        assert not left, f"processes left behind: {left}"
        wait_for(lambda: not port_is_listened_on(self.port) and not port_is_listened_on(self.worker_port),
                 10, "the ports to be released")

    def cleanup(self) -> None:
        """Whatever happened, leave nothing running."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.children()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in self.seen_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # each child has its own process group
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)


@pytest.fixture
def launcher(tiny_model, tmp_path):
    launch = Launcher(tiny_model, tmp_path)
    try:
        yield launch
    finally:
        launch.cleanup()


def bring_up(launch: Launcher) -> None:
    launch.start()
    line = launch.wait_line("litelang is serving")
    assert launch.address in line, line
    assert health_status(launch.address) == "SERVING"
    assert health_status(launch.worker_address) == "SERVING"
    kids = launch.children()
    assert sum("litelang.worker.main" in c for c in kids.values()) == 1, kids
    assert sum("litelang.scheduler.main" in c for c in kids.values()) == 1, kids
    assert sum("spawn_main" in c for c in kids.values()) == 1, kids  # the scheduler's engine process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_launch_serves_then_stops_cleanly(launcher, sig):
    bring_up(launcher)
    with LitelangClient(launcher.address, timeout=60) as client:
        reply = client.generate("def f():", max_new_tokens=8, temperature=0, ignore_eos=True)
        assert reply.usage.completion_tokens == 8 and reply.finish_reason == pb.FINISH_REASON_LENGTH
        assert client.model_info().kv_capacity_tokens == 8192
    launcher.stop_and_check(sig)


def test_launch_stopped_while_starting_leaves_nothing(launcher):
    launcher.start()
    # as soon as the worker process exists (it is still importing/loading), stop the launcher
    wait_for(launcher.worker_pids, 60, "the launcher to start a worker", interval=0.05)
    launcher.stop_and_check(signal.SIGTERM, expect_rc=None)


def test_launch_restarts_a_killed_worker(launcher):
    bring_up(launcher)
    (old,) = launcher.worker_pids()
    with LitelangClient(launcher.address, timeout=120) as client:
        stream = client.stub.GenerateStream(
            generate_request("def f():", max_new_tokens=4000, temperature=0, ignore_eos=True), timeout=120)
        assert next(stream).token_ids
        os.kill(old, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        new = wait_for(lambda: [p for p in launcher.worker_pids() if p != old], 60, "a new worker process")
        assert not alive(old)
        wait_for(lambda: health_status(launcher.worker_address) == "SERVING", 120, "the new worker to be healthy")
        wait_for(lambda: health_status(launcher.address) == "SERVING", 60, "the scheduler to reconnect")
        reply = client.generate("def f():", max_new_tokens=8, temperature=0, ignore_eos=True)
        assert reply.usage.completion_tokens == 8
    assert "restarting" in launcher.output()
    assert len(new) == 1 and new[0] in launcher.children()
    launcher.stop_and_check(signal.SIGTERM)


def test_launch_with_openai_port_serves_the_gateway_too(tiny_model, tmp_path):
    """openai_port set: the launcher also starts `litelang.gateway.main`, prints its URL, and stops
    it with the rest (its port released too)."""
    import json
    import urllib.request

    import openai

    [http_port] = free_ports(1)
    launch = Launcher(tiny_model, tmp_path, openai_port=http_port)
    try:
        bring_up(launch)
        line = launch.wait_line("OpenAI-compatible API on")
        assert f"http://127.0.0.1:{http_port}/v1" in line, line
        assert sum("litelang.gateway.main" in c for c in launch.children().values()) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/models", timeout=10) as reply:
            assert [m["id"] for m in json.load(reply)["data"]] == [tiny_model.name]
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0, timeout=60)
        got = api.chat.completions.create(model=tiny_model.name, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
        assert got.usage.completion_tokens == 4
        launch.stop_and_check(signal.SIGTERM)
        wait_for(lambda: not port_is_listened_on(http_port), 10, "the gateway's port to be released")
    finally:
        launch.cleanup()
