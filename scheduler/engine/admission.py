"""Will admitting one more request overcommit the KV pool before the batch finishes?

Each request i holds a_i slots now and may still need b_i (its remaining output). If the
requests are sorted by b descending, at the moment the i-th of them finishes every request
with a longer tail still runs, so the peak use is max_i(sum_{j<=i} a_j + b_i * i) (1-based i).
How optimistic b_i is depends on the pool's load; the exact rule is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import math
from typing import Callable

# share of its remaining max_new_tokens a request is expected to still produce while the pool
# is lightly used (most requests stop at EOS well before max_new_tokens)
OPTIMISTIC_OUTPUT_SHARE = 0.5


def expected_remaining(remaining: int, used: int, capacity: int, busy_scale: float) -> int:
    """Remaining output to reserve: shrunk while used < busy_scale * capacity, in full when busy."""
    return _expected(remaining, busy=used >= busy_scale * capacity)


def _expected(remaining: int, busy: bool) -> int:
    return remaining if busy else math.ceil(remaining * OPTIMISTIC_OUTPUT_SHARE)


def future_peak(held_and_remaining: list[tuple[int, int]]) -> int:
    """Peak KV use of requests given as (slots held or about to be, output tokens still to come)."""
    peak = 0
    held = 0
    for i, (a, b) in enumerate(sorted(held_and_remaining, key=lambda x: -x[1]), start=1):
        held += a
        peak = max(peak, held + b * i)
    return peak


class PeakCheck:
    """future_peak of the running requests plus one candidate, for one scheduling pass. The
    running requests' estimates are made once per load level (busy or not), not once per
    candidate: a burst of 128 arrivals against 128 running requests would otherwise cost
    milliseconds of Python while the GPU waits for the step."""

    def __init__(self, capacity: int, busy_scale: float, held_and_remaining: Callable[[], list[tuple[int, int]]]):
        """held_and_remaining: the running requests' entries, asked for at the first check (a
        step with nobody waiting never builds them)."""
        self.capacity, self.busy_scale = capacity, busy_scale
        self._running = held_and_remaining
        self._requests: list[tuple[int, int]] | None = None
        self._estimated: dict[bool, list[tuple[int, int]]] = {}

    def fits(self, held: int, remaining: int, used: int) -> bool:
        """Whether admitting a request holding `held` slots with `remaining` output to come
        keeps the peak within capacity, with `used` slots in use now."""
        busy = used >= self.busy_scale * self.capacity
        if self._requests is None:
            self._requests = list(self._running())
        if busy not in self._estimated:
            self._estimated[busy] = [(a, _expected(b, busy)) for a, b in self._requests]
        return future_peak(self._estimated[busy] + [(held, _expected(remaining, busy))]) <= self.capacity

    def add(self, held: int, remaining: int) -> None:
        """An admitted candidate joins the running requests (after a fits check)."""
        assert self._requests is not None, "add after fits"
        self._requests.append((held, remaining))
        for busy, estimated in self._estimated.items():
            estimated.append((held, _expected(remaining, busy)))
