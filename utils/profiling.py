"""Opt-in cProfile of a process's hot loop: set LITELANG_PROFILE_DIR and each profiled block
writes NAME.prof there and prints its top functions when it ends (for finding host overhead)."""

from __future__ import annotations

import contextlib
import cProfile
import gc
import os
import pstats
import sys
import time
from pathlib import Path


@contextlib.contextmanager
def profiled(name: str):
    out_dir = os.environ.get("LITELANG_PROFILE_DIR")
    if not out_dir:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(Path(out_dir) / f"{name}.prof"))
        stats = pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime")
        print(f"==== profile of {name} (top by own time) ====", file=sys.stderr)
        stats.print_stats(22)


class StepTrace:
    """Opt-in per-step timestamps (LITELANG_STEP_TRACE_DIR): where a step's time goes between
    processes, without a profiler's distortion. `mark(step_id, event)` records the monotonic
    clock (one clock for every process on the host); `close()` writes NAME.csv, one row per
    (step, event, seconds, value)."""

    def __init__(self, name: str):
        self.dir = os.environ.get("LITELANG_STEP_TRACE_DIR")
        self.name = name
        self.rows: list[tuple[int, str, float, float]] = []
        self._gc_start = 0.0
        if self.dir:  # garbage-collector passes too: a full one can hold a process for milliseconds
            gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self.rows.append((-1, f"gc{info['generation']}", self._gc_start, 1000 * (time.monotonic() - self._gc_start)))

    def mark(self, step_id: int, event: str, value: float = 0.0) -> None:
        if self.dir:
            self.rows.append((step_id, event, time.monotonic(), value))

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if not self.dir or not self.rows:
            return
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        with open(Path(self.dir) / f"{self.name}.csv", "w") as f:
            f.write("step,event,t,value\n")
            f.writelines(f"{s},{e},{t:.6f},{v:.4f}\n" for s, e, t, v in self.rows)
        self.rows = []
