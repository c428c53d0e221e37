"""Prometheus metrics, served by the engine process on `metrics_port`: after real requests the
counters agree with what the responses themselves report (usage) and with GetStats."""

from __future__ import annotations

import pytest

from helpers import free_ports, scrape, server_group, wait_for, wait_idle

pytestmark = pytest.mark.slow


def test_metrics_count_what_the_responses_report(default_model_dir, tmp_path):
    (metrics_port,) = free_ports(1)
    with server_group(default_model_dir, tmp_path / "logs", metrics_port=metrics_port, max_batch_size=4) as g:
        replies = [
            g.client.generate("def fibonacci(n):", max_new_tokens=5, temperature=0, ignore_eos=True),
            g.client.generate("import numpy as np\n", max_new_tokens=3, temperature=0, ignore_eos=True),
            g.client.generate("def fibonacci(n):", max_new_tokens=4, temperature=0, ignore_eos=True),  # prefix hit
        ]
        stats = wait_idle(g.client)
        def settled():  # the gauges follow the engine loop, a moment after GetStats says idle
            s = scrape(metrics_port)
            done = s.get(("litelang_requests_total", (("reason", "length"),))) == 3
            return done and s.get(("litelang_running_requests", ())) == 0 and s

        m = wait_for(settled, 10, "the finished requests and an idle engine to show in /metrics")
    prompt = sum(r.usage.prompt_tokens for r in replies)
    completion = sum(r.usage.completion_tokens for r in replies)
    cached = sum(r.usage.cached_tokens for r in replies)
    assert completion == 12 and cached > 0
    assert m[("litelang_prompt_tokens_total", ())] == prompt == stats.prompt_tokens
    assert m[("litelang_cached_prompt_tokens_total", ())] == cached == stats.cached_prompt_tokens
    assert m[("litelang_generated_tokens_total", ())] == completion == stats.generated_tokens
    assert m[("litelang_time_to_first_token_seconds_count", ())] == 3
    assert m[("litelang_queue_seconds_count", ())] == 3
    # latencies: the sums of what each reply's own timings say (milliseconds there, seconds here)
    assert m[("litelang_e2e_request_latency_seconds_count", ())] == 3
    assert m[("litelang_e2e_request_latency_seconds_sum", ())] == pytest.approx(
        sum(r.timings.total_ms for r in replies) / 1000, rel=1e-6)
    assert m[("litelang_time_to_first_token_seconds_sum", ())] == pytest.approx(
        sum(r.timings.ttft_ms for r in replies) / 1000, rel=1e-6)
    assert m[("litelang_request_time_per_output_token_seconds_count", ())] == 3
    tpot = sum((r.timings.total_ms - r.timings.ttft_ms) / (r.usage.completion_tokens - 1) for r in replies) / 1000
    assert m[("litelang_request_time_per_output_token_seconds_sum", ())] == pytest.approx(tpot, rel=1e-6)
    assert 0 < tpot < m[("litelang_e2e_request_latency_seconds_sum", ())]
    assert m[("litelang_retractions_total", ())] == stats.retractions == 0
    assert m[("litelang_waiting_requests", ())] == 0
    kv = {state: m[("litelang_kv_slots", (("state", state),))] for state in ("free", "cached", "in_use")}
    assert kv["in_use"] == 0 and kv["free"] + kv["cached"] == stats.kv_capacity
