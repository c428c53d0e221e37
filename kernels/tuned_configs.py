"""The kernel configs measured on the device, read once at import from tuned_configs.json.

The kernels pick their launch configs from these tables instead of autotuning at run time, which
would benchmark during CUDA-graph capture. Each table in the file names the bench/ tuner that
measured it, the device and the commit that recorded it, so a table can be re-measured on
another GPU and its rows replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("tuned_configs.json")
TABLES: dict[str, Any] = json.loads(PATH.read_text())


def table(name: str) -> dict[str, Any]:
    """One table of the file (linear, extend_attention, decode_attention, batch_invariant_linear)."""
    return TABLES[name]
