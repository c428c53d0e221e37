"""Pool pressure end to end: with a KV pool too small for every admitted request to finish
together, the scheduler retracts the newest requests (their KV kept in the radix cache) and
requeues them; every output still equals HF transformers' greedy output, and shared prefixes
are reported as cached tokens."""

from __future__ import annotations

import concurrent.futures as cf

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import ServerGroup, free_ports, is_idle, scrape, wait_for

pytestmark = pytest.mark.slow
NEW = 40


def hf_greedy(path, prompts: list[list[int]], n: int) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return [
        model.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(p):].tolist()
        for p in prompts
    ]


@pytest.mark.parametrize("radix", [True, False], ids=["radix", "no-radix"])
def test_retraction_under_pool_pressure_matches_hf(tiny_model, tmp_path, radix):
    shared = list(range(1000, 1008))
    prompts = [shared + [2000 + 19 * i + j for j in range(19)] for i in range(6)]
    want = hf_greedy(tiny_model, prompts, NEW)
    # 6 requests x (27 prompt + 40 new) need ~400 slots, 200 exist; busy_scale 1 admits on the
    # optimistic estimate (half the output), so decode runs out of slots and must retract
    (metrics_port,) = free_ports(1)
    group = ServerGroup(tiny_model, tmp_path / "logs", kv_slots=200, max_batch_size=6, busy_scale=1.0,
                        max_input_length=64, max_output_length=64, use_radix_cache=radix, metrics_port=metrics_port)
    with group:
        client = group.client
        with cf.ThreadPoolExecutor(len(prompts)) as pool:
            replies = list(pool.map(
                lambda p: client.generate(p, max_new_tokens=NEW, temperature=0, ignore_eos=True, logprobs=True), prompts))
        got = [list(r.token_ids) for r in replies]
        stats = client.stats()
        assert stats.retractions > 0, "the pool was meant to force retractions"
        assert scrape(metrics_port)[("litelang_retractions_total", ())] == stats.retractions
        assert got == want
        for r in replies:  # logprobs ride along, one per token, each a log-probability
            assert len(r.logprobs) == len(r.token_ids) and all(lp <= 0.0 for lp in r.logprobs)
        if radix:
            assert sum(r.usage.cached_tokens for r in replies) >= len(shared), "the shared prefix was not reused"
        wait_for(lambda: is_idle(client.stats()), timeout=30, what="the server to go idle")
