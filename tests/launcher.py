"""`litelang-launch CONFIG.yaml` as its own process, for the tests that run it as a person would
(test_launch, test_tp): its output read line by line, its children tracked, nothing left behind."""

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

import psutil
import pytest
import yaml

from helpers import (
    REPO_ROOT, LoopbackAddresses, alive, child_env, descendants, free_ports, port_is_listened_on, wait_for,
)


def launch_command() -> list[str]:
    """The installed console script (beside this interpreter), as a person would run it."""
    script = Path(sys.executable).parent / "litelang-launch"
    if not script.exists():
        pytest.fail(f"{script} is missing: install litelang with `pip install -e .`")
    return [str(script)]


class Launcher(LoopbackAddresses):
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
