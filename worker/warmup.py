"""Start-up warm-up: eager steps over the shapes serving meets, before the first request.

Triton compiles a kernel the first time it is launched with a new specialization: the block
sizes of a token-count bucket, and integer arguments that equal 1 or are multiples of 16. On a
machine whose Triton cache is empty each compile takes a second or more, inside the step of
whichever request first needs it (the first serving run on a fresh machine measured 2.5 to 4
times slower per step). The decode CUDA graphs are captured at start-up already; these steps
cover the eager ones, as vLLM's and SGLang's start-up runs do: prefills and mixed prefill +
decode steps of 1 to several hundred tokens, from one request or many, in every sampling mode.

The steps go through ModelRunner.step like a scheduler's, on KV slots from 0 up (nothing is
cached yet), and the runner is reset afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from litelang.proto import worker_pb2

log = logging.getLogger(__name__)

# Token counts for one request's prefill: each of the Triton projections' row buckets, on and
# off a multiple of 16, and past M_MAX (cuBLAS, the separate RoPE store, SiLU).
PREFILL_TOKENS = (1, 2, 3, 5, 9, 16, 17, 32, 33, 48, 49, 64, 65, 96, 97, 520)
# Requests per step (the lm_head's and the sampler's rows; the decode attention's batch in a
# mixed step)
BATCHES = (2, 3, 5, 9, 16, 17, 33, 48, 64, 65, 129)
# Sampling modes (worker/sampler.py): plain sampling, top-k/p/min-p filtering, penalties
MODES = (
    dict(temperature=1.0, seed=1),
    dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, seed=2),
    dict(temperature=0.7, repetition_penalty=1.1, frequency_penalty=0.2, presence_penalty=0.2, seed=3),
)


class _Steps:
    """Builds the warm-up's StepRequests: fresh rids, slots handed out from 0."""

    def __init__(self, runner):
        self.vocab = runner.model.spec.vocab_size
        self.step_id = 0
        self.next_rid = 1
        self.next_slot = 0
        self.slot_limit = runner.pool.num_slots

    def slots(self, n: int) -> list[int]:
        out = [(self.next_slot + i) % self.slot_limit for i in range(n)]
        self.next_slot = (self.next_slot + n) % self.slot_limit
        return out

    def extend(self, n: int, sampling: dict | None = None) -> worker_pb2.Extend:
        rid, self.next_rid = self.next_rid, self.next_rid + 1
        ids = [(rid * 7919 + i * 104729) % self.vocab for i in range(n)]
        ext = worker_pb2.Extend(rid=rid, token_ids=ids, slots=self.slots(n), sample=True, is_new=True,
                                sampling=worker_pb2.Sampling(**(sampling or {})))
        if sampling and "repetition_penalty" in sampling:
            ext.prompt_ids.extend(ids)
        return ext

    def request(self, extends=(), decodes=(), release=()) -> worker_pb2.StepRequest:
        self.step_id += 1
        return worker_pb2.StepRequest(step_id=self.step_id, extends=list(extends), decode_rids=list(decodes),
                                      decode_slots=self.slots(len(decodes)), release=list(release))


def warmup_steps(runner) -> Iterator[worker_pb2.StepRequest]:
    """The warm-up's steps, within the runner's limits (rows, context, pool)."""
    s = _Steps(runner)
    max_tokens = min(runner.max_context - 1, runner.pool.num_slots // 2)
    for n in PREFILL_TOKENS:
        if n <= max_tokens:
            ext = s.extend(n)
            yield s.request([ext])
            yield s.request(decodes=[ext.rid])  # a decode step of batch 1, eager or graphed
            if n == 65 and n + 17 <= runner.max_context:  # a prompt-cache hit: new tokens over a cached prefix
                hit = s.extend(17)
                hit.prefix_slots.extend(ext.slots)
                hit.prefix_len = n
                yield s.request([hit])
                yield s.request(release=[hit.rid])
            yield s.request(release=[ext.rid])
    for sampling in (None, *MODES):
        wanted = BATCHES if sampling is None else (1, 3, 17)
        for batch in sorted({min(b, runner.max_batch_size - 1) for b in wanted}):
            if batch < 1 or 2 * batch + 1 > runner.pool.num_slots // 2:
                continue
            exts = [s.extend(1 + i % 2, sampling) for i in range(batch)]
            yield s.request(exts)
            rids = [e.rid for e in exts]
            newcomer = s.extend(3, sampling)
            yield s.request([newcomer], decodes=rids)  # a mixed step: eager decode attention
            yield s.request(release=rids + [newcomer.rid])


def warm_up(runner) -> int:
    """Run the warm-up steps (CUDA only: the torch kernels have nothing to compile); returns
    how many ran."""
    if runner.device.type != "cuda":
        return 0
    t0 = time.perf_counter()
    count = 0
    for req in warmup_steps(runner):
        runner.step(req)
        count += 1
    runner.reset()
    log.info("warm-up: %d steps in %.1fs", count, time.perf_counter() - t0)
    return count
