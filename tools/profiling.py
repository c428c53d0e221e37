"""Opt-in cProfile of a process's hot loop: set LITELANG_PROFILE_DIR and each profiled block
writes NAME.prof there and prints its top functions when it ends (for finding host overhead)."""

from __future__ import annotations

import contextlib
import cProfile
import os
import pstats
import sys
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
