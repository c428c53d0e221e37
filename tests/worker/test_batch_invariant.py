"""`deterministic: true` on CPU: a request's tokens and logprobs, bit for bit, do not depend on
what shares its steps: alone, beside requests that arrive later (their prefills in its decode
steps), with its own prompt prefilled in chunks. The oracle is the request run alone. GPU:
tests/worker/test_gpu_model.py::test_deterministic_mode_is_batch_invariant."""

from __future__ import annotations

import random

import pytest

from litelang.bench.driver import Scheduled, greedy, run_staggered
from litelang.configs.schema import LitelangConfig
from litelang.proto import worker_pb2
from litelang.worker.setup import build_runner


def prompts(lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(256) for _ in range(n)] for n in lengths]


SCHEDULES = {
    # the target (first) alone, then among companions of other lengths arriving later, so the
    # target decodes in steps with their prefills; the target's prompt in chunks of 7
    "alone": lambda target: [Scheduled(target)],
    "companions": lambda target: [Scheduled(target)] + [Scheduled(p, arrival=a, chunk=c) for p, a, c in
                                                         zip(prompts([40, 3, 25, 60], 1), [0, 2, 3, 5], [None, None, 9, 16])],
    "chunked": lambda target: [Scheduled(p, arrival=1) for p in prompts([30, 12], 2)] + [Scheduled(target, chunk=7)],
    # three copies of itself alongside (as the n completions of one request decode): the
    # sampler's and the logprobs' reductions see a batch of four rows instead of one
    "siblings": lambda target: [Scheduled(target)] + [Scheduled(list(target)) for _ in range(3)],
}


@pytest.mark.parametrize("sampling", [greedy(), worker_pb2.Sampling(temperature=0.8, top_p=0.9, top_k=40, seed=7),
                                      worker_pb2.Sampling(temperature=1.0, seed=12)],
                         ids=["greedy", "seeded", "seeded-unfiltered"])
def test_deterministic_mode_is_batch_invariant(tiny_qwen2, sampling):
    cfg = LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=4000, max_batch_size=8, deterministic=True)
    runner = build_runner(cfg, rank=0)
    assert runner.kernels.name == "torch-invariant"
    target = prompts([33], 0)[0]
    runs = {}
    for name, schedule in SCHEDULES.items():
        requests = schedule(target)
        rid = next(i for i, r in enumerate(requests) if r.prompt is target) + 1
        runs[name] = run_staggered(runner, requests, 12, sampling)[rid]
    assert runs["companions"] == runs["alone"]
    assert runs["chunked"] == runs["alone"]
    assert runs["siblings"] == runs["alone"]
    assert len({lp for _, lp in runs["alone"]}) > 1  # every step computed, not one value repeated


def test_deterministic_mode_recomputes_generated_tokens_exactly(tiny_qwen2):
    """A prompt that ends with a request's first 5 generated tokens (as after a retraction, or a
    prefix-cache miss on another request's output) continues with the same bits: a prompt
    token is computed exactly as the same token generated."""
    cfg = LitelangConfig(model=str(tiny_qwen2), device="cpu", kv_slots=4000, max_batch_size=8, deterministic=True)
    runner = build_runner(cfg, rank=0)
    target = prompts([33], 0)[0]
    first = run_staggered(runner, [Scheduled(target)], 12)[1]
    again = run_staggered(runner, [Scheduled(target + [t for t, _ in first[:5]], chunk=10)], 7)[1]
    assert again == first[5:]


def test_deterministic_needs_one_rank():
    with pytest.raises(ValueError, match="deterministic needs tp 1"):
        LitelangConfig(tp=2, deterministic=True)
