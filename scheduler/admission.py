"""Will admitting one more request overcommit the KV pool before the batch finishes?

Each request i holds a_i slots now and may still need b_i (its remaining output). If the
requests are sorted by b descending, at the moment the i-th of them finishes every request
with a longer tail still runs, so the peak use is max_i(sum_{j<=i} a_j + b_i * i) (1-based i).
How optimistic b_i is depends on the pool's load; the exact rule is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import math

# share of its remaining max_new_tokens a request is expected to still produce while the pool
# is lightly used (most requests stop at EOS well before max_new_tokens)
OPTIMISTIC_OUTPUT_SHARE = 0.5


def expected_remaining(remaining: int, used: int, capacity: int, busy_scale: float) -> int:
    """Remaining output to reserve: shrunk while used < busy_scale * capacity, in full when busy."""
    if used < busy_scale * capacity:
        return math.ceil(remaining * OPTIMISTIC_OUTPUT_SHARE)
    return remaining


def future_peak(held_and_remaining: list[tuple[int, int]]) -> int:
    """Peak KV use of requests given as (slots held or about to be, output tokens still to come)."""
    peak = 0
    held = 0
    for i, (a, b) in enumerate(sorted(held_and_remaining, key=lambda x: -x[1]), start=1):
        held += a
        peak = max(peak, held + b * i)
    return peak
