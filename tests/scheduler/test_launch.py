"""`litelang-launch CONFIG.yaml` as a person runs it: it brings a worker and a scheduler up as
separate processes, prints the serving line, restarts a worker that dies, and on SIGTERM or
SIGINT stops every process it started (checked with psutil) and frees its ports.

A tiny random Qwen2 with the real tokenizer keeps this fast: it loads in about a second."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from helpers import alive, free_ports, health_status, port_is_listened_on, wait_for
from launcher import Launcher
from litelang.client.api import LitelangClient, generate_request
from litelang.proto import litelang_pb2 as pb

pytestmark = pytest.mark.slow


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
